"""Read the findings view: run summaries, top suspects, corrections for PACS/RIS administrators."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

TABLES = ("images", "predictions", "skipped", "runs", "labels", "thumbnails", "embeddings", "lake_predictions")
SUMMARY_COLUMNS = ("uri", "field", "header_value", "header_class", "predicted_class", "predicted_prob", "severity",
                   "suggested_correction", "flag_basis", "is_mismatch")


def table_counts(con) -> dict[str, int]:
    return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}


# One meaning of "checked" for the printed summary, the report and the mismatch_rates view.
CHECKED_MEANING = "checked: findings with both a label and a prediction (is_mismatch not NULL)"


def mismatch_counts(con, source: str = "findings") -> dict[str, dict[str, int]]:
    """Per field: ``findings`` (image x field), ``checked`` (see CHECKED_MEANING), ``mismatch`` and
    ``unlabelled`` (no label, so never checked)."""
    rows = con.execute(
        f"""
        select field, count(*) as n_findings,
               count(*) filter (where is_mismatch is not null) as n_checked,
               count(*) filter (where is_mismatch) as n_mismatch,
               count(*) filter (where header_class is null) as n_unlabelled
        from {source} group by field order by field
        """
    ).fetchall()
    return {f: {"findings": n, "checked": c, "mismatch": m, "unlabelled": u} for f, n, c, m, u in rows}


# The order of suspects, most certain first: the top_suspects view (sql/views/top_suspects.sql,
# its rank), the run summary and the report all use it (tests/sql/test_top_suspects_order.py).
SUSPECT_ORDER = "severity desc nulls last, predicted_prob desc, uri, field"


def top_suspects(con, limit: int = 10, field: str | None = None, source: str = "findings") -> list[dict[str, Any]]:
    """Mismatches in SUSPECT_ORDER, most certain first."""
    sql = f"""
        select uri, field, header_value, header_class, predicted_class,
               round(predicted_prob::double, 3) as predicted_prob, round(severity::double, 3) as severity,
               suggested_correction, flag_basis
        from {source}
        where is_mismatch and (? is null or field = ?)
        order by {SUSPECT_ORDER}
        limit ?
    """
    cur = con.execute(sql, [field, field, limit])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def run_summary(con, run_id: str) -> dict[str, Any]:
    run = con.execute(
        "select run_id, status, n_listed, n_new, n_images, n_skipped, n_predictions, n_shards, n_failed_shards "
        "from runs where run_id = ?",
        [run_id],
    ).fetchone()
    keys = ["run_id", "status", "n_listed", "n_new", "n_images", "n_skipped", "n_predictions", "n_shards", "n_failed_shards"]
    summary: dict[str, Any] = dict(zip(keys, run)) if run else {"run_id": run_id}
    summary["tables"] = table_counts(con)
    # The findings view is evaluated once here, not per question, and only for the columns the
    # summary reads: ~0.16 s instead of ~0.23 s per 10k images (every re-run pays it).
    con.execute(f"create or replace temp table run_summary_findings as select {', '.join(SUMMARY_COLUMNS)} from findings")
    summary["mismatches"] = mismatch_counts(con, "run_summary_findings")
    summary["skipped_reasons"] = dict(
        con.execute("select reason, count(*) from skipped group by reason order by 2 desc").fetchall()
    )
    summary["top_suspects"] = top_suspects(con, 10, source="run_summary_findings")
    con.execute("drop table run_summary_findings")
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# radlint audit `{summary.get('run_id')}`", ""]
    lines.append(f"Status: **{summary.get('status')}** — listed {summary.get('n_listed')}, "
                 f"audited {summary.get('n_new')} new objects, {summary.get('n_skipped')} skipped.")
    if summary.get("db"):
        lines.append(f"Database: `{summary['db']}`")
    if summary.get("report"):
        lines.append(f"Review report: `{summary['report']}`")
    lines += ["", "| field | findings | checked | mismatches | unlabelled |", "|---|---:|---:|---:|---:|"]
    for f, c in summary.get("mismatches", {}).items():
        lines.append(f"| {f} | {c.get('findings', '')} | {c['checked']} | {c['mismatch']} | {c['unlabelled']} |")
    if summary.get("mismatches"):
        lines += ["", CHECKED_MEANING + "."]
    adaptation = summary.get("lake_adaptation") or {}
    if adaptation:
        lines += ["", "Lake adaptation (images per task by how their lake probability was made; "
                  "`generic:REASON` = no probe, the generic model decides):", ""]
        for task, methods in adaptation.items():
            lines.append(f"- {task}: " + ", ".join(f"{m} {n}" for m, n in sorted(methods.items())))
    lines += ["", "| table | rows |", "|---|---:|"]
    for t, n in summary.get("tables", {}).items():
        lines.append(f"| {t} | {n} |")
    top = summary.get("top_suspects") or []
    if top:
        # The suggestion, not the generic model's class: where the lake probe decided the flag the
        # two differ (an orientation the generic model calls upright, flagged as a half turn).
        lines += ["", "## Top suspects", "", "| severity | field | label | suggested | basis | uri |",
                  "|---:|---|---|---|---|---|"]
        for s in top:
            lines.append(
                f"| {s['severity']} | {s['field']} | {s['header_class']} | "
                f"{s.get('suggested_correction') or s.get('predicted_class')} | {s.get('flag_basis') or ''} | {s['uri']} |"
            )
    return "\n".join(lines) + "\n"


def export_corrections(con, out: str | Path, min_severity: float = 0.0) -> int:
    """Write one CSV row per mismatch (the fields a PACS/RIS administrator needs); returns rows."""
    cur = con.execute(
        """
        select f.uri, f.sop_instance_uid, i.study_instance_uid, i.series_instance_uid, f.field,
               f.header_value as current_value, f.header_class as current_class,
               f.suggested_correction, round(f.predicted_prob::double, 4) as confidence,
               round(f.severity::double, 4) as severity, f.flag_basis,
               round(f.lake_label_prob::double, 4) as lake_label_prob, f.label_source, f.model, f.run_id
        from findings as f
        join images as i on i.uri = f.uri and i.run_id = f.run_id
        where f.is_mismatch and f.severity >= ?
        order by f.severity desc, f.uri, f.field
        """,
        [min_severity],
    )
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows([spreadsheet_safe(v) for v in row] for row in rows)
    return len(rows)


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` with a single quote in front when it is text a spreadsheet would run as a formula
    (header values and uris come from the lake, so anyone who can write a DICOM file chooses them).
    Numbers are left alone: they are never text here, so numeric columns stay numeric."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
