"""Model throughput on each execution provider this host has, through radlint's own inference path.

    python -m bench.gpu [--registry models/registry.yaml] [--batches 64,256] [--images 2048]
                        [--checkpoint models/_work/TAG/model.pt] [--out FILE.md]

For every device of ``tasks.infer`` this host can run (``cpu`` always, ``cuda`` when ONNX Runtime
has its CUDA provider) it times ``tasks.infer.predict`` (I/O binding on CUDA) over the same
images at each batch size and prints images/s, the CPU provider being the baseline in the same
run. Inputs are a fixed-seed random field (throughput does not depend on the pixel values).

``--checkpoint`` (repeatable) adds the PyTorch twin of a trained model (models/net.py, eager,
float32, at the checkpoint's own input size) on the GPU: not the product path, a reference for
what the card does with such a network where ONNX Runtime has no CUDA provider.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from radlint.tasks import infer


def _time(fn, images: int, repeats: int = 3) -> float:
    fn()  # warm-up: session creation, kernel selection, first allocation
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return images / best


def onnx_rows(entry, x: np.ndarray, batches: list[int], threads: int) -> list[dict]:
    import onnxruntime as ort

    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])
    rows = []
    for device in devices:
        for b in batches:
            rate = _time(lambda: infer.predict(entry, x, device=device, batch_size=b,
                                               threads=threads), len(x))
            rows.append({"path": f"onnxruntime {device}", "batch": b, "images_per_s": rate})
    return rows


def torch_rows(checkpoint: Path, n_images: int, batches: list[int]) -> list[dict]:
    import torch

    from radlint.models.net import SoftmaxExport, build, n_params

    if not torch.cuda.is_available():
        return []
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    net = build(ck["arch"])
    net.load_state_dict(ck["state_dict"])
    model = SoftmaxExport(net).eval().cuda().to(memory_format=torch.channels_last)
    size = int(ck["size"])
    x = np.random.default_rng(0).uniform(-1, 1, (n_images, 1, size, size)).astype(np.float32)
    rows = []
    for b in batches:
        def run():
            with torch.no_grad():
                for s in range(0, len(x), b):
                    chunk = torch.from_numpy(x[s : s + b]).cuda(non_blocking=True)
                    outs = model(chunk.contiguous(memory_format=torch.channels_last))
                    [o.cpu() for o in outs]
            torch.cuda.synchronize()
        rows.append({"path": f"pytorch cuda (eager, float32), {checkpoint.parent.name or checkpoint.stem}"
                             f" {n_params(net) / 1e6:.2f}M params, {size} px", "batch": b,
                     "images_per_s": _time(run, len(x))})
    return rows


def hardware() -> dict:
    import onnxruntime as ort

    hw = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
          "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    try:
        import torch

        if torch.cuda.is_available():
            hw["gpu"] = torch.cuda.get_device_name(0)
            hw["torch"] = torch.__version__
    except ImportError:
        pass
    return hw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--registry", type=Path, default=infer.REGISTRY_PATH)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, action="append", default=[])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    entry = infer.default_model(args.registry)
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.images, 1, entry.input_size, entry.input_size)).astype(np.float32)
    rows = onnx_rows(entry, x, batches, args.threads)
    for ck in args.checkpoint:
        rows += torch_rows(ck, args.images, batches)
    hw = hardware()
    base = {r["batch"]: r["images_per_s"] for r in rows if r["path"] == "onnxruntime cpu"}
    lines = [f"onnx model {entry.name} ({entry.input_size} px), {args.images} images per timing",
             "hardware " + json.dumps(hw), "",
             "| path | batch | images/s | vs onnxruntime cpu |", "|---|---|---|---|"]
    for r in rows:
        ratio = (f"{r['images_per_s'] / base[r['batch']]:.1f}x" if r["path"].startswith("onnx")
                 else "other model")
        lines.append(f"| {r['path']} | {r['batch']} | {r['images_per_s']:.0f} | {ratio} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
