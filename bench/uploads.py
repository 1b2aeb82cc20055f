"""A user's own model through the service, measured: torchvision's resnet18 trained in full
precision on Fashion-MNIST's 10k/2k quick subset written as PNG class folders (3 epochs, as
bench/zoo.py's float runs), exported to ONNX as a user would (torch.onnx.export, its default
opset), sent to a running service with `POST /v1/models`, and quantized there to
W[-1,0,1]/A[0,1,2,3] (first and last layers float, 2 LSQ epochs at lr 0.01) with
`model: {upload: ID}`; and the same network's weights sent as safetensors and quantized as
`model: {arch: resnet18, init: {upload: ID}}`. Each job evaluates the sent model first, so its
result has the drop against the model's own full-precision accuracy.

    .venv/bin/python bench/uploads.py [--out runs/uploads]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from image_folder import write_pngs
from safetensors.torch import save_file  # bench/, the script's folder, comes first on sys.path
from zoo import FP, LSQ, VARIANTS, job, top1

BENCH = Path(__file__).resolve().parent
# then the project's packages: bench/api.py would shadow the service's `api`
sys.path[:] = [str(BENCH.parent), *(p for p in sys.path if Path(p).resolve() != BENCH)]

from lsq import checkpoint  # noqa: E402
from lsq.networks import build_model  # noqa: E402

LEVELS = "W[-1,0,1]/A[0,1,2,3]"


def export(model_pt: Path, path: Path) -> Path:
    """The float run's network as ONNX, the way its user would write it."""
    model = build_model("resnet18", 10, 1, False, 28)
    model.load_state_dict(checkpoint.load(model_pt))
    # TorchScript's exporter, batch norm kept (no constant folding): the network trains as it
    # was built. The default folds batch norm into the convolutions (docs/jobs/your-model.md).
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                      do_constant_folding=False,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}})  # fmt: skip
    return path


def serve(out: Path, data_root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LSQ_DATA_DIR": str(out.resolve()), "LSQ_DATA_ROOTS": str(data_root)}
    env["LSQ_URL"] = f"http://127.0.0.1:{port}"
    os.environ.update(env)  # the client below reads the same settings
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "serve.log").open("ab")
    command = [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def weights_file(model_pt: Path, path: Path) -> Path:
    """The float run's state dict as safetensors, as docs/jobs/your-model.md converts one."""
    state = checkpoint.load(model_pt)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def quantize_uploads(files: dict[str, tuple[Path, dict]], data: dict, out: Path) -> dict:
    """Start a service, send each file, run the quantized job on each: label -> the job."""
    from api.service.client import Client
    from api.service.config import get_settings

    server = serve(out, Path(data["root"]).parent, 8765)
    jobs = {}
    try:
        Client.from_settings(get_settings()).wait_ready()
        client = Client.from_settings(get_settings())  # with the token serve saved
        for label, (path, fields) in files.items():
            with path.open("rb") as f:
                upload = client.upload(f, path.name, fields)
            ref = {"upload": upload["id"]}
            model = {"arch": upload["arch"], "init": ref} if upload["arch"] else ref
            spec = {"name": f"{upload['kind']}-w3a2", "dataset": data, "model": model,
                    "quantization": VARIANTS[LEVELS], "training": LSQ}  # fmt: skip
            started = time.monotonic()
            jobs[label] = client.follow(client.submit(spec)["id"], bar=False)
            print(f"{label}: {jobs[label]['status']} in {time.monotonic() - started:.0f} s")
        return jobs
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/uploads"))
    args = parser.parse_args()
    root = (args.out / "fashion-mnist-png").resolve()
    write_pngs(root)
    data = {"name": "image_folder", "root": str(root), "image_size": 28, "channels": 1}
    fp = top1(job("resnet18-fp", "resnet18", FP, data=data), args.out / "fp")
    model_pt = args.out / "fp" / "model.pt"
    shape = {"arch": "resnet18", "dataset": "fashion-mnist"}  # 1 x 28 x 28, 10 classes
    files = {
        "its ONNX export, sent": (export(model_pt, args.out / "resnet18.onnx"), {}),
        "its weights (safetensors), sent": (weights_file(model_pt, args.out / "w.safetensors"),
                                            shape),
    }  # fmt: skip
    jobs = quantize_uploads(files, data, args.out / "service")
    print("| model | levels | test top-1 (%) | drop (points) |\n|---|---|---:|---:|")
    print(f"| resnet18, trained in torch | float | {fp:.2f} | |")
    for label, done in jobs.items():
        r = done["result"]
        print(f"| resnet18, {label} | float, as sent | {r['init_top1']:.2f} | |")
        drop = r["init_top1"] - r["final_top1"]
        print(f"| resnet18, {label} | {LEVELS} | {r['final_top1']:.2f} | {drop:.2f} |")


if __name__ == "__main__":
    main()
