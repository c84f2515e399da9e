"""The order of suspects is written once (tasks.findings.SUSPECT_ORDER): the top_suspects view ranks
by it, and the run summary and the report list suspects in the view's rank order."""

from __future__ import annotations

from importlib.resources import files

import duckdb

from radlint.tasks import findings


def test_the_view_ranks_by_suspect_order():
    sql = files("radlint.sql").joinpath("views/top_suspects.sql").read_text()
    assert f"row_number() over (order by {findings.SUSPECT_ORDER}) as rank" in " ".join(sql.split())


def test_summary_lists_suspects_in_the_views_rank_order():
    con = duckdb.connect()
    con.execute("""create table f as select * from (values
        ('a', 'body_part', 0.9, 0.8, true), ('b', 'body_part', 0.9, 0.9, true), ('c', 'orientation', null, 0.99, true),
        ('d', 'body_part', 0.99, 0.5, true), ('e', 'body_part', 0.99, 0.5, false), ('a', 'orientation', 0.9, 0.8, true))
        as t(uri, field, severity, predicted_prob, is_mismatch)""")
    con.execute("alter table f add column header_value varchar; alter table f add column header_class varchar;"
                "alter table f add column predicted_class varchar; alter table f add column suggested_correction varchar;"
                "alter table f add column flag_basis varchar")
    got = [(r["uri"], r["field"]) for r in findings.top_suspects(con, 10, source="f")]
    expected = con.execute(f"select uri, field from f where is_mismatch order by {findings.SUSPECT_ORDER}").fetchall()
    assert got == expected == [("d", "body_part"), ("b", "body_part"), ("a", "body_part"), ("a", "orientation"),
                               ("c", "orientation")]


def test_summary_shows_the_suggestion_and_the_basis_that_decided_a_flag():
    # The lake probe flags a half turn the generic model calls upright: "upright -> upright" would
    # be no help to the reader.
    text = findings.summary_markdown({"run_id": "r", "top_suspects": [
        {"severity": 1.0, "field": "orientation", "header_class": "upright", "predicted_class": "upright",
         "predicted_prob": 0.97, "suggested_correction": "rot180", "flag_basis": "lake", "uri": "s3://b/k.dcm"}]})
    assert "| severity | field | label | suggested | basis | uri |" in text
    assert "| 1.0 | orientation | upright | rot180 | lake | s3://b/k.dcm |" in text
