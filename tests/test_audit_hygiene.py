"""Issue 22 item 9: an audit never lists its own files, caps local workers at the core count,
loads a label file once per run without duplicating it, and counts rows it recovered from an
interrupted run's parts in its own totals."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from radlint.tasks import database, discover, labels, settings
from tests.test_flows import audit_args, build_small_lake, counts


def test_the_database_and_its_files_are_not_lake_objects(tmp_path):
    lake = tmp_path / "lake"
    (lake / "cr").mkdir(parents=True)
    (lake / "cr" / "a.dcm").write_bytes(b"x")
    db = lake / "audit.duckdb"
    out = lake / "audit_parts"
    for name in ("audit.duckdb", "audit.duckdb.wal", "audit.duckdb.lock", "audit.duckdb.salt"):
        (lake / name).write_bytes(b"x")
    (out / "images" / "run_id=r").mkdir(parents=True)
    (out / "images" / "run_id=r" / "part-00000.parquet").write_bytes(b"x")
    (lake / "audit.duckdb.other").write_bytes(b"x")  # not one of the database's own files
    listed = {Path(r.uri).name for r in discover.discover(str(lake), exclude=database.own_paths(db, out))}
    assert listed == {"a.dcm", "audit.duckdb.other"}
    # the same through a symbolic link to the lake
    link = tmp_path / "link"
    link.symlink_to(lake)
    listed = {Path(r.uri).name for r in discover.discover(str(link), exclude=database.own_paths(db, out))}
    assert listed == {"a.dcm", "audit.duckdb.other"}


def test_workers_are_capped_at_the_core_count(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert settings.local_workers(None) == (2, None)
    assert settings.local_workers(1) == (1, None)
    n, warning = settings.local_workers(64)
    assert n == 2 and "64" in warning and "2 cores" in warning


def _labels(rows: list[tuple[str, str | None]]) -> pa.Table:
    return pa.table({
        "sop_instance_uid": [k for k, _ in rows], "uri": [None] * len(rows),
        "body_part": [v for _, v in rows], "projection": [None] * len(rows), "orientation": [None] * len(rows),
    })


def test_labels_replace_by_key_instead_of_appending(tmp_path):
    con = database.connect(tmp_path / "a.duckdb")
    try:
        database.ensure_schema(con)
        rows = [(f"1.2.{i}", "chest") for i in range(1000)]
        assert database.load_labels(con, _labels(rows), "l.csv") == 1000
        first = con.execute("select max(loaded_at) from labels").fetchall()[0][0]
        assert database.load_labels(con, _labels(rows), "l.csv") == 0  # the same file: nothing to do
        assert con.execute("select count(*), max(loaded_at) from labels").fetchall() == [(1000, first)]
        rows[7] = ("1.2.7", "knee")
        assert database.load_labels(con, _labels(rows), "l.csv") == 1
        assert con.execute("select count(*) from labels").fetchall() == [(1000,)]
        assert con.execute("select body_part from labels where sop_instance_uid = '1.2.7'").fetchall() == [("knee",)]
        # rows an older radlint appended on every run collapse to the latest per key
        con.execute("insert into labels select uri, sop_instance_uid, 'hand', projection, orientation, source_file, "
                    "loaded_at - interval 1 day from labels")
        assert database.load_labels(con, _labels(rows), "l.csv") == 0
        assert con.execute("select count(*), count(*) filter (body_part = 'hand') from labels").fetchall() == [(1000, 0)]
    finally:
        con.close()


def test_a_label_file_is_read_once_while_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "labels.csv"
    path.write_text("sop_instance_uid,body_part\n1.2.3,chest\n")
    reads = []
    real = labels._read_label_file
    monkeypatch.setattr(labels, "_read_label_file", lambda p: reads.append(p) or real(p))
    first = labels.read_label_file(path)
    assert labels.read_label_file(path) is first and len(reads) == 1
    path.write_text("sop_instance_uid,body_part\n1.2.3,skull\n")
    assert labels.read_label_file(path).column("body_part").to_pylist() != first.column("body_part").to_pylist()
    assert len(reads) == 2


@pytest.mark.slow
def test_db_inside_the_lake_labels_and_recovered_rows(tmp_path, make_dicom, tiny_registry, prefect_api, monkeypatch):
    from radlint.cli import run_audit

    lake = tmp_path / "lake"
    build_small_lake(lake, make_dicom)
    db = lake / "audit.duckdb"  # --db inside the lake, parts beside it
    label_file = tmp_path / "labels.csv"
    label_file.write_text("sop_instance_uid,body_part\n" + "".join(f"1.2.{i},chest\n" for i in range(500)))
    reads = []
    real = labels._read_label_file
    monkeypatch.setattr(labels, "_read_label_file", lambda p: reads.append(p) or real(p))
    opts = audit_args(str(lake), db, tiny_registry, executor="local", labels_file=str(label_file))
    first = run_audit(opts)
    assert first["status"] == "completed" and len(reads) == 1
    second = run_audit(opts)
    assert second["n_new"] == 0 and second["n_listed"] == first["n_listed"] == 15  # 12 images, 3 bad files
    con = database.connect(db, read_only=True)
    try:
        assert con.execute("select count(*) from labels").fetchone()[0] == 500
        assert con.execute("select count(*) from skipped where uri like '%audit%'").fetchone()[0] == 0
    finally:
        con.close()

    # A run killed after its shards wrote parts: the next run loads them and counts them.
    lake2 = tmp_path / "lake2"
    build_small_lake(lake2, make_dicom, n=4)
    db2 = tmp_path / "b.duckdb"
    out2 = tmp_path / "b_parts"
    from radlint.flows import audit_lake as flow_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(flow_module.runs, "finish", killed)
        with pytest.raises(KeyboardInterrupt):
            run_audit(audit_args(str(lake2), db2, tiny_registry, executor="local", out=str(out2)))
    summary = run_audit(audit_args(str(lake2), db2, tiny_registry, executor="local", out=str(out2)))
    assert summary["n_new"] == 0
    con = database.connect(db2, read_only=True)
    try:
        rows = dict(con.execute("select status, n_images from runs").fetchall())
        assert rows == {"interrupted": None, "completed": 4}
        assert con.execute("select sum(n_skipped) from runs").fetchone()[0] == counts(db2)["skipped"] == 3
    finally:
        con.close()
