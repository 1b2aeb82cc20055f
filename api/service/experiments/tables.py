"""An experiment's results as a table in the reference's columns (the LSQ paper's results
tables), and that table as Markdown or CSV."""

from __future__ import annotations

import csv
import io

from api.service.experiments.results import Row, Stat
from lsq.metrics import fixed

COLUMNS = ["ID", "quan_lr", "constr_w", "constr_a", "lr_base", "epoch", "test_acc", "drop_acc",
           "acc_top5", "drop_top5"]  # fmt: skip


def _fmt(stat: Stat | None) -> str:
    if stat is None:
        return ""
    return fixed(stat.mean) + (f" ± {fixed(stat.std)}" if stat.std is not None else "")


def _signed(value: float) -> str:
    shown = fixed(value)
    return shown if shown.startswith("-") else f"+{shown}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


PROBE_COLUMNS = ["ID", "layer", "constr_w", "constr_a", "epoch", "test_acc", "drop_acc",
                 "acc_top5", "drop_top5"]  # fmt: skip


def table(table_rows: list[Row]) -> list[list[str]]:
    """The reference's columns, and ref_acc / delta when any row has a reference, and settings
    when a row has some the columns do not show; a sensitivity experiment's name the layer
    instead of quan_lr and lr_base."""
    if any(r.settings.get("mode") for r in table_rows):
        return [PROBE_COLUMNS] + [
            [r.id, r.label, r.constr_w, r.constr_a, _num(r.epochs), _fmt(r.test_top1),
             _fmt(r.drop_top1), _fmt(r.test_top5), _fmt(r.drop_top5)]
            for r in table_rows
        ]  # fmt: skip
    refs = any(r.reference for r in table_rows)
    settings = any(r.other_settings for r in table_rows)
    head = COLUMNS + (["ref_acc", "delta"] if refs else []) + (["settings"] if settings else [])
    body = []
    for r in table_rows:
        line = [r.id, r.quan_lr, r.constr_w, r.constr_a, _num(r.lr_base), _num(r.epochs)]
        line += [_fmt(r.test_top1), _fmt(r.drop_top1), _fmt(r.test_top5), _fmt(r.drop_top5)]
        if refs:
            line += [
                fixed(r.reference.test_top1) if r.reference else "",
                _signed(r.delta_vs_reference) if r.delta_vs_reference is not None else "",
            ]
        if settings:
            line.append(r.other_settings)
        body.append(line)
    return [head, *body]


def markdown(table_rows: list[Row]) -> str:
    head, *body = table(table_rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    body = [[cell.replace("|", "\\|") for cell in line] for line in body]  # a | in a value
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in body]) + "\n"


def csv_text(table_rows: list[Row]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table(table_rows))
    return out.getvalue()
