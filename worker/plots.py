"""Plots the workers draw as jobs progress, so the API only serves files: an experiment's
curves (every row's test top-1 per epoch), or a sensitivity experiment's drop per layer, in
artifacts/experiments/<id>/plot.png and .svg."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from api.service.artifacts import experiment_folder, remove_folder
from api.service.config import get_settings
from api.service.db import session_scope
from api.service.errors import ExperimentNotFound
from api.service.experiments.request import ExperimentSpec
from api.service.experiments.results import Row, rows
from api.service.store import epochs as epoch_store
from api.service.store import experiments as experiment_store
from lsq.files import PLOT, PLOT_SVG

log = logging.getLogger(__name__)
EVERY_SECONDS = 10.0  # redraw an experiment's plot at most this often, but always at a job's end
_drawn: dict[int, float] = {}


def experiment_plot(experiment_id: int, *, final: bool = False) -> None:
    """Redraw the experiment's plot; a failure is logged, never the job's."""
    now = time.monotonic()
    if not final and now - _drawn.get(experiment_id, -EVERY_SECONDS) < EVERY_SECONDS:
        return
    _drawn[experiment_id] = now
    try:
        folder = _draw(experiment_id)
    except ExperimentNotFound:
        return  # deleted: nothing to draw
    except Exception:
        log.exception("experiment %s: its plot could not be drawn", experiment_id)
        return
    _unless_deleted_meanwhile(experiment_id, folder)


def _unless_deleted_meanwhile(experiment_id: int, folder: Path) -> None:
    """An experiment deleted while its plot was drawn loses the plot too: the deletion removed
    its folder before the drawing wrote it again."""
    with session_scope(read_only=True) as session:
        try:
            experiment_store.get_experiment(session, experiment_id, owner=None)
        except ExperimentNotFound:
            remove_folder(folder)


def _draw(experiment_id: int) -> Path:
    """Draw the plot; the folder it is in."""
    from lsq.plot import Curve, experiment_curves  # matplotlib loads in workers only

    with session_scope(read_only=True) as session:
        experiment = experiment_store.get_experiment(session, experiment_id, owner=None)
        request = experiment_store.stored_experiment_spec(experiment)
        spec = ExperimentSpec.model_validate(request)
        table = rows(spec, experiment.jobs)
        epochs = epoch_store.epochs_of(session, [j.id for j in experiment.jobs])
        base = request["base"]
        title = f"{experiment.name}: {base['model']['arch']} on {base['dataset']['name']}"
        folder = experiment_folder(get_settings(), experiment.folder)
    if spec.kind == "sensitivity":
        _bars(spec, table, [folder / PLOT, folder / PLOT_SVG], title)
        return folder
    # variants continue from a baseline trained here: draw them after its epochs
    start = next((r.epochs or 0 for r in table if r.baseline and r.jobs), 0)
    curves = [
        Curve(
            f"{r.id}: " + ", ".join(filter(None, [r.label, r.other_settings])),  # as the table
            [epochs.get(j, []) for j in r.jobs],
            r.baseline,
            0 if r.baseline else start,
        )
        for r in table
    ]
    experiment_curves(curves, [folder / PLOT, folder / PLOT_SVG], title)
    return folder


def _bars(spec: ExperimentSpec, table: list[Row], paths: list[Path], title: str) -> None:
    """A sensitivity experiment's plot: the drop per probed layer (mean over seeds, spread)."""
    from lsq.plot import Bar, sensitivity_bars

    bars = [
        Bar(r.label, r.drop_top1.mean, r.drop_top1.std) for r in table if r.layer and r.drop_top1
    ]
    whole = next((r.drop_top1.mean for r in table if r.id == "all" and r.drop_top1), None)
    mode = spec.sensitivity.mode if spec.sensitivity else "quantize_one"
    sensitivity_bars(bars, mode, paths, title, whole)
