"""Metrics (numpy only) and the evaluation of a model on a labeled image folder: the figures of
the model cards, recomputed by ``radlint evaluate`` (radlint/evaluate.py) and by the training
scripts (models/), which import them from here so that they depend on tasks/ only.

The folder is described by a CSV in the format of ``labels.csv`` (columns ``file`` and
``body_part`` and/or ``view``; ``patient_id`` when a split file is used). Body part and
projection are scored on the image as stored; orientation is scored by rotating every image
the four ways (tasks.preprocess.rotate_to_orientation) and asking the model which one it sees.
An optional ``orientation`` column says how a stored image differs from upright (the orientation
vocabulary of tasks/vocabulary.py; empty = upright): such an image is brought upright before it is
rotated. An overrides CSV (keyed by ``file``) replaces the labels' values where its cells are not
empty, e.g. models/splits/orientation_review.csv for the shared radiographs (images not stored
upright, and a few whose source body part is wrong).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- metrics


def auc_ovr(y_true, scores) -> float:
    """ROC AUC of ``scores`` for the binary target ``y_true`` (Mann-Whitney, ties count half).

    NaN when only one class is present.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError("y_true and scores differ in length")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (for plots)."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(1, y.sum())]
    fpr = np.r_[0.0, fps / max(1, (~y).sum())]
    return fpr, tpr


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """counts[i, j] = number of items of true class i predicted as class j."""
    yt = np.asarray(y_true, dtype=np.int64).ravel()
    yp = np.asarray(y_pred, dtype=np.int64).ravel()
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (yt, yp), 1)
    return cm


def bootstrap_ci(metric, *arrays, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 groups=None) -> tuple[float, float, float]:
    """Point estimate and percentile (1 - alpha) bootstrap interval of ``metric(*arrays)``.

    Resamples items with replacement (or whole ``groups``, e.g. the four rotations of one
    image, when given). Resamples where the metric is NaN (one class only) are skipped.
    """
    arrays = [np.asarray(a) for a in arrays]
    point = float(metric(*arrays))
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    if groups is not None:
        g = np.asarray(groups)
        uniq, inv = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    vals = []
    for _ in range(n_boot):
        if groups is None:
            idx = rng.integers(0, n, n)
        else:
            pick = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[k] for k in pick])
        v = metric(*[a[idx] for a in arrays])
        if not (isinstance(v, float) and math.isnan(v)):
            vals.append(v)
    if not vals:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def accuracy(y_true, y_pred) -> float:
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return float("nan")
    return float((y_true == np.asarray(y_pred)).mean())


# --------------------------------------------------------------------------- task metrics


def _macro_auc(y, p, classes):
    vals = [auc_ovr(y == c, p[:, c]) for c in classes]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def task_metrics(task: str, classes, y, p, *, groups=None, n_boot: int = 1000, seed: int = 0):
    """Per-class one-vs-rest AUC and accuracy (recall of the class) with bootstrap CIs,
    macro AUC, overall accuracy and the confusion matrix for one task.

    ``y`` holds class indices, ``p`` probabilities [N, C] in the same class order.
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    pred = p.argmax(1) if len(p) else np.zeros(0, dtype=np.int64)
    present = [c for c in range(len(classes)) if (y == c).any()]
    rows = []
    for c, name in enumerate(classes):
        n = int((y == c).sum())
        if n == 0:
            rows.append({"class": name, "n": 0, "auc": None, "acc": None})
            continue
        auc = bootstrap_ci(lambda yy, ss, c=c: auc_ovr(yy == c, ss), y, p[:, c],
                           n_boot=n_boot, seed=seed, groups=groups)
        m = y == c
        sub_groups = None if groups is None else np.asarray(groups)[m]
        acc = bootstrap_ci(accuracy, y[m], pred[m], n_boot=n_boot, seed=seed, groups=sub_groups)
        rows.append({"class": name, "n": n, "auc": auc, "acc": acc})
    res = {
        "task": task,
        "n": int(len(y)),
        "classes": list(classes),
        "per_class": rows,
        "macro_auc": bootstrap_ci(lambda yy, pp: _macro_auc(yy, pp, present), y, p,
                                  n_boot=n_boot, seed=seed, groups=groups),
        "accuracy": bootstrap_ci(accuracy, y, pred, n_boot=n_boot, seed=seed, groups=groups),
        "confusion": confusion_matrix(y, pred, len(classes)).tolist(),
    }
    return res


def binary_auc(y_pos, score, *, n_boot: int = 1000, seed: int = 0, groups=None):
    return bootstrap_ci(auc_ovr, np.asarray(y_pos, bool), np.asarray(score, float),
                        n_boot=n_boot, seed=seed, groups=groups)


def projection_extras(y, p, *, n_boot=1000, seed=0):
    """PA-vs-AP AUC (frontal images only, score p(PA)/(p(PA)+p(AP))) and frontal-vs-lateral AUC
    (score 1 - p(LATERAL)). Class order PA, AP, LATERAL."""
    y = np.asarray(y)
    p = np.asarray(p, float)
    out = {}
    f = y != 2
    if f.any():
        s = p[f, 0] / np.clip(p[f, 0] + p[f, 1], 1e-12, None)
        out["pa_vs_ap_auc"] = binary_auc(y[f] == 0, s, n_boot=n_boot, seed=seed)
    out["frontal_vs_lateral_auc"] = binary_auc(y != 2, 1 - p[:, 2], n_boot=n_boot, seed=seed)
    return out


def choose_thresholds(y, p, classes, target_precision=0.95, floor=0.5, fallback=0.99):
    """Per class c: the lowest t >= floor such that, among items predicted c with p(c) >= t,
    precision >= target. Unreachable (or no predictions of c): ``fallback``."""
    y = np.asarray(y)
    p = np.asarray(p, float)
    pred = p.argmax(1)
    out = {}
    for c, name in enumerate(classes):
        sel = pred == c
        conf = p[sel, c]
        correct = y[sel] == c
        best = None
        for t in sorted({floor, *conf[conf >= floor].tolist()}):
            m = conf >= t
            if m.sum() == 0:
                break
            if correct[m].mean() >= target_precision:
                best = t
                break
        out[name] = round(float(best), 4) if best is not None else fallback
    return out


# --------------------------------------------------------------------------- evaluate a folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def apply_overrides(rows: list[dict], overrides: Path | None, strict: bool = True) -> list[dict]:
    """Rows with the non-empty cells of ``overrides`` (a CSV keyed by ``file``) replacing theirs.

    Raises ValueError for an unknown orientation or body part and, when ``strict``, for an
    override of a file the labels do not list, so a stale review file cannot pass silently
    (``strict=False`` for a subset of the labels, such as a training copy without the test split).
    """
    from radlint.tasks.vocabulary import BODY_PART, ORIENTATION

    if overrides is None:
        return rows
    files = {r["file"] for r in rows}
    cells: dict[str, dict] = {}
    for o in read_csv(Path(overrides)):
        f = o.get("file", "")
        if None in o:  # csv puts cells beyond the header under None (an unquoted comma in a note)
            raise ValueError(f"{overrides}: the row for {f!r} has more cells than the header (quote cells with commas)")
        if f not in files:
            if strict:
                raise ValueError(f"{overrides}: {f!r} is not in the labels")
            continue
        if o.get("orientation") and o["orientation"] not in ORIENTATION:
            raise ValueError(f"{overrides}: unknown orientation {o['orientation']!r} for {f}")
        if o.get("body_part") and o["body_part"] not in BODY_PART:
            raise ValueError(f"{overrides}: unknown body part {o['body_part']!r} for {f}")
        cells.setdefault(f, {}).update({k: v for k, v in o.items() if v and k != "file"})
    return [dict(r, **cells[r["file"]]) if r["file"] in cells else r for r in rows]


def stored_orientation(row: dict) -> str:
    """How the row's stored image differs from upright (empty or absent: upright).

    Raises ValueError for a value outside the orientation vocabulary.
    """
    from radlint.tasks.vocabulary import ORIENTATION

    value = row.get("orientation") or "upright"
    if value not in ORIENTATION:
        raise ValueError(f"unknown orientation {value!r} for {row.get('file', '?')} "
                         f"(expected one of {', '.join(ORIENTATION)})")
    return value


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("L"))
    return np.array(arr)


def predict_folder(entry, rows, root: Path, *, batch_size=64, threads=0, rotate=True):
    """Run the registry model over every row's image: upright outputs and, for orientation,
    the four rotations. Returns (dict task -> [N, C] upright, orientation [N, 4, 4])."""
    from radlint.tasks.infer import predict
    from radlint.tasks.preprocess import correct_orientation, model_input, rotate_to_orientation
    from radlint.tasks.vocabulary import ORIENTATION

    size = entry.input_size
    upright = {t: [] for t in entry.tasks}
    rot = []
    chunk = 32
    for s in range(0, len(rows), chunk):
        xs = []
        for r in rows[s : s + chunk]:
            img = correct_orientation(load_image(root / r["file"]), stored_orientation(r))
            views = ORIENTATION if rotate else ORIENTATION[:1]
            for o in views:
                xs.append(model_input(rotate_to_orientation(img, o), size))
        x = np.stack(xs).astype(np.float32)
        out = predict(entry, x, batch_size=batch_size, threads=threads)
        k = 4 if rotate else 1
        for t, v in out.items():
            v = v.reshape(-1, k, v.shape[1])
            upright[t].append(v[:, 0])
            if t == "orientation":
                rot.append(v)
    up = {t: np.concatenate(v) for t, v in upright.items()}
    ori = np.concatenate(rot) if rot else None
    return up, ori


def evaluate(labels: Path, root: Path | None = None, *, registry: Path | None = None,
             split_file: Path | None = None, split: str | None = None, n_boot: int = 1000,
             seed: int = 0, threads: int = 0, return_predictions: bool = False,
             overrides: Path | None = None, source: str | None = None) -> dict:
    """Metrics of the registry's default model on the labeled folder (see module docstring)."""
    from radlint.tasks.infer import REGISTRY_PATH, default_model

    labels = Path(labels)
    root = Path(root) if root else labels.parent
    rows = apply_overrides(read_csv(labels), overrides)
    if split_file and split:
        sp = {r["patient_id"]: r["split"] for r in read_csv(Path(split_file))}
        rows = [r for r in rows if sp.get(r.get("patient_id", "")) == split]
    if source:
        rows = [r for r in rows if r.get("source") == source]
    if not rows:
        raise ValueError("no labeled images to evaluate" + (f" from source {source!r}" if source else ""))
    entry = default_model(registry or REGISTRY_PATH)
    up, ori = predict_folder(entry, rows, root, threads=threads)
    result = {"model": entry.name, "sha256": entry.sha256, "n_images": len(rows),
              "labels": str(labels), "split": split, "source": source, "tasks": {},
              "overrides": str(overrides) if overrides else None,
              "not_upright_as_stored": sum(stored_orientation(r) != "upright" for r in rows)}
    preds = {"rows": rows, "upright": up, "orientation": ori}

    bp = entry.tasks.get("body_part")
    if bp is not None:
        idx = {c: i for i, c in enumerate(bp.classes)}
        m = np.array([r.get("body_part", "") in idx for r in rows])
        if m.any():
            y = np.array([idx[r["body_part"]] for r, k in zip(rows, m) if k])
            result["tasks"]["body_part"] = task_metrics("body_part", bp.classes, y,
                                                        up["body_part"][m], n_boot=n_boot,
                                                        seed=seed)
            preds["body_part_mask"] = m
    pj = entry.tasks.get("projection")
    if pj is not None:
        idx = {c: i for i, c in enumerate(pj.classes)}
        m = np.array([(r.get("view", "") or "").upper() in idx
                      and r.get("body_part", "chest") in ("chest", "") for r in rows])
        if m.any():
            y = np.array([idx[r["view"].upper()] for r, k in zip(rows, m) if k])
            res = task_metrics("projection", pj.classes, y, up["projection"][m], n_boot=n_boot,
                               seed=seed)
            if tuple(pj.classes) == ("PA", "AP", "LATERAL"):
                res.update(projection_extras(y, up["projection"][m], n_boot=n_boot, seed=seed))
            result["tasks"]["projection"] = res
            preds["projection_mask"] = m
    ot = entry.tasks.get("orientation")
    if ot is not None and ori is not None:
        n = len(rows)
        y = np.tile(np.arange(4), n)
        groups = np.repeat(np.arange(n), 4)
        result["tasks"]["orientation"] = task_metrics("orientation", ot.classes, y,
                                                      ori.reshape(-1, 4), groups=groups,
                                                      n_boot=n_boot, seed=seed)
    if return_predictions:
        return result, preds
    return result


# --------------------------------------------------------------------------- output


def fmt_ci(t) -> str:
    if t is None:
        return "–"
    point, lo, hi = t
    if math.isnan(point):
        return "n/a"
    if math.isnan(lo):
        return f"{point:.3f}"
    return f"{point:.3f} [{lo:.3f}, {hi:.3f}]"


def to_markdown(result: dict) -> str:
    lines = [f"Model `{result['model']}` on {result['n_images']} images"
             + (f" (split {result['split']})" if result.get("split") else "")
             + (f" (source {result['source']})" if result.get("source") else "") + "."]
    for task, res in result["tasks"].items():
        lines += ["", f"### {task} (n = {res['n']}"
                  + (" image × rotation pairs" if task == "orientation" else " images") + ")", "",
                  "| class | n | AUC one-vs-rest [95% CI] | accuracy (recall) [95% CI] |",
                  "|---|---|---|---|"]
        for row in res["per_class"]:
            lines.append(f"| {row['class']} | {row['n']} | {fmt_ci(row['auc'])} | "
                         f"{fmt_ci(row['acc'])} |")
        lines.append(f"| **macro AUC / overall accuracy** | {res['n']} | "
                     f"{fmt_ci(res['macro_auc'])} | {fmt_ci(res['accuracy'])} |")
        for k in ("pa_vs_ap_auc", "frontal_vs_lateral_auc"):
            if k in res:
                lines.append(f"| {k.replace('_', ' ')} | | {fmt_ci(res[k])} | |")
    return "\n".join(lines) + "\n"
