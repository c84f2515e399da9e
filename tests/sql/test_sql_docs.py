"""Every column of every table and view in sql/ is documented in its file."""

from __future__ import annotations

import re

import duckdb
import pytest

from radlint.tasks import database

FILES = database.sql_files("tables") + database.sql_files("views")


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    database.ensure_schema(c)
    database.create_views(c)
    yield c
    c.close()


def _object_name(sql: str) -> str:
    m = re.search(r"create\s+(?:or\s+replace\s+)?(?:table|view)\s+(?:if\s+not\s+exists\s+)?(\w+)", sql, re.I)
    assert m, "no create table/view statement"
    return m.group(1)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_column_documented(con, path):
    sql = path.read_text()
    assert re.search(r"^-- table-description: \S", sql, re.M), f"{path.name}: no table-description header"
    name = _object_name(sql)
    columns = [r[0] for r in con.execute(f"describe {name}").fetchall()]
    assert columns
    missing = [c for c in columns if not re.search(rf"^-- {re.escape(c)}: \S", sql, re.M)]
    assert not missing, f"{path.name}: columns without a '-- column: description' line: {missing}"


def test_contract_columns_present(con):
    contract = {
        "images": "uri etag size_bytes sop_instance_uid study_instance_uid series_instance_uid patient_key modality "
        "body_part_examined view_position patient_orientation series_description protocol_name study_description "
        "institution_name manufacturer rows columns photometric_interpretation transfer_syntax_uid header_json run_id",
        "predictions": "uri sop_instance_uid task predicted probability probabilities model model_sha256 run_id",
        "findings": "uri sop_instance_uid field header_value header_class predicted_class predicted_prob "
        "header_class_prob is_mismatch severity suggested_correction lake_label_prob flag_basis",
        "skipped": "uri reason detail run_id",
        "runs": "run_id started_at finished_at lake",
        "embeddings": "uri etag model_sha256 vector",
        "lake_predictions": "uri etag task probabilities method fallback_reason model_sha256 fitted_run_id",
        "group_findings": "field dimension group_value header_class predicted_class n_images n_disagree "
        "share_disagree is_flagged",
    }
    for table, cols in contract.items():
        have = {r[0] for r in con.execute(f"describe {table}").fetchall()}
        assert set(cols.split()) <= have, (table, set(cols.split()) - have)


def test_readme_table_reference_is_current():
    from tests import tabledoc
    from tests.conftest import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(tabledoc.BEGIN) + len(tabledoc.BEGIN) : readme.index(tabledoc.END)]
    assert block.strip() == tabledoc.table_reference().strip(), "run: python -m tests.tabledoc"
