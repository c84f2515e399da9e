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
