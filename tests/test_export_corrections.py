"""`radlint export-corrections` writes no cell a spreadsheet would run as a formula (issue 22 item 7)."""

from __future__ import annotations

import csv
from datetime import datetime, timezone

from radlint.tasks import database, findings

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
FORMULA = '=HYPERLINK("http://x","y")'


def _database_with_hostile_headers(path) -> None:
    con = database.connect(path)
    try:
        database.ensure_schema(con)
        database.create_views(con)
        con.executemany("insert into thresholds values ('m', 'sha', 'body_part', ?, 0.6)",
                        [[c] for c in ("head", "lower_limb")])
        for uri, sop, study, bpe in [("s3://b/1", "@SUM(1)", "+1.2.3", FORMULA), ("s3://b/2", "1.2.4", "-1.2", "\tSKULL")]:
            con.execute(
                "insert into images (uri, etag, sop_instance_uid, study_instance_uid, series_instance_uid, "
                "body_part_examined, label_body_part, label_body_part_source, audited_at, run_id) "
                "values (?, 'e1', ?, ?, '\r1.9', ?, 'head', 'BodyPartExamined', ?, 'r1')",
                [uri, sop, study, bpe, T0],
            )
            con.execute(
                "insert into predictions (uri, etag, task, predicted, probability, probabilities, model, "
                "model_sha256, predicted_at, run_id) values (?, 'e1', 'body_part', 'lower_limb', 0.9, "
                "map {'lower_limb': 0.9, 'head': 0.1}, 'm', 'sha', ?, 'r1')",
                [uri, T0],
            )
    finally:
        con.close()


def test_spreadsheet_safe_cells():
    assert findings.spreadsheet_safe(FORMULA) == "'" + FORMULA
    for text in ("@SUM(1)", "+1", "-1", "\tx", "\rx", "=1"):
        assert findings.spreadsheet_safe(text) == "'" + text
    assert findings.spreadsheet_safe("CHEST") == "CHEST" and findings.spreadsheet_safe("") == ""
    assert findings.spreadsheet_safe(-0.5) == -0.5 and findings.spreadsheet_safe(None) is None


def test_export_corrections_neutralises_formulas(tmp_path):
    from radlint.cli import main

    db = tmp_path / "hostile.duckdb"
    _database_with_hostile_headers(db)
    out = tmp_path / "corrections.csv"
    assert main(["export-corrections", "--db", str(db), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8", newline="")))
    assert len(rows) == 2
    by_uri = {r["uri"]: r for r in rows}
    assert by_uri["s3://b/1"]["current_value"] == "'" + FORMULA
    assert by_uri["s3://b/1"]["sop_instance_uid"] == "'@SUM(1)"
    assert by_uri["s3://b/1"]["study_instance_uid"] == "'+1.2.3"
    assert by_uri["s3://b/2"]["study_instance_uid"] == "'-1.2"
    assert by_uri["s3://b/2"]["current_value"] == "'\tSKULL"
    assert by_uri["s3://b/2"]["series_instance_uid"] == "'\r1.9"
    for row in rows:
        assert not any(str(v).startswith(findings.FORMULA_PREFIXES) for v in row.values()), row
        # Numeric columns stay plain numbers.
        assert float(row["confidence"]) == 0.9 and float(row["severity"]) == 0.9
        assert row["suggested_correction"] == "lower_limb"
