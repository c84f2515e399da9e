"""Choose per-task severity gates on the validation split and write them into the registry.

A flag's precision depends on how common label errors are, so the gate is chosen for a stated
target precision at a stated error prevalence, by simulating label errors on validation images:
a correct label (negative) or a wrong one (positive) next to the model's real outputs.

    python -m models.gates [--target-precision 0.9] [--prevalence 0.1]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import yaml

from radlint.tasks.infer import REGISTRY_PATH, default_model
from radlint.tasks.vocabulary import BODY_PART, ORIENTATION, PROJECTION

# lowest per-label gate: the model must give the label less than half its probability
LABEL_GATE_FLOOR = 0.5
GRID = np.round(np.concatenate([np.arange(0.0, 0.9, 0.01), np.arange(0.9, 1.0, 0.001)]), 4)


def flag_rates(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, gate: float, class_thresholds: bool = True
) -> np.ndarray:
    """Which (image, label) pairs the findings view would flag at this gate (sql/views/findings.sql)."""
    pred = probs.argmax(1)
    p_pred = probs[np.arange(len(probs)), pred]
    p_label = probs[np.arange(len(probs)), labels]
    confident = p_pred >= thresholds[pred] if class_thresholds else np.ones(len(probs), bool)
    return (pred != labels) & confident & (1.0 - p_label >= gate)


def _precision(tpr: float, fpr: float, prevalence: float) -> float:
    """Expected flag precision when a share ``prevalence`` of the labels is wrong."""
    return prevalence * tpr / (prevalence * tpr + (1 - prevalence) * fpr) if tpr + fpr > 0 else 0.0


def _choose_gate_one(neg, pos, target_precision: float, prevalence: float, class_thresholds: bool) -> dict:
    best = None
    for g in GRID:
        fpr = flag_rates(*neg, g, class_thresholds).mean()
        tpr = flag_rates(*pos, g, class_thresholds).mean()
        prec = _precision(tpr, fpr, prevalence)
        row = {"min_severity": float(g), "precision": float(prec), "recall": float(tpr),
               "class_thresholds": class_thresholds}
        if prec >= target_precision:
            return row
        if best is None or prec > best["precision"]:
            best = row
    return best


def choose_gate(neg, pos, target_precision: float, prevalence: float) -> dict:
    """The gate with the most recall whose expected precision reaches the target.

    Two rules are tried, each with its smallest sufficient gate: per-class thresholds on the
    predicted class plus the severity gate, and the severity gate alone (1 - p(label) ranks a wrong
    label well even when the model's mass is split between two other classes). ``neg``/``pos``:
    (probs, labels, thresholds) of correct and wrong labels.
    """
    rows = [_choose_gate_one(neg, pos, target_precision, prevalence, ct) for ct in (True, False)]
    reached = [r for r in rows if r["precision"] >= target_precision]
    if reached:
        return max(reached, key=lambda r: (r["recall"], r["class_thresholds"]))
    return max(rows, key=lambda r: r["precision"])


def choose_label_gates(neg, pos, classes, target_precision: float, prevalence: float) -> dict | None:
    """One severity gate per labelled class, each the smallest whose flags on pairs with that
    label reach the target precision (so the task's flags do too); under the better of the two
    rules of :func:`choose_gate`. None when no label class has both kinds of pair.

    Needed where one task mixes easy and hard confusions: a frontal chest image labelled
    LATERAL gets severity ~0.9 (label smoothing keeps p(LATERAL) near 0.1) while a PA image
    that looks AP gets ~0.96, so one gate cannot pass the first without the second.
    """
    best = None
    for ct in (True, False):
        gates, tp, n_pos = {}, 0.0, 0.0
        for c, name in enumerate(classes):
            nm, pm = neg[1] == c, pos[1] == c
            if not nm.any() or not pm.any():
                continue
            sub_neg = (neg[0][nm], neg[1][nm], neg[2])
            sub_pos = (pos[0][pm], pos[1][pm], pos[2])
            row = _choose_gate_one(sub_neg, sub_pos, target_precision, prevalence, ct)
            if row["precision"] < target_precision:
                row = {"min_severity": 1.0, "recall": 0.0}  # never flag this label
            elif row["min_severity"] < LABEL_GATE_FLOOR:
                # a label with few validation images cannot vouch for a gate below the floor
                row = {**row, "min_severity": LABEL_GATE_FLOOR,
                       "recall": float(flag_rates(*sub_pos, LABEL_GATE_FLOOR, ct).mean())}
            gates[name] = round(row["min_severity"], 4)
            tp += row["recall"] * pm.sum()
            n_pos += pm.sum()
        if not gates:
            continue
        cand = {"by_label": gates, "recall": tp / n_pos, "class_thresholds": ct}
        if best is None or cand["recall"] > best["recall"]:
            best = cand
    return best


def label_gate_rates(neg, pos, classes, by_label: dict, fallback: float, class_thresholds: bool,
                     prevalence: float) -> tuple[float, float]:
    """Validation precision and recall of the findings rule with per-label gates (a label without
    one uses the task's gate, ``fallback``, as sql/views/findings.sql does)."""
    def rate(pairs):
        gates = np.array([by_label.get(classes[y], fallback) for y in pairs[1]])
        return float(flag_rates(*pairs, gates, class_thresholds).mean())

    tpr = rate(pos)
    return float(_precision(tpr, rate(neg), prevalence)), tpr


def _wrong_labels(probs: np.ndarray, labels: np.ndarray, candidates: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each image's outputs paired with every candidate label other than its true one."""
    pos_p, pos_l = [], []
    for p, y in zip(probs, labels):
        for w in candidates:
            if w != y:
                pos_p.append(p)
                pos_l.append(w)
    return np.array(pos_p), np.array(pos_l)


def simulate(up: dict, ori: np.ndarray, rows: list[dict], thresholds: dict) -> dict:
    """Negative and positive (probs, labels, thresholds) per task from validation predictions."""
    out = {}
    bp = np.array([BODY_PART.index(r["body_part"]) for r in rows])
    t_bp = np.array([thresholds["body_part"][c] for c in BODY_PART])
    wrong = [c for c in range(len(BODY_PART)) if BODY_PART[c] != "other"]
    out["body_part"] = ((up["body_part"], bp, t_bp), (*_wrong_labels(up["body_part"], bp, wrong), t_bp))

    t_or = np.array([thresholds["orientation"][c] for c in ORIENTATION])
    neg = ori[:, 0]  # stored upright, labelled upright
    pos = ori[:, 1:].reshape(-1, len(ORIENTATION))  # stored rotated, labelled upright
    out["orientation"] = ((neg, np.zeros(len(neg), int), t_or), (pos, np.zeros(len(pos), int), t_or))

    t_pr = np.array([thresholds["projection"][c] for c in PROJECTION])
    keep = [i for i, r in enumerate(rows) if r["body_part"] == "chest" and r.get("view") in PROJECTION]
    views = np.array([PROJECTION.index(rows[i]["view"]) for i in keep])
    probs = up["projection"][keep]
    out["projection"] = ((probs, views, t_pr), (*_wrong_labels(probs, views, list(range(len(PROJECTION)))), t_pr))
    return out


def main(argv=None) -> int:
    from radlint.models.train import _optional_path, default_review
    from radlint.tasks.evaluation import apply_overrides, predict_folder

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--labels", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/radiographs/labels.csv")
    ap.add_argument("--split-file", type=Path, default=Path(__file__).resolve().parent / "splits/patient_split.csv")
    ap.add_argument("--split", default="val")
    ap.add_argument("--overrides", type=_optional_path, default=default_review(),
                    help="CSV keyed by file (default: models/splits/orientation_review.csv)")
    ap.add_argument("--registry", type=Path, default=REGISTRY_PATH)
    ap.add_argument("--target-precision", type=float, default=0.9)
    ap.add_argument("--prevalence", type=float, default=0.1)
    args = ap.parse_args(argv)

    with open(args.split_file, newline="") as f:
        split = {r["patient_id"]: r["split"] for r in csv.DictReader(f)}
    with open(args.labels, newline="") as f:
        rows = apply_overrides(list(csv.DictReader(f)), args.overrides)
    rows = [r for r in rows if split.get(r["patient_id"]) == args.split]
    entry = default_model(args.registry)
    up, ori = predict_folder(entry, rows, args.labels.parent)
    thresholds = {t: spec.thresholds for t, spec in entry.tasks.items()}
    sims = simulate(up, ori, rows, thresholds)

    text = args.registry.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    data = yaml.safe_load(text)
    model = next(m for m in data["models"] if m["name"] == entry.name)
    classes = {"body_part": BODY_PART, "projection": PROJECTION, "orientation": ORIENTATION}
    for task, (neg, pos) in sims.items():
        g = choose_gate(neg, pos, args.target_precision, args.prevalence)
        gate = {
            "min_severity": round(g["min_severity"], 4),
            "target_precision": args.target_precision,
            "prevalence": args.prevalence,
            "val_precision": round(g["precision"], 4),
            "val_recall": round(g["recall"], 4),
            "class_thresholds": bool(g["class_thresholds"]),
        }
        lg = choose_label_gates(neg, pos, classes[task], args.target_precision, args.prevalence)
        reached = g["precision"] >= args.target_precision
        if lg is not None and lg["recall"] > 0 and (not reached or lg["recall"] > g["recall"] + 1e-9):
            prec, tpr = label_gate_rates(neg, pos, classes[task], lg["by_label"], g["min_severity"],
                                         lg["class_thresholds"], args.prevalence)
            gate.update({"by_label": lg["by_label"], "class_thresholds": bool(lg["class_thresholds"]),
                         "val_precision": round(prec, 4), "val_recall": round(tpr, 4)})
        # the lake gates (lake_rule, ...) are chosen elsewhere (radlint choose-lake-gates): kept
        kept = {k: v for k, v in (model["tasks"][task].get("gate") or {}).items() if k.startswith("lake_")}
        model["tasks"][task]["gate"] = {**gate, **kept}
        print(f"{task:12s} gate {gate['min_severity']:.3f}  by label {gate.get('by_label')}  "
              f"class thresholds {str(gate['class_thresholds']):5s}  "
              f"val precision {gate['val_precision']:.3f}  recall {gate['val_recall']:.3f}")
    args.registry.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
