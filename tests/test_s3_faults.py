"""Storage faults against the loopback S3 server: retries with backoff complete the run; an object
that stays unreadable becomes a `skipped` row (fetch_error) that the next run tries again."""

from __future__ import annotations

import os

import pytest

from tests.faulty_proxy import INTERNAL, SLOW_DOWN, start_proxy
from tests.test_flows import audit_args, counts

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def plan(n: int, method: str, path: str):
    if "doomed" in path and method == "GET":
        return INTERNAL  # this object stays unreadable
    if n % 7 == 0:
        return SLOW_DOWN
    if n % 11 == 0:
        return INTERNAL
    if n % 13 == 0:
        return "reset"
    if n % 17 == 0:
        return ("delay", 0.5)
    return None


def test_audit_survives_s3_faults(tmp_path, s3_server, make_dicom, tiny_registry, prefect_api, monkeypatch):
    import s3fs

    from radlint.cli import run_audit
    from radlint.tasks import database

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("faulty")
    for i in range(12):
        fs.pipe(f"faulty/img{i:02d}.dcm", make_dicom(seed=i))
    fs.pipe("faulty/doomed.dcm", make_dicom(seed=99))

    proxy, stop, log = start_proxy(s3_server, plan)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy)
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "6")
    try:
        db = tmp_path / "faults.duckdb"
        summary = run_audit(audit_args("s3://faulty", db, tiny_registry, shard_size=5))
        assert summary["status"] == "completed"
        c = counts(db)
        assert c["images"] == 12 and c["predictions"] == 36 and c["skipped"] == 1
        con = database.connect(db, read_only=True)
        try:
            assert con.execute("select regexp_extract(uri, '[^/]+$'), reason from skipped").fetchall() == [
                ("doomed.dcm", "fetch_error")
            ]
        finally:
            con.close()
        assert log.counts.get("503", 0) > 0 and log.counts.get("reset", 0) > 0 and log.counts.get("500", 0) > 0
    finally:
        stop()
    # The store recovers: the next run (straight to the server) reads the doomed object again.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    s3fs.S3FileSystem.clear_instance_cache()  # a new process would build a new client from the environment
    again = run_audit(audit_args("s3://faulty", tmp_path / "faults.duckdb", tiny_registry))
    assert again["n_new"] == 1
    assert counts(tmp_path / "faults.duckdb")["images"] == 13
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server
