"""Write the model card (markdown + PNG plots) from measurements on the held-out TEST split.

    python -m radlint.models.card --name radlint-multihead-v2

Every number comes from running the registered ONNX model (tasks.infer) over the test split
through radlint.tasks.evaluation, the code behind ``radlint evaluate``; leave-one-source-out figures
come from models/_work/loso_*/ (written by models/train.py --exclude-source ...).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

from radlint.models.train import (
    DEFAULT_DATA,
    SPLIT_FILE,
    default_review,
    load_split,
    read_labels,
)
from radlint.tasks.evaluation import (
    accuracy,
    auc_ovr,
    binary_auc,
    bootstrap_ci,
    evaluate,
    fmt_ci,
    read_csv,
    roc_curve,
)
from radlint.tasks.infer import load_registry
from radlint.tasks.vocabulary import BODY_PART, ORIENTATION, PROJECTION

ROOT = Path(__file__).resolve().parent.parent
NOTES_END = "<!-- models/card.py copies this file into the card up to this line; what follows stays in the notes. -->"

MODELS = ROOT / "models"
CARDS = MODELS / "cards"
WORK = MODELS / "_work"


def plot_rocs(result, preds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    rows = preds["rows"]
    up = preds["upright"]
    y_bp = np.array([BODY_PART.index(r["body_part"]) for r in rows])
    specs = [("body_part", BODY_PART, y_bp, up["body_part"])]
    m = preds["projection_mask"]
    y_pj = np.array([PROJECTION.index(r["view"]) for r, k in zip(rows, m) if k])
    specs.append(("projection (chest)", PROJECTION, y_pj, up["projection"][m]))
    specs.append(("orientation (4 rotations)", ORIENTATION, np.tile(np.arange(4), len(rows)),
                  preds["orientation"].reshape(-1, 4)))
    for ax, (title, classes, y, p) in zip(axes, specs):
        for c, name in enumerate(classes):
            if not (y == c).any():
                continue
            fpr, tpr = roc_curve(y == c, p[:, c])
            ax.plot(fpr, tpr, lw=1.2, label=f"{name} {auc_ovr(y == c, p[:, c]):.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(fontsize=7, loc="lower right")
        # most curves hug the corner: an inset-free zoom keeps them readable
        ax.set_xlim(-0.01, 1)
        ax.set_ylim(0, 1.01)
    fig.suptitle("One-vs-rest ROC on the held-out test split (AUC in legend)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def plot_confusions(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6),
                             gridspec_kw={"width_ratios": [1.6, 0.9, 1.0]})
    for ax, task in zip(axes, ("body_part", "projection", "orientation")):
        res = result["tasks"][task]
        cm = np.array(res["confusion"])
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        n = len(res["classes"])
        ax.set_xticks(range(n), res["classes"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), res["classes"], fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
        ax.set_title(task, fontsize=10)
    fig.suptitle("Confusion matrices, held-out test split (counts; colour = row share)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def task_table(res, unit="images") -> list[str]:
    lines = ["| class | n test | AUC one-vs-rest [95% CI] | accuracy (recall) [95% CI] |",
             "|---|---|---|---|"]
    for row in res["per_class"]:
        lines.append(f"| {row['class']} | {row['n']} | {fmt_ci(row['auc'])} | "
                     f"{fmt_ci(row['acc'])} |")
    lines.append(f"| **macro AUC / overall accuracy** | {res['n']} {unit} | "
                 f"**{fmt_ci(res['macro_auc'])}** | {fmt_ci(res['accuracy'])} |")
    return lines


def split_counts(rows, split) -> list[str]:
    c = collections.Counter((r["source"], split[r["patient_id"]]) for r in rows)
    pats = collections.defaultdict(set)
    for r in rows:
        pats[split[r["patient_id"]]].add(r["patient_id"])
    lines = ["| source | train | val | test |", "|---|---|---|---|"]
    for s in sorted({r["source"] for r in rows}):
        lines.append(f"| {s} | {c[(s, 'train')]} | {c[(s, 'val')]} | {c[(s, 'test')]} |")
    tot = collections.Counter(split[r["patient_id"]] for r in rows)
    lines.append(f"| **images** | {tot['train']} | {tot['val']} | {tot['test']} |")
    lines.append(f"| **patients** | {len(pats['train'])} | {len(pats['val'])} | "
                 f"{len(pats['test'])} |")
    lines += ["", "| body part | train | val | test |", "|---|---|---|---|"]
    cb = collections.Counter((r["body_part"], split[r["patient_id"]]) for r in rows)
    for b in BODY_PART:
        lines.append(f"| {b} | {cb[(b, 'train')]} | {cb[(b, 'val')]} | {cb[(b, 'test')]} |")
    lines += ["", "| chest view | train | val | test |", "|---|---|---|---|"]
    cv = collections.Counter((r["view"], split[r["patient_id"]]) for r in rows
                             if r["body_part"] == "chest" and r["view"])
    for v in PROJECTION:
        lines.append(f"| {v} | {cv[(v, 'train')]} | {cv[(v, 'val')]} | {cv[(v, 'test')]} |")
    return lines


def per_source_projection(preds, n_boot=1000) -> tuple[list[str], dict]:
    rows = preds["rows"]
    m = preds["projection_mask"]
    p = preds["upright"]["projection"][m]
    rs = [r for r, k in zip(rows, m) if k]
    y = np.array([PROJECTION.index(r["view"]) for r in rs])
    src = np.array([r["source"] for r in rs])
    out = {}
    lines = ["| test subset | n (PA/AP/LATERAL) | PA-vs-AP AUC [95% CI] | "
             "frontal-vs-lateral AUC [95% CI] | 3-class accuracy |", "|---|---|---|---|---|"]
    for s in ["all"] + sorted(set(src.tolist())):
        k = np.ones(len(rs), bool) if s == "all" else src == s
        yy, pp = y[k], p[k]
        f = yy != 2
        pa_ap = (binary_auc(yy[f] == 0, pp[f, 0] / np.clip(pp[f, 0] + pp[f, 1], 1e-12, None),
                            n_boot=n_boot) if len(set(yy[f].tolist())) == 2 else None)
        fl = binary_auc(yy != 2, 1 - pp[:, 2], n_boot=n_boot) if len(set((yy == 2).tolist())) == 2 \
            else None
        counts = "/".join(str(int((yy == c).sum())) for c in range(3))
        acc = accuracy(yy, pp.argmax(1))
        lines.append(f"| {s} | {counts} | {fmt_ci(pa_ap)} | {fmt_ci(fl)} | {acc:.3f} |")
        out[s] = {"pa_vs_ap": pa_ap, "frontal_vs_lateral": fl, "acc": acc}
    return lines, out


def orientation_by_body_part(preds) -> list[str]:
    rows = preds["rows"]
    p = preds["orientation"]  # [N, 4, 4]
    y = np.tile(np.arange(4), len(rows)).reshape(len(rows), 4)
    correct = p.argmax(2) == y
    lines = ["| body part | images | accuracy over 4 rotations | macro AUC |", "|---|---|---|---|"]
    bp = np.array([r["body_part"] for r in rows])
    for b in BODY_PART:
        k = bp == b
        if not k.any():
            continue
        pp = p[k].reshape(-1, 4)
        yy = y[k].ravel()
        auc = np.mean([auc_ovr(yy == c, pp[:, c]) for c in range(4)])
        lines.append(f"| {b} | {int(k.sum())} | {correct[k].mean():.3f} | {auc:.4f} |")
    return lines


def loso_section(n_boot=1000, rows=None, split=None) -> tuple[list[str], dict]:
    lines = []
    out = {}
    for d in sorted(WORK.glob("loso_*")):
        sf, pf = d / "summary.json", d / "test_preds.npz"
        if not (sf.exists() and pf.exists()):
            continue
        s = json.loads(sf.read_text())
        z = np.load(pf)
        y = z["projection"]
        p = z["p_projection"][:, 0]
        src = s["args"]["exclude_source"]
        f = y != 2
        pa_ap = binary_auc(y[f] == 0, p[f, 0] / np.clip(p[f, 0] + p[f, 1], 1e-12, None),
                           n_boot=n_boot) if len(set(y[f].tolist())) == 2 else None
        fl = binary_auc(y != 2, 1 - p[:, 2], n_boot=n_boot) if len(set((y == 2).tolist())) == 2 \
            else None
        acc = bootstrap_ci(accuracy, y, p.argmax(1), n_boot=n_boot)
        counts = "/".join(str(int((y == c).sum())) for c in range(3))
        trained = f"{s['n_train']} chest images"
        if rows is not None:
            tv = collections.Counter(r["view"] for r in rows if r["source"] != src
                                     and r["body_part"] == "chest"
                                     and split[r["patient_id"]] == "train")
            srcs = sorted({r["source"] for r in rows if r["source"] != src
                           and r["body_part"] == "chest" and r["view"]
                           and split[r["patient_id"]] == "train"})
            trained += (f" (view-labelled PA/AP/LATERAL {tv['PA']}/{tv['AP']}/{tv['LATERAL']}"
                        f" from {', '.join(srcs)})")
        out[src] = {"pa_vs_ap": pa_ap, "frontal_vs_lateral": fl, "acc": acc,
                    "n_train": s["n_train"], "epochs": s["args"]["epochs"],
                    "minutes": round(s["seconds"] / 60, 1), "counts": counts}
        a = s["args"]
        network = (f"widths {a.get('widths', '24,48,96,160')}, {a.get('size', 192)} px, "
                   f"{int(s['params']) / 1e6:.2f} M parameters" if s.get("params") else "")
        if (a.get("arch") or "").startswith("efficientnet_lite"):
            network = (f"EfficientNet-{a['arch'].rsplit('_', 1)[-1].title()} "
                       f"({'ImageNet' if a.get('pretrained') == 'True' else 'scratch'}), "
                       f"{a.get('size')} px, {int(s['params']) / 1e6:.2f} M parameters")
        out[src]["network"] = network
        lines.append(f"| {src} (all its labelled chest images) | {network} | {counts} | {fmt_ci(pa_ap)} | "
                     f"{fmt_ci(fl)} | {fmt_ci(acc)} | {trained}, "
                     f"{a['epochs']} epochs × {a.get('samples_per_epoch', '?')} samples, {s['seconds'] / 60:.0f} min |")
    if lines:
        lines = ["| held-out source | network | n (PA/AP/LATERAL) | PA-vs-AP AUC [95% CI] | "
                 "frontal-vs-lateral AUC [95% CI] | 3-class accuracy [95% CI] | trained on |",
                 "|---|---|---|---|---|---|---|"] + lines
    return lines, out


def _rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except (ValueError, TypeError):
        return str(path)


def _review_text(summary: dict, overrides) -> str:
    if not overrides:
        return "."
    listed = (f"`{_rel(overrides)}` lists {len(read_csv(overrides))} images a review found not stored "
              "upright in their source (see known weaknesses)")
    if summary["args"].get("overrides", "None") in ("None", ""):
        return (". This model was trained with every source image taken as upright; "
                + listed + ", and the evaluation below brings those upright first.")
    return ", after bringing the image upright: " + listed + "."


def _pack_text(summary: dict) -> str:
    pack = Path(summary["args"].get("data", "")) / "pack.json"
    if not pack.is_absolute():
        pack = ROOT / pack
    if not pack.exists():
        return ""
    meta = json.loads(pack.read_text())
    return (f" Trained from a compact copy of the train and validation images (`{meta['command']}`: "
            f"longest side ≤ {meta['max_side']} px, JPEG quality {meta['quality']}) so that it "
            "could travel to a GPU host; test images never left the development machine and are "
            "evaluated from the originals.")


def _hardware_text(summary: dict) -> str:
    if summary["args"].get("device", "cpu") == "cuda":
        return (f"on one {summary.get('device_name', 'CUDA GPU')} (data augmentation on "
                f"{summary['args'].get('workers', '?')} CPU worker processes)")
    return f"on {summary['args'].get('threads', '?')} CPU threads (no GPU)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", default="radlint-multihead-v2")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split-file", type=Path, default=SPLIT_FILE)
    ap.add_argument("--run", type=Path, default=WORK / "main")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--notes", type=Path, default=None,
                    help="hand-written sections (known weaknesses etc.) appended verbatim up to the "
                         "NOTES_END marker line (default: cards/<name>-notes.md)")
    ap.add_argument("--overrides", type=Path, default=default_review(),
                    help="label review keyed by file (default models/splits/orientation_review.csv)")
    args = ap.parse_args(argv)
    if args.notes is None:
        args.notes = CARDS / f"{args.name}-notes.md"

    CARDS.mkdir(parents=True, exist_ok=True)
    reg_path = MODELS / "registry.yaml"
    entry = {e.name: e for e in load_registry(reg_path)}[args.name]
    import yaml

    raw = {m["name"]: m for m in yaml.safe_load(reg_path.read_text())["models"]}[args.name]
    rows = read_labels(args.data, args.overrides)
    split = load_split(args.split_file)
    result, preds = evaluate(args.data / "labels.csv", args.data, registry=reg_path,
                             split_file=args.split_file, split="test", n_boot=args.bootstrap,
                             threads=2, return_predictions=True, overrides=args.overrides)
    raw_result = None
    if args.overrides and result["not_upright_as_stored"]:
        raw_result = evaluate(args.data / "labels.csv", args.data, registry=reg_path,
                              split_file=args.split_file, split="test", n_boot=args.bootstrap,
                              threads=2)
    plot_rocs(result, preds, CARDS / f"{args.name}-roc.png")
    plot_confusions(result, CARDS / f"{args.name}-confusion.png")
    src_lines, src_res = per_source_projection(preds, args.bootstrap)
    loso_lines, loso_res = loso_section(args.bootstrap, rows, split)
    summary = json.loads((args.run / "summary.json").read_text())
    export = json.loads((args.run / "export.json").read_text())
    t = result["tasks"]
    pj = t["projection"]

    md = [f"# Model card: {args.name}", "",
          "**Not for clinical use.** A data-quality tool: it flags radiographs whose header "
          "(body part, chest projection, orientation) disagrees with the pixels, for a person "
          "to review.", "",
          "## Model", "",
          f"- File `models/{entry.path.name}` (sha256 `{entry.sha256}`), "
          f"{export['onnx_bytes'] / 1e6:.1f} MB, ONNX opset 17, dynamic batch axis.",
          f"- Input `image` float32 [N, 1, {entry.input_size}, {entry.input_size}]: one channel, "
          "8-bit min-max, letterboxed (aspect kept, black padding), mean 0.5 / std 0.5 "
          "(`tasks/preprocess.py`, the same code in training and in the audit).",
          "- Outputs (softmax, class order of `tasks/vocabulary.py`): `body_part` [N, 9], "
          "`projection` [N, 3] (meaningful for chest images only), `orientation` [N, 4]"
          + (f"; `{entry.embedding.output}` [N, {entry.embedding.size}], the pooled features the "
             "heads read, for the audit's lake-adaptation probes." if entry.embedding else "."),
          f"- Architecture: {raw['training']['architecture']}; {summary['params']:,} parameters, "
          f"trained from scratch (no pretrained weights). CPU throughput "
          f"{export['throughput_img_s']:.0f} img/s (ONNX Runtime, batch 64, 2 threads, the "
          "2-core development machine while other jobs ran).",
          f"- ONNX vs PyTorch parity: max abs difference {export['parity_max_abs_diff']:.1e} "
          f"over {export['parity_inputs']} real test inputs (64 test images × 4 rotations).",
          "- Per-class thresholds (registry): lowest t ≥ 0.5 reaching precision ≥ 0.95 among "
          "validation images predicted as the class (0.99 where never reached); chosen on "
          "validation, never on test.", "",
          "## Training", "",
          "- Data: `shared/data/radiographs` (4,356 8-bit JPEGs, 9 public sources, "
          "see its README). Labels: `body_part`; `view` for chest projection (only chest images "
          "with a view label train the projection head, the loss is masked elsewhere); "
          "orientation labels are made by rotating each image by a uniformly drawn rotation "
          "(`rotate_to_orientation`)" + _review_text(summary, args.overrides) + _pack_text(summary),
          "- Split: patient-level 70/10/20 (train/val/test), stratified by source, dominant body "
          "part and view, fixed seed 20261127, saved as `models/splits/patient_split.csv` "
          "(`patient_id,split`). No patient is in two splits.",
          f"- Recipe: `{raw['training']['command']}` — {summary['args']['epochs']} epochs × "
          f"{summary['args']['samples_per_epoch']} samples (batch {summary['args']['batch_size']}), "
          f"AdamW (lr {summary['args']['lr']}, weight decay {summary['args']['weight_decay']}), "
          f"one-cycle schedule, label smoothing {summary['args']['label_smoothing']}, weight EMA "
          f"({summary['weights']} weights chosen on validation). Sampling weight per image "
          f"= count(body part)^-{summary['args']['balance_power']}, lateral chest ×"
          f"{summary['args']['lateral_boost']}; projection loss weighted by inverse class "
          "frequency. Augmentation on the uint8 upright image, before rotation: horizontal flip, "
          "rotation ±10°, random resized crop (50–100 % area, aspect 3/4–4/3), gamma 0.6–1.6, "
          "contrast/brightness, Gaussian noise.",
          f"- Wall time: {summary['seconds'] / 60:.0f} min {_hardware_text(summary)}, seed "
          f"{summary['args']['seed']}. Re-running the command gives the same split and data "
          "stream on any device (the weights then differ in floating-point detail).", "",
          "### Data per split (images)", ""]
    md += split_counts(rows, split)
    md += ["", "## Results on the held-out test split", "",
           "Measured with `radlint evaluate --labels shared/data/radiographs/labels.csv "
           "--split-file models/splits/patient_split.csv --split test"
           + (f" --overrides {_rel(args.overrides)}" if args.overrides else "")
           + "` (the ONNX model through "
           f"`tasks.infer`). 95 % intervals: percentile bootstrap, {args.bootstrap} resamples "
           "(orientation: resampling images with their four rotations together). Accuracy per "
           "class is the recall of that class.", "",
           "| task | headline | value [95% CI] | paper's level | floor (docs/architecture.md) |",
           "|---|---|---|---|---|",
           f"| body part | macro AUC (9 classes) | {fmt_ci(t['body_part']['macro_auc'])} | ≥ 0.99 "
           "| 0.992 |",
           f"| projection | PA-vs-AP AUC | {fmt_ci(pj.get('pa_vs_ap_auc'))} | ≥ 0.99 | 0.956 |",
           f"| projection | frontal-vs-lateral AUC | {fmt_ci(pj.get('frontal_vs_lateral_auc'))} "
           "| 1.00 | 1.000 |",
           f"| projection | macro AUC (3 classes) | {fmt_ci(pj['macro_auc'])} | ≥ 0.99 | – |",
           f"| orientation | macro AUC (4 classes) | {fmt_ci(t['orientation']['macro_auc'])} | "
           "≥ 0.999 | 0.997 |"]
    if raw_result is not None:
        md += [f"| orientation, source labels without the review | macro AUC | "
               f"{fmt_ci(raw_result['tasks']['orientation']['macro_auc'])} | | |"]
    md += ["",
           "### Body part", ""]
    md += task_table(t["body_part"])
    md += ["", "### Chest projection (chest test images with a view label)", ""]
    md += task_table(pj)
    md += ["", "By source (the AP/PA label correlates with the hospital):", ""]
    md += src_lines
    md += ["", "### Orientation (every test image in its four rotations)", ""]
    md += task_table(t["orientation"], unit="image×rotation")
    md += ["", "By body part:", ""]
    md += orientation_by_body_part(preds)
    md += ["", f"![ROC curves]({args.name}-roc.png)", "",
           f"![Confusion matrices]({args.name}-confusion.png)", ""]
    md += ["## Leave-one-source-out (projection)", ""]
    if loso_lines:
        md += ["A projection-capable model was trained without one source (its images removed "
               "from train and validation; chest images only, projection + orientation heads, "
               "the shipped recipe's augmentation and losses but a much shorter CPU run) and "
               "tested on every labelled chest image of the left-out source; the network column "
               "names the architecture and input size. These runs show how projection transfers "
               "to an unseen hospital, not the shipped model's accuracy.", ""]
        md += loso_lines
        md += ["", "For comparison, the shipped model on the test-split images of the same "
               "sources (which it saw in training) is in the by-source table above."]
    else:
        md += ["Not run."]
    notes = args.notes
    if notes.exists():
        # the card is about the shipped model: experiments below the marker stay in the notes file
        md += ["", notes.read_text().split(NOTES_END)[0].strip()]
    md += [""]
    text = "\n".join(md)
    (CARDS / f"{args.name}.md").write_text(text)
    (args.run / "card_metrics.json").write_text(json.dumps(
        {"test": result, "projection_by_source": src_res, "loso": loso_res},
        default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o), indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
