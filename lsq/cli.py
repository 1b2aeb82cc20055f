"""`lsq run SPEC [--out DIR]` and `lsq run --resume DIR`: run one job spec on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import layer_table
from .spec import JobSpec, SpecError

SPEC_COPY = "spec.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` command to a parent parser (the service's CLI adds its own commands)."""
    p = subparsers.add_parser("run", help="run a job spec locally (YAML or JSON)")
    p.add_argument("spec", nargs="?", type=Path, help="the job spec file")
    p.add_argument("--out", type=Path, help="output folder (default runs/<spec name>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run in DIR")
    p.set_defaults(func=run_command)

    p = subparsers.add_parser(
        "export", help="check a quantized run's integer export; --onnx writes model.onnx"
    )
    p.add_argument("dir", type=Path, help="the run folder (holds model-int.pt and model.pt)")
    p.add_argument("--onnx", action="store_true", help="write DIR/model.onnx")
    p.set_defaults(func=export_command)
    layer_table.register(subparsers)


def export_command(args: argparse.Namespace) -> int:
    """Print the integer export's size and compliance; with --onnx, write model.onnx."""
    from . import export, outputs
    from .files import MODEL, MODEL_INT, MODEL_ONNX

    try:
        size = export.check(export.read_integer(args.dir / MODEL_INT))
        if args.onnx:  # the network as trained: every quantizer, from model.pt
            model, info = export.load_trained(args.dir / MODEL_INT, args.dir / MODEL)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as e:
        sys.exit(f"lsq export: {args.dir} holds no readable quantized run: {e}")
    print(
        f"{args.dir / MODEL_INT}: {size.model_bits} bits ({size.model_bits / 8e6:.3g} MB), "
        f"{size.compression:.1f}x smaller than float32; "
        + ("every code in its level set" if not size.violations else "; ".join(size.violations))
    )
    if args.onnx:
        outputs.save_onnx(args.dir, model, info)
        if not (args.dir / MODEL_ONNX).is_file():
            sys.exit("lsq export: model.onnx could not be written (see the log above)")
        print(f"wrote {args.dir / MODEL_ONNX}")
    return 1 if size.violations else 0


def run_command(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except SpecError as e:  # the user's input: field by field, exit status 2 like `lsq submit`
        print(f"lsq run: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"lsq run: {e}")  # a readable reason, not a traceback
    except KeyboardInterrupt:
        sys.exit("lsq run: interrupted; continue with lsq run --resume DIR")


def _resumed_spec(out: Path) -> JobSpec:
    """The run's spec.yaml as the version it was written at meant it (the checkpoint's), then
    written back whole at this version."""
    from .outputs import saved_spec_version  # loads torch: the checkpoint is a torch file

    spec = JobSpec.from_file(out / SPEC_COPY, version=saved_spec_version(out))
    (out / SPEC_COPY).write_text(spec.to_yaml())
    return spec


def _run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.spec or args.out:
            sys.exit("lsq run: --resume DIR takes no SPEC or --out (the run folder holds both)")
        out, spec = args.resume, _resumed_spec(args.resume)
    elif args.spec:
        spec = JobSpec.from_file(args.spec)
        out = args.out or Path("runs") / spec.name
        out.mkdir(parents=True, exist_ok=True)
        (out / SPEC_COPY).write_text(spec.to_yaml())
    else:
        sys.exit("lsq run: give a SPEC file or --resume DIR")

    from .metrics import classes_line, sensitivity_table, summary_line, table_header, table_row
    from .train import run  # torch loads here, after the spec is known to be good

    print(f"{spec.name}: {spec.model.arch} on {spec.dataset.name}, writing to {out}")
    if spec.sensitivity is None:
        print(table_header())
    on_epoch = lambda m: print(table_row(m), flush=True)  # noqa: E731
    result = run(spec, out, on_epoch=on_epoch, resume=bool(args.resume), progress_bar=True)
    if result.sensitivity is not None:
        print(sensitivity_table(result.sensitivity, spec.sensitivity.mode))
    print(summary_line(spec.describe(), result))
    if (classes := classes_line(result)) is not None:
        print(classes)
    print(f"files in {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lsq", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
