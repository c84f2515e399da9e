"""The audit flow against a real S3-compatible server (SeaweedFS) on 127.0.0.1, through s3fs."""

from __future__ import annotations

import os

import pytest

from radlint.tasks import discover
from tests.test_flows import audit_args, counts

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def test_audit_s3_lake(tmp_path, s3_server, make_dicom, tiny_registry, prefect_api):
    import s3fs

    from radlint.cli import run_audit

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("lake")
    for i in range(6):
        fs.pipe(f"lake/cr/img{i}.dcm", make_dicom(seed=i))
    fs.pipe("lake/cr/broken.dcm", b"not dicom")

    refs = discover.discover("s3://lake/cr")
    assert len(refs) == 7 and all(r.uri.startswith("s3://lake/cr/") for r in refs)
    assert all(len(r.etag) >= 16 for r in refs), "S3 ETags are used as versions"

    db = tmp_path / "s3.duckdb"
    summary = run_audit(audit_args("s3://lake/cr", db, tiny_registry, shard_size=4))
    assert summary["status"] == "completed"
    assert counts(db) == {"images": 6, "predictions": 18, "skipped": 1, "runs": 1}

    again = run_audit(audit_args("s3://lake/cr", db, tiny_registry))
    assert again["n_new"] == 0
    # credentials never end up in the database or the Parquet parts
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    written = [db, *(tmp_path / "s3_parts").rglob("*.parquet")]
    assert len(written) > 3 and not any(secret in p.read_bytes() for p in written)
    # overwrite one object: a new ETag, so only it is read again
    fs.pipe("lake/cr/img0.dcm", make_dicom(seed=50))
    third = run_audit(audit_args("s3://lake/cr", db, tiny_registry))
    assert third["n_new"] == 1
    assert counts(db)["images"] == 7


def test_unreachable_s3_lake_exits_2(tmp_path, s3_server, tiny_registry):
    import os
    import subprocess
    import sys

    # A fresh process, as a user's shell would start: nothing listens on the discard port.
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "radlint.cli", "audit", "s3://lake/cr", "--db", str(tmp_path / "x.duckdb"),
         "--registry", str(tiny_registry)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("radlint: lake not reachable") and len(proc.stderr.strip().splitlines()) == 1


def _rows(db, table: str) -> list[tuple]:
    """A table's rows without the columns that differ between two runs (run ids, timestamps)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        cols = [r[0] for r in con.execute(f"describe {table}").fetchall()
                if not (r[0].endswith("run_id") or r[0].endswith("_at"))]
        return con.execute(f"select {', '.join(cols)} from {table} order by all").fetchall()
    finally:
        con.close()


def test_out_on_s3_matches_a_local_out_and_recovers_orphan_parts(tmp_path, s3_server, make_dicom, tiny_registry,
                                                                prefect_api, monkeypatch):
    import s3fs

    from radlint.cli import run_audit
    from radlint.tasks import database, parts, shard

    # Workers get the salt from their environment, as on a cluster without the flow's disk.
    monkeypatch.setenv("RADLINT_PATIENT_SALT", "test-salt")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("outlake")
    fs.mkdir("outparts")
    for i in range(5):
        fs.pipe(f"outlake/cr/img{i}.dcm", make_dicom(seed=i))
    fs.pipe("outlake/cr/broken.dcm", b"not dicom")

    local_db, s3_db = tmp_path / "local.duckdb", tmp_path / "s3.duckdb"
    assert run_audit(audit_args("s3://outlake/cr", local_db, tiny_registry, executor="local"))["status"] == "completed"
    summary = run_audit(audit_args("s3://outlake/cr", s3_db, tiny_registry, out="s3://outparts/audit", shard_size=3))
    assert summary["status"] == "completed" and summary["out"] == "s3://outparts/audit"
    for table in ("images", "predictions", "skipped", "thumbnails"):
        assert _rows(s3_db, table) == _rows(local_db, table), table
    assert counts(s3_db) == {"images": 5, "predictions": 15, "skipped": 1, "runs": 1}
    # Nothing of the run on the flow's disk: no parts folder, no manifest, no part.
    assert not (tmp_path / "s3_parts").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s3")) == ["s3.duckdb", "s3.duckdb.lock"]
    fs.invalidate_cache()
    assert len(fs.glob("outparts/audit/manifests/run_id=*.parquet")) == 1
    assert len(fs.glob("outparts/audit/images/run_id=*/part-*.parquet")) >= 2
    assert not [k for k in fs.find("outparts/audit") if k.rsplit("/", 1)[-1].startswith(".")]

    # A crash after a shard wrote its parts to S3: they are never loaded by that run.
    fs.pipe("outlake/cr/late.dcm", make_dicom(seed=9))
    late = [r for r in discover.discover("s3://outlake/cr") if r.uri.endswith("late.dcm")]
    assert len(late) == 1, late
    orphan = shard.audit_shard(late, out_dir="s3://outparts/audit", run_id="crashed", shard_id="00000",
                               registry_path=str(tiny_registry), device="cpu")
    assert orphan["n_images"] == 1, "an object that arrived after this process listed the lake is fetched"
    assert orphan["parts"]["images"].startswith("s3://outparts/audit/images/run_id=crashed/")
    recovered = run_audit(audit_args("s3://outlake/cr", s3_db, tiny_registry, out="s3://outparts/audit"))
    assert recovered["n_new"] == 0, "the orphan's object counts as audited once its part is loaded"
    assert counts(s3_db)["images"] == 6 and counts(s3_db)["predictions"] == 18
    con = database.connect(s3_db, read_only=True)
    try:
        assert database.unloaded_parts(con, "s3://outparts/audit") == {}
        loaded = [r[0] for r in con.execute("select path from loaded_parts").fetchall()]
    finally:
        con.close()
    assert len(loaded) == len(set(loaded)) and orphan["parts"]["images"] in loaded
    assert all(p.startswith("s3://outparts/audit/") for p in loaded)
    # and it is loaded exactly once: a further run adds nothing
    again = run_audit(audit_args("s3://outlake/cr", s3_db, tiny_registry, out="s3://outparts/audit"))
    assert again["n_new"] == 0 and counts(s3_db)["images"] == 6
    assert not (tmp_path / "s3_parts").exists()
    assert parts.local_out("s3://outparts/audit") is None


def test_out_under_the_s3_lake_is_not_listed_as_lake_objects(tmp_path, s3_server, make_dicom, tiny_registry,
                                                             prefect_api, monkeypatch):
    import s3fs

    from radlint.cli import run_audit

    monkeypatch.setenv("RADLINT_PATIENT_SALT", "test-salt")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("inlake")
    for i in range(3):
        fs.pipe(f"inlake/cr/img{i}.dcm", make_dicom(seed=i))
    db = tmp_path / "in.duckdb"
    out = "s3://inlake/cr/_radlint_parts"
    first = run_audit(audit_args("s3://inlake/cr", db, tiny_registry, out=out))
    assert first["status"] == "completed" and counts(db)["images"] == 3
    fs.invalidate_cache()
    assert fs.glob("inlake/cr/_radlint_parts/images/run_id=*/part-*.parquet"), "the parts are inside the lake"
    again = run_audit(audit_args("s3://inlake/cr", db, tiny_registry, out=out))
    assert again["n_listed"] == 3 and again["n_new"] == 0
    assert counts(db)["skipped"] == 0, "no part or manifest was audited as a lake object"
