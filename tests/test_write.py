"""tasks.parts and tasks.database: atomic parts, their schemas against the DDL, idempotent loads, schema
version and migration of older databases."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from radlint.tasks import database, parts

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


def skipped_row(uri, reason="not_dicom"):
    return {"uri": uri, "etag": "e", "size_bytes": 1, "reason": reason, "detail": "", "skipped_at": NOW, "run_id": "r"}


def write_part(rows, out_dir, kind, run_id, shard_id):
    writer = parts.PartWriter(out_dir, kind, run_id, shard_id)
    writer.extend(rows)
    return writer.close()


@pytest.mark.parametrize("kind", parts.KINDS)
def test_part_schema_is_the_table_ddl_column_by_column(kind):
    """A part's Arrow schema is its table in sql/tables: the same columns, in order, of the same
    types (as DuckDB hands the table to Arrow), so that a load never casts or drops a column."""
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")  # DuckDB gives TIMESTAMPTZ the session's zone in Arrow
        database.ensure_schema(con)
        table = con.sql(f'select * from "{kind}" limit 0').to_arrow_table().schema
    finally:
        con.close()
    declared = [(f.name, _type_name(f.type)) for f in parts.SCHEMAS[kind]]
    assert declared == [(f.name, _type_name(f.type)) for f in table]


def _type_name(t) -> str:
    """An Arrow type by what it holds: a list's item field name (DuckDB calls it ``l``) is no difference."""
    import pyarrow as pa

    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{_type_name(t.key_type)}, {_type_name(t.item_type)}>"
    return str(t)


def test_every_part_kind_has_a_schema_and_a_load_key():
    assert set(parts.SCHEMAS) == set(parts.KINDS) == set(database.LOAD_KEYS)


def test_write_part_path_and_atomicity(tmp_path):
    path = write_part([skipped_row("file:///a")], tmp_path, "skipped", "run-1", "00003")
    assert path == tmp_path / "skipped" / "run_id=run-1" / "part-00003.parquet"
    assert pq.read_table(path).num_rows == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_part_writer_streams_row_groups_and_publishes_only_on_close(tmp_path):
    writer = parts.PartWriter(tmp_path, "skipped", "run-1", "00001", row_group_rows=3)
    writer.extend(skipped_row(f"file:///{i}") for i in range(7))
    assert len(writer.rows) == 1  # two full row groups already went to the temporary file
    assert not writer.final.exists() and writer.tmp.exists()
    path = writer.close()
    assert path == writer.final and not writer.tmp.exists()
    meta = pq.ParquetFile(path).metadata
    assert (meta.num_rows, meta.num_row_groups) == (7, 3)
    assert pq.read_table(path).column("uri").to_pylist() == [f"file:///{i}" for i in range(7)]


def test_part_writer_abort_and_empty_parts_leave_nothing(tmp_path):
    aborted = parts.PartWriter(tmp_path, "skipped", "run-1", "00002", row_group_rows=2)
    aborted.extend(skipped_row(f"file:///{i}") for i in range(5))
    aborted.abort()
    assert parts.PartWriter(tmp_path, "skipped", "run-1", "00003").close() is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_load_is_idempotent(tmp_path):
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    database.ensure_schema(con)
    p1 = write_part([skipped_row("file:///a"), skipped_row("file:///b")], tmp_path, "skipped", "r1", "0")
    p2 = write_part([skipped_row("file:///b"), skipped_row("file:///c")], tmp_path, "skipped", "r2", "0")
    assert database.load_and_record(con, {"skipped": [str(p1)]})["skipped"] == 2
    assert database.load_and_record(con, {"skipped": [str(p1), str(p2)]})["skipped"] == 1
    assert con.execute("select count(*) from skipped").fetchone()[0] == 3
    assert database.unloaded_parts(con, tmp_path) == {}
    # fetch errors are retried by the next run; other skips are final for that object version
    con.execute("insert into skipped values ('file:///d', 'e', 1, 'fetch_error', '', now(), 'r')")
    assert ("file:///d", "e") not in database.done_keys(con, ["sha"])
    assert ("file:///a", "e") in database.done_keys(con, ["sha"])


def test_unloaded_parts_of_a_crashed_run_are_found(tmp_path):
    con = duckdb.connect()
    database.ensure_schema(con)
    p = write_part([skipped_row("file:///x")], tmp_path, "skipped", "crashed", "7")
    assert database.unloaded_parts(con, tmp_path) == {"skipped": [str(p.resolve())]}


def test_database_of_previous_schema_is_migrated(tmp_path):
    db = tmp_path / "v1.duckdb"
    old = duckdb.connect(str(db))
    old.execute((Path(__file__).parent / "data" / "schema_v1.sql").read_text())
    old.execute("insert into meta values ('schema_version', '1')")
    old.execute(
        "insert into images (uri, etag, sop_instance_uid, label_body_part, label_body_part_source, body_part_examined, audited_at, run_id) "
        "values ('file:///old.dcm', 'e', '1.2', 'chest', 'BodyPartExamined', 'CHEST', now(), 'r0')"
    )
    old.execute("alter table images drop column study_month")  # an even older column set
    old.close()

    con = database.connect(db)
    database.ensure_schema(con)
    database.create_views(con)
    assert con.execute("select value from meta where key = 'schema_version'").fetchone()[0] == database.SCHEMA_VERSION
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    assert {"thumbnails", "loaded_parts"} <= tables
    assert con.execute("select uri, study_month from images").fetchall() == [("file:///old.dcm", None)]
    assert con.execute("select header_class from findings where field = 'body_part'").fetchall() == [("chest",)]
    con.close()


def test_schema_2_gates_gain_class_thresholds(tmp_path):
    db = tmp_path / "v2.duckdb"
    old = duckdb.connect(str(db))
    old.execute("create table meta (key varchar primary key, value varchar)")
    old.execute("insert into meta values ('schema_version', '2')")
    old.execute(
        "create table gates (model varchar not null, model_sha256 varchar not null, task varchar not null, "
        "min_severity float not null, target_precision float, prevalence float)"
    )
    old.execute("insert into gates values ('m', 's', 'body_part', 0.5, 0.9, 0.1)")
    old.close()
    con = database.connect(db)
    database.ensure_schema(con)
    database.create_views(con)
    assert con.execute("select task, min_severity, class_thresholds from gates").fetchall() == [("body_part", 0.5, None)]
    con.close()


def test_newer_schema_is_refused(tmp_path):
    con = duckdb.connect()
    database.ensure_schema(con)
    con.execute("update meta set value = '999' where key = 'schema_version'")
    with pytest.raises(database.DatabaseError, match="newer"):
        database.ensure_schema(con)


def test_schema_and_views_are_applied_once_and_repaired_when_missing(tmp_path, monkeypatch):
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    database.ensure_schema(con)
    database.create_views(con)
    meta = dict(con.execute("select key, value from meta").fetchall())
    assert meta["tables_sha256"] == database._sql_digest("tables") and meta["views_sha256"] == database._sql_digest("views")

    ran: list[str] = []
    real_execute = duckdb.DuckDBPyConnection.execute

    class Spy:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            ran.append(sql)
            return real_execute(self.con, sql, *args)

    spy = Spy(con)
    database.ensure_schema(spy)
    database.create_views(spy)
    assert not [q for q in ran if q.lstrip().lower().startswith(("create", "--"))], ran  # nothing re-applied

    con.execute("drop view top_suspects")
    con.execute("drop table thumbnails")
    database.ensure_schema(con)
    database.create_views(con)
    assert "thumbnails" in database._tables(con) and "top_suspects" in database._views(con)

    # Changed view SQL (a radlint upgrade) is applied even though the views exist.
    con.execute("create or replace view top_suspects as select 1 as stale")
    con.execute("update meta set value = 'old' where key = 'views_sha256'")
    database.create_views(con)
    assert "stale" not in [r[0] for r in con.execute("describe top_suspects").fetchall()]


def test_thresholds_and_gates_are_replaced_per_model(tmp_path):
    from types import SimpleNamespace

    con = duckdb.connect()
    database.ensure_schema(con)
    spec = SimpleNamespace(classes=["a", "b"], thresholds={"a": 0.7}, min_severity=0.9,
                           gate_policy={"target_precision": 0.95, "prevalence": 0.1}, class_thresholds=False,
                           label_gates={"b": 0.8}, lake_min_severity=0.7, lake_rule="lake", lake_weight=0.7, lake_prior_images=None,
                           lake_distrust_scale=0.3, lake_confusable=("a|b",), lake_confusable_min_severity=0.9)
    for _ in range(2):
        database.load_thresholds(con, "m", "sha", {"body_part": spec})
    assert con.execute("select class, threshold from thresholds order by class").fetchall() == [("a", pytest.approx(0.7)), ("b", 0.5)]
    assert con.execute("select task, min_severity, class_thresholds, lake_distrust_scale, lake_confusable, "
                       "lake_confusable_min_severity from gates").fetchall() == [
        ("body_part", pytest.approx(0.9), False, pytest.approx(0.3), ["a|b"], pytest.approx(0.9))]
    assert con.execute("select task, class, min_severity from label_gates").fetchall() == [("body_part", "b", pytest.approx(0.8))]


def test_manifest_roundtrip(tmp_path):
    from radlint.tasks.discover import ObjectRef

    shards = [[ObjectRef(f"s3://b/{i}", i, f"e{i}") for i in range(k, k + 3)] for k in (0, 3)]
    path = parts.write_manifest(shards, tmp_path, "r9")
    assert path == tmp_path / "manifests" / "run_id=r9.parquet"
    assert parts.read_manifest(path, 1) == shards[1]
    assert parts.read_manifest(path, 0) == shards[0]
    import pyarrow.parquet as pq

    # one row group per shard: a task reads only its own
    assert pq.ParquetFile(path).num_row_groups == len(shards)


def test_has_predictions(tmp_path):
    db = tmp_path / "db.duckdb"
    assert not database.has_predictions(db, "sha-a")  # no database yet
    con = duckdb.connect(str(db))
    database.ensure_schema(con)
    con.execute(
        "insert into predictions (uri, etag, sop_instance_uid, task, predicted, probability, probabilities, model, "
        "model_sha256, predicted_at, run_id) values ('file:///a', 'e', '1.2', 'body_part', 'chest', 0.9, "
        "map {'chest': 0.9}, 'm', 'sha-a', now(), 'r')"
    )
    con.close()
    assert database.has_predictions(db, "sha-a")
    assert not database.has_predictions(db, "sha-b")


def test_parts_and_manifest_on_an_object_store_are_uploaded_whole(tmp_path, monkeypatch):
    """On a store without rename (fsspec's memory store stands in for S3), a part is written on
    local disk and appears under its final key only once complete; the flow reads it back through
    DuckDB's registered fsspec filesystem, and finds it again when a crash left it unloaded."""
    import uuid

    import fsspec

    from radlint.tasks.discover import ObjectRef

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    store = fsspec.filesystem("memory")
    out = f"memory:///parts-{uuid.uuid4().hex}"
    writer = parts.PartWriter(out, "skipped", "r1", "00001", row_group_rows=2)
    writer.extend(skipped_row(f"file:///{i}") for i in range(5))
    assert writer.final == f"{out}/skipped/run_id=r1/part-00001.parquet"
    assert writer.tmp.parent == tmp_path and writer.tmp.exists()
    assert not store.exists(writer.final), "nothing under the final key before close"
    assert writer.close() == writer.final and store.exists(writer.final)
    assert list(tmp_path.iterdir()) == []
    aborted = parts.PartWriter(out, "skipped", "r1", "00002", row_group_rows=2)
    aborted.extend(skipped_row(f"file:///{i}") for i in range(3))
    aborted.abort()
    assert list(tmp_path.iterdir()) == [] and not store.exists(aborted.final)

    shards = [[ObjectRef("s3://b/0", 1, "e0")], [ObjectRef("s3://b/1", 2, "e1")]]
    manifest = parts.write_manifest(shards, out, "r1")
    assert manifest == f"{out}/manifests/run_id=r1.parquet" and list(tmp_path.iterdir()) == []
    assert parts.read_manifest(manifest, 1) == shards[1]

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    database.ensure_schema(con)
    assert database.unloaded_parts(con, out) == {"skipped": [writer.final]}
    assert database.load_and_record(con, database.unloaded_parts(con, out)) == {**dict.fromkeys(parts.KINDS, 0), "skipped": 5}
    assert database.unloaded_parts(con, out) == {}
    assert database.load_and_record(con, {"skipped": [writer.final]})["skipped"] == 0
    assert con.execute("select path from loaded_parts").fetchall() == [(writer.final,)]
    assert parts.local_out(out) is None and parts.local_out(f"file://{tmp_path}") == str(tmp_path)


def test_file_url_out_is_the_local_folder(tmp_path):
    path = write_part([skipped_row("file:///a")], f"file://{tmp_path}", "skipped", "r", "1")
    assert path == tmp_path / "skipped" / "run_id=r" / "part-1.parquet" and path.exists()
    con = duckdb.connect()
    database.ensure_schema(con)
    assert database.unloaded_parts(con, f"file://{tmp_path}") == {"skipped": [str(path.resolve())]}
    assert database.load_and_record(con, {"skipped": [f"file://{path}"]})["skipped"] == 1
    assert database.unloaded_parts(con, tmp_path) == {}
