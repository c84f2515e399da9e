"""Score findings against the planted truth of a lake built by radlint.lakegen."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

FIELDS = ("body_part", "projection", "orientation")


def load_truth(con, truth_csv: str | Path) -> None:
    con.execute("create or replace temp table planted_truth as select * from read_csv(?, header = true, all_varchar = true)", [str(truth_csv)])


def score(con, truth_csv: str | Path) -> dict[str, dict[str, Any]]:
    """Per field: planted errors, flagged, true positives, precision, recall, F1.

    Only images the audit checked count (projection: chest images with a known view).
    """
    load_truth(con, truth_csv)
    rows = con.execute(
        """
        select t.field,
               count(*) filter (where t.planted = 'True') as n_planted,
               count(*) filter (where f.is_mismatch) as n_flagged,
               count(*) filter (where f.is_mismatch and t.planted = 'True') as tp,
               count(*) as n_checked
        from planted_truth as t
        join findings as f on f.uri = t.uri and f.field = t.field
        where f.header_class is not null and (t.field <> 'projection' or t.true_class is not null)
        group by t.field order by t.field
        """
    ).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for field, n_planted, n_flagged, tp, n_checked in rows:
        precision = tp / n_flagged if n_flagged else None
        recall = tp / n_planted if n_planted else None
        f1 = (2 * precision * recall / (precision + recall)) if precision and recall else None
        out[field] = {
            "checked": n_checked,
            "planted": n_planted,
            "flagged": n_flagged,
            "true_positives": tp,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
    return out


def format_table(scores: dict[str, dict[str, Any]]) -> str:
    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = ["field        checked  planted  flagged  TP   precision  recall  F1"]
    for f in FIELDS:
        s = scores.get(f)
        if not s:
            continue
        lines.append(
            f"{f:<12} {s['checked']:>7}  {s['planted']:>7}  {s['flagged']:>7}  {s['true_positives']:>3}  "
            f"{fmt(s['precision']):>9}  {fmt(s['recall']):>6}  {fmt(s['f1'])}"
        )
    return "\n".join(lines)


def planted_errors_csv(truth_csv: str | Path) -> list[dict[str, str]]:
    with open(truth_csv, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["planted"] == "True"]


def pr_curve(con, truth_csv: str | Path, field: str) -> tuple[list[float], list[float], list[float]]:
    """Precision and recall of ranking by severity, at every cutoff; returns (thresholds, precision, recall)."""
    load_truth(con, truth_csv)
    rows = con.execute(
        """
        select f.severity, t.planted = 'True' as y
        from planted_truth as t join findings as f on f.uri = t.uri and f.field = t.field
        where t.field = ? and f.severity is not null and (t.field <> 'projection' or t.true_class is not null)
        order by f.severity desc
        """,
        [field],
    ).fetchall()
    total = sum(1 for _, y in rows if y)
    thr, prec, rec = [], [], []
    tp = 0
    for k, (sev, y) in enumerate(rows, start=1):
        tp += int(y)
        thr.append(float(sev))
        prec.append(tp / k)
        rec.append(tp / total if total else 0.0)
    return thr, prec, rec


def plot_pr(con, truth_csv: str | Path, out_png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for field in FIELDS:
        _, p, r = pr_curve(con, truth_csv, field)
        if p:
            ax.plot(r, p, label=field)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Planted label errors: ranking by severity")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
