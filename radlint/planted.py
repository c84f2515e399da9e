"""Score findings against the planted truth of a lake built by radlint.lakegen."""

from __future__ import annotations

import csv
import itertools
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
    """Precision/recall per field of the generic model's rule and of the lake rules at each gate
    (lake alone, lake and the generic model's flag, lake and the generic model's class not the
    label; where no probe scored an image the generic verdict stands)."""
    load_truth(con, truth_csv)
    inputs = {field: _flag_inputs(con, field) for field in sorted(_fields(con))}
    rules = [("generic", None, None)] + [(f"{name}>={g}", rule, g) for g in gates
                                          for name, rule in (("lake", "lake"), ("both", "both"), ("lake+dis", "disagree"))]
    out = []
    for name, rule, g in rules:
        for field, x in inputs.items():
            flag = x["generic"] if rule is None else _lake_flags(x, rule, 1.0, 0, g)
            n_planted, n_flagged, tp = int(x["planted"].sum()), int(flag.sum()), int((flag & x["planted"]).sum())
            out.append({"rule": name, "field": field, "planted": n_planted, "flagged": n_flagged, "tp": tp,
                        "precision": tp / n_flagged if n_flagged else None,
                        "recall": tp / n_planted if n_planted else None})
    return out


def _fields(con) -> list[str]:
    return [r[0] for r in con.execute("select distinct field from planted_truth").fetchall()]


def _flag_inputs(con, field: str, confusable: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a lake rule reads, per checked finding of ``field`` with a planted-truth row (one query
    over the findings view; every rule and gate is then evaluated on these arrays). ``confusable``:
    the field's class sets (``'PA|AP'``); ``confusable`` in the result marks the findings whose label
    and lake-probe class both lie in one of them, as findings.sql decides it."""
    import numpy as np

    rows = con.execute(
        """
        select t.planted = 'True', coalesce(f.lake_method in ('lake_oof', 'lake_fit'), false),
               coalesce(not list_contains(string_split(f.header_class, '|'), f.lake_predicted_class), false),
               coalesce(1 - f.lake_label_prob, 0), coalesce(1 - f.header_class_prob, 0),
               coalesce(f.generic_is_mismatch, false),
               coalesce(not list_contains(string_split(f.header_class, '|'), f.predicted_class), false),
               count(*) over (partition by f.header_class),
               f.generic_distrust,
               coalesce(len(list_filter(?::varchar[], lambda c:
                   list_has_all(string_split(c, '|'), string_split(f.header_class, '|'))
                   and list_contains(string_split(c, '|'), f.lake_predicted_class))) > 0, false)
        from planted_truth as t join findings as f on f.uri = t.uri and f.field = t.field
        where t.field = ? and f.header_class is not null and (t.field <> 'projection' or t.true_class is not null)
        """,
        [list(confusable), field],
    ).fetchall()
    names = ("planted", "lake_ok", "lake_dis", "sev_lake", "sev_generic", "generic", "generic_dis", "n_label",
             "distrust", "confusable")
    cols = list(zip(*rows)) if rows else [()] * len(names)
    floats = ("sev_lake", "sev_generic", "n_label", "distrust")
    return {n: np.array([np.nan if v is None else v for v in c] if n == "distrust" else c,
                        dtype=float if n in floats else bool)
            for n, c in zip(names, cols)}


def _lake_flags(x: dict[str, Any], rule: str, weight: float, prior: float, gate: float,
                distrust_scale: float | None = None, confusable_gate: float | None = None):
    """The flags findings.sql would raise under one lake rule, weight, prior, gate, distrust scale and
    gate for claims between confusable classes."""
    import numpy as np

    w = weight * x["n_label"] / (x["n_label"] + prior) if prior else np.full(len(x["n_label"]), weight)
    if distrust_scale is not None:
        w = w * np.where(np.isnan(x["distrust"]), 1.0, np.minimum(1.0, np.nan_to_num(x["distrust"]) / distrust_scale))
    blended = w * x["sev_lake"] + (1 - w) * x["sev_generic"]
    extra = {"lake": True, "disagree": x["generic_dis"], "both": x["generic"]}[rule]
    if confusable_gate is not None:
        gate = np.where(x["confusable"], confusable_gate, gate)
    return np.where(x["lake_ok"], x["lake_dis"] & (blended >= gate) & extra, x["generic"])


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None without trials).

    Why: a lake of a few hundred planted errors gives a precision or recall that moves by several
    hundredths between two builds of the same lake; a number read against a 0.95 target needs its
    interval beside it."""
    if not trials:
        return None
    from scipy.stats import binomtest

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rates(true_positives: int, flagged: int, planted: int) -> dict[str, Any]:
    """Precision, recall, F1 (None where undefined) and the 95 % Wilson intervals of the first two,
    from the counts of flags."""
    precision = true_positives / flagged if flagged else None
    recall = true_positives / planted if planted else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else None
    return {"precision": precision, "recall": recall, "f1": f1,
            "precision_ci": wilson(true_positives, flagged), "recall_ci": wilson(true_positives, planted)}


def score(con, truth_csv: str | Path) -> dict[str, dict[str, Any]]:
    """Per field: planted errors, flagged, true positives, precision, recall, F1, and 95 % Wilson
    intervals of precision and recall (``precision_ci``, ``recall_ci``).

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
        out[field] = {"checked": n_checked, "planted": n_planted, "flagged": n_flagged, "true_positives": tp,
                      **rates(tp, n_flagged, n_planted)}
    return out


def pool_scores(builds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Several builds' :func:`score` results as one: counts summed per field, precision, recall, F1
    and their intervals recomputed from the sums."""
    out: dict[str, dict[str, Any]] = {}
    for field in FIELDS:
        rows = [b[field] for b in builds if field in b]
        if not rows:
            continue
        n = {k: sum(r[k] for r in rows) for k in ("checked", "planted", "flagged", "true_positives")}
        out[field] = dict(n, **rates(n["true_positives"], n["flagged"], n["planted"]))
    return out


def format_interval(value: float | None, ci: tuple[float, float] | None) -> str:
    """``0.940 [0.902, 0.964]``; ``-`` where there is no value."""
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def format_table(scores: dict[str, dict[str, Any]]) -> str:
    """The per-field scores as a text table, precision and recall with their 95 % Wilson intervals."""
    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = ["field        checked  planted  flagged   TP  precision [95% CI]      recall [95% CI]         F1"]
    for f in FIELDS:
        s = scores.get(f)
        if not s:
            continue
        lines.append(
            f"{f:<12} {s['checked']:>7}  {s['planted']:>7}  {s['flagged']:>7}  {s['true_positives']:>3}  "
            f"{format_interval(s['precision'], s.get('precision_ci')):<22}  "
            f"{format_interval(s['recall'], s.get('recall_ci')):<22}  {fmt(s['f1'])}"
        )
    return "\n".join(lines)


LAKE_RULES = ("lake", "disagree", "both")
LAKE_WEIGHTS = (0.5, 0.6, 0.7, 0.85, 1.0)
LAKE_GATES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97)
LAKE_PRIORS = (0, 25, 50, 100)
LAKE_DISTRUST_SCALES = (None, 0.1, 0.2, 0.3, 0.5, 1.0)
# tried above the setting's own gate, for fields with confusable class sets (gate.lake_confusable)
LAKE_CONFUSABLE_GATES = (None, 0.86, 0.88, 0.9, 0.92, 0.94, 0.96)
# What each field's flags must reach (precision, recall), as docs/architecture.md states them. PA
# against AP is told apart less surely than the other classes, hence projection's lower pair.
LAKE_TARGETS = {"body_part": (0.95, 0.95), "orientation": (0.95, 0.95), "projection": (0.90, 0.85)}


def choose_lake_gates(lakes, targets: dict[str, tuple[float, float]] | None = None, groups: list[str] | None = None,
                      confusable: dict[str, tuple[str, ...]] | None = None) -> dict[str, dict[str, Any]]:
    """Per field, the lake rule, weight, prior, gate and distrust scale to register, scored over every lake of
    ``lakes`` (pairs of an audited database connection and its planted-truth CSV) with their
    flags and planted errors pooled. Precision comes first, because a flag a user cannot trust costs
    more than one missed. Among the settings that reach the field's target precision and recall
    (``targets``, per field (precision, recall); default LAKE_TARGETS), the one furthest past both
    (the larger of their smaller margins); where none does, the most recall among those that reach
    the target precision; where none does, the best F1 (ties: the higher
    gate, the smaller prior, no distrust scale). Meant for lakes the model did not train on
    (``evaluate-planted --unseen-source``), never the test split. ``worst`` in each result is the
    lowest precision and recall any one lake got under the chosen setting; ``precision_ci`` and
    ``recall_ci`` the pooled 95 % Wilson intervals (the choice itself is made on the point values);
    ``per_lake`` the counts of each lake under it (``lake``: its position in ``lakes``; a lake without
    planted errors of the field is left out). ``groups`` names the lake each entry of ``lakes`` is a
    build of (several builds of one lake: other planted draws and folds); ``worst`` is then taken over
    the lakes, each pooled over its builds. Default: every entry its own lake. ``confusable``: per
    field, class sets (``'PA|AP'``, the registry's gate.lake_confusable) whose claims may get a
    stricter gate of their own (``lake_confusable_min_severity``, tried from LAKE_CONFUSABLE_GATES
    above the setting's gate; ties: none)."""
    import numpy as np

    names = list(groups) if groups is not None else [str(i) for i in range(len(lakes))]
    if len(names) != len(lakes):
        raise ValueError(f"{len(names)} group names for {len(lakes)} lakes")
    inputs: dict[str, list[dict[str, Any]]] = {}
    positions: dict[str, list[int]] = {}
    for i, (con, truth_csv) in enumerate(lakes):
        load_truth(con, truth_csv)
        for field in FIELDS:
            x = _flag_inputs(con, field, tuple((confusable or {}).get(field, ())))
            if x["planted"].sum():
                inputs.setdefault(field, []).append(x)
                positions.setdefault(field, []).append(i)
    out: dict[str, dict[str, Any]] = {}
    for field, xs in inputs.items():
        lake_names = [names[i] for i in positions[field]]
        sets = tuple((confusable or {}).get(field, ()))
        grid = []
        for rule, prior, w, g, scale, cg in itertools.product(LAKE_RULES, LAKE_PRIORS, LAKE_WEIGHTS, LAKE_GATES,
                                                              LAKE_DISTRUST_SCALES,
                                                              LAKE_CONFUSABLE_GATES if sets else (None,)):
            if cg is not None and cg <= g:
                continue
            per_lake = []
            for x in xs:
                flag = _lake_flags(x, rule, w, prior, g, scale, cg)
                per_lake.append((int((flag & x["planted"]).sum()), int(flag.sum()), int(x["planted"].sum())))
            tp, n_flagged, n_planted = (int(v) for v in np.sum(per_lake, axis=0))
            p = tp / n_flagged if n_flagged else 0.0
            r = tp / n_planted
            by_lake: dict[str, list[int]] = {}
            for name, counts in zip(lake_names, per_lake):
                acc = by_lake.setdefault(name, [0, 0, 0])
                for k in range(3):
                    acc[k] += counts[k]
            worst = (min(t / f if f else 0.0 for t, f, _ in by_lake.values()),
                     min(t / n for t, _, n in by_lake.values()))
            grid.append({"lake_rule": rule, "lake_weight": w, "lake_prior_images": prior,
                         "lake_min_severity": g, "lake_distrust_scale": scale,
                         "lake_confusable": list(sets) if cg is not None else None,
                         "lake_confusable_min_severity": cg, "precision": p, "recall": r,
                         "f1": 2 * p * r / (p + r) if p + r else 0.0, "worst": worst,
                         "true_positives": tp, "flagged": n_flagged, "planted": n_planted, "per_lake": per_lake})
        want_p, want_r = (targets or LAKE_TARGETS).get(field, LAKE_TARGETS[field])
        precise = [x for x in grid if x["precision"] >= want_p]
        reaching = [x for x in precise if x["recall"] >= want_r]
        if reaching:
            criterion = f"furthest past precision {want_p} and recall {want_r}"
        elif precise:
            criterion = f"recall at precision >= {want_p}, recall target {want_r} not reached"
        else:
            criterion = f"best F1, precision target {want_p} not reached"

        def key(x):
            # ties: the higher gate, then the smaller prior, then no distrust scale and no confusable gate
            # (the simpler rule)
            if reaching:
                # the setting deepest inside the target on its nearer side: a choice at the very edge of one
                # target would miss it on the next lake
                score = round(min(x["precision"] - want_p, x["recall"] - want_r), 4)
            else:
                score = x["recall"] if precise else round(x["f1"], 4)
            return (score, x["lake_min_severity"], -x["lake_prior_images"], x["lake_distrust_scale"] is None,
                    x["lake_confusable_min_severity"] is None)

        best = max(reaching or precise or grid, key=key)
        out[field] = dict(best, precision_ci=wilson(best["true_positives"], best["flagged"]),
                          recall_ci=wilson(best["true_positives"], best["planted"]),
                          per_lake=[{"lake": i, "true_positives": t, "flagged": f, "planted": n}
                                    for i, (t, f, n) in zip(positions[field], best["per_lake"])],
                          criterion=criterion, target=(want_p, want_r),
                          n_lakes=len(set(lake_names)), n_builds=len(xs))
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
