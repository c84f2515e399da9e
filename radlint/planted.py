"""Score findings against the planted truth of a lake built by radlint.lakegen."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from radlint.lakegen import SYSTEMATIC_PROTOCOL

FIELDS = ("body_part", "projection", "orientation")


def load_truth(con, truth_csv: str | Path) -> None:
    """The truth as temp table planted_truth; a systematically mislabelled group (lakegen's
    ``systematic``) is meant to be found as a group, so its rows are not counted per image."""
    con.execute(
        """create or replace temp table planted_truth_all as
           select * from read_csv(?, header = true, all_varchar = true, union_by_name = true)""",
        [str(truth_csv)],
    )
    has_systematic = "systematic" in {r[0] for r in con.execute("describe planted_truth_all").fetchall()}
    con.execute(
        "create or replace temp table planted_truth as select * from planted_truth_all"
        + (" where coalesce(systematic, 'False') <> 'True'" if has_systematic else "")
    )


def systematic_group(con, truth_csv: str | Path) -> dict[str, Any] | None:
    """How the systematic group fared: its size, per-image flags among it, and whether
    group_findings flags a group made of it (protocol_name dimension)."""
    load_truth(con, truth_csv)
    if "systematic" not in {r[0] for r in con.execute("describe planted_truth_all").fetchall()}:
        return None
    n, flagged = con.execute(
        """select count(*), count(*) filter (where f.is_mismatch)
           from planted_truth_all as t join findings as f on f.uri = t.uri and f.field = t.field
           where t.systematic = 'True'"""
    ).fetchone()
    if not n:
        return None
    group = con.execute(
        """select n_images, share_disagree, is_flagged from group_findings
           where field = 'body_part' and dimension = 'protocol_name' and group_value = ?""",
        [SYSTEMATIC_PROTOCOL],
    ).fetchone()
    return {"n_images": n, "per_image_flags": flagged, "group_n": group[0] if group else 0,
            "group_share_disagree": group[1] if group else None, "group_flagged": bool(group and group[2])}


def rule_sweep(con, truth_csv: str | Path, gates=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95)) -> list[dict[str, Any]]:
    """Precision/recall per field of the generic model's rule and of the lake rule at each gate
    (where no probe scored an image the generic verdict stands): the data a lake gate is chosen on."""
    load_truth(con, truth_csv)
    rules = {"generic": "f.generic_is_mismatch"}
    for g in gates:
        lake = (f"(not list_contains(string_split(f.header_class, '|'), f.lake_predicted_class) "
                f"and 1 - f.lake_label_prob >= {g})")
        rules[f"lake>={g}"] = f"case when f.lake_method in ('lake_oof', 'lake_fit') then {lake} else f.generic_is_mismatch end"
        rules[f"both>={g}"] = (f"case when f.lake_method in ('lake_oof', 'lake_fit') then {lake} and f.generic_is_mismatch "
                               f"else f.generic_is_mismatch end")
        disagree = "not list_contains(string_split(f.header_class, '|'), f.predicted_class)"
        rules[f"lake+dis>={g}"] = (f"case when f.lake_method in ('lake_oof', 'lake_fit') then {lake} and {disagree} "
                                   f"else f.generic_is_mismatch end")
    out = []
    for name, rule in rules.items():
        rows = con.execute(
            f"""
            select t.field, count(*) filter (where t.planted = 'True'),
                   count(*) filter (where coalesce({rule}, false)),
                   count(*) filter (where coalesce({rule}, false) and t.planted = 'True')
            from planted_truth as t join findings as f on f.uri = t.uri and f.field = t.field
            where f.header_class is not null and (t.field <> 'projection' or t.true_class is not null)
            group by t.field order by t.field
            """
        ).fetchall()
        for field, n_planted, n_flagged, tp in rows:
            out.append({"rule": name, "field": field, "planted": n_planted, "flagged": n_flagged, "tp": tp,
                        "precision": tp / n_flagged if n_flagged else None,
                        "recall": tp / n_planted if n_planted else None})
    return out


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


LAKE_RULES = ("lake", "disagree", "both")
LAKE_WEIGHTS = (0.5, 0.6, 0.7, 0.85, 1.0)
LAKE_GATES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97)
LAKE_PRIORS = (0, 25, 50, 100)


def choose_lake_gates(con, truth_csv: str | Path, target_precision: float = 0.95) -> dict[str, dict[str, Any]]:
    """Per field, the lake rule, weight, prior and gate to register: the most recall at
    ``target_precision`` where some setting reaches it with recall at least as high, else the best
    F1 (ties: the higher gate, then the smaller prior). Meant for a lake the model did not train on
    (``evaluate-planted --unseen-source``), never the test split."""
    import numpy as np

    load_truth(con, truth_csv)
    out: dict[str, dict[str, Any]] = {}
    for field in FIELDS:
        rows = con.execute(
            """
            select t.planted = 'True', f.lake_method in ('lake_oof', 'lake_fit'),
                   coalesce(not list_contains(string_split(f.header_class, '|'), f.lake_predicted_class), false),
                   coalesce(1 - f.lake_label_prob, 0), coalesce(1 - f.header_class_prob, 0),
                   coalesce(f.generic_is_mismatch, false),
                   not list_contains(string_split(f.header_class, '|'), f.predicted_class),
                   count(*) over (partition by f.header_class)
            from planted_truth as t join findings as f on f.uri = t.uri and f.field = t.field
            where t.field = ? and f.header_class is not null and (t.field <> 'projection' or t.true_class is not null)
            """,
            [field],
        ).fetchall()
        if not rows or not any(r[0] for r in rows):
            continue
        planted_, lake_ok, lake_dis, sev_l, sev_g, generic, gen_dis, n_label = (np.array(c) for c in zip(*rows))
        planted_, lake_ok, lake_dis, generic, gen_dis = (a.astype(bool) for a in (planted_, lake_ok, lake_dis, generic, gen_dis))
        sev_l, sev_g, n_label = (a.astype(float) for a in (sev_l, sev_g, n_label))
        grid = []
        for rule in LAKE_RULES:
            extra = {"lake": np.ones_like(generic), "disagree": gen_dis, "both": generic}[rule]
            for prior in LAKE_PRIORS:
                for w in LAKE_WEIGHTS:
                    w_eff = w * n_label / (n_label + prior)
                    blended = w_eff * sev_l + (1 - w_eff) * sev_g
                    for g in LAKE_GATES:
                        flag = np.where(lake_ok, lake_dis & (blended >= g) & extra, generic)
                        tp = int((flag & planted_).sum())
                        n_flagged = int(flag.sum())
                        p = tp / n_flagged if n_flagged else 0.0
                        r = tp / int(planted_.sum())
                        grid.append({"lake_rule": rule, "lake_weight": w, "lake_prior_images": prior,
                                     "lake_min_severity": g, "precision": p, "recall": r,
                                     "f1": 2 * p * r / (p + r) if p + r else 0.0})
        reaching = [x for x in grid if x["precision"] >= target_precision and x["recall"] >= target_precision]
        key = (lambda x: (x["recall"], x["lake_min_severity"], -x["lake_prior_images"])) if reaching else \
              (lambda x: (round(x["f1"], 4), x["lake_min_severity"], -x["lake_prior_images"]))
        best = max(reaching or grid, key=key)
        out[field] = dict(best, criterion=f"recall at precision >= {target_precision}" if reaching else "best F1")
    return out


def format_sweep(rows: list[dict[str, Any]]) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    lines = ["rule         field        planted  flagged   TP  precision  recall"]
    for r in rows:
        lines.append(f"{r['rule']:<12} {r['field']:<12} {r['planted']:>7}  {r['flagged']:>7}  {r['tp']:>3}  "
                     f"{fmt(r['precision']):>9}  {fmt(r['recall']):>6}")
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
