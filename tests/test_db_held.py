"""A process holding the DuckDB file (a read-only reader, a notebook) is not another audit
(issue 22 item 8): the audit waits for it with --wait-lock, at the start and for the final load,
and otherwise says the database is held by another process."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radlint.cli import main
from radlint.tasks import database
from tests.test_flows import audit_args, build_small_lake, counts

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold(db: Path, seconds: float) -> subprocess.Popen:
    """A reader process with ``db`` open read-only for ``seconds``; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_reader_at_the_start_is_named_as_such(tmp_path, capsys):
    (tmp_path / "lake").mkdir()
    db = tmp_path / "a.duckdb"
    database.connect(db).close()
    reader = hold(db, 30)
    try:
        assert main(["audit", str(tmp_path / "lake"), "--db", str(db)]) == 2
    finally:
        reader.kill()
        reader.wait()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "held by another process" in err and "another audit" not in err, err
    assert f"pid {reader.pid}" in err


@pytest.mark.slow
def test_the_final_load_waits_for_a_reader_with_wait_lock(tmp_path, make_dicom, tiny_registry, prefect_api, monkeypatch):
    from radlint.cli import run_audit
    from radlint.flows import audit_lake as flow_module

    lake = tmp_path / "lake"
    build_small_lake(lake, make_dicom)
    db = tmp_path / "a.duckdb"
    real_finish = flow_module.runs.finish
    held: dict[str, float] = {}

    def finish_while_held(*args, **kwargs):
        # A reader opens the database after the shards, just before the final load.
        reader = hold(db, 3)
        held["at"] = time.monotonic()
        try:
            return real_finish(*args, **kwargs)
        finally:
            held["waited"] = time.monotonic() - held["at"]
            reader.kill()
            reader.wait()

    monkeypatch.setattr(flow_module.runs, "finish", finish_while_held)
    opts = audit_args(str(lake), db, tiny_registry, executor="local")
    with pytest.raises(database.DatabaseError, match="held by another process"):
        run_audit(opts)  # --wait-lock 0: the run stops; its parts stay for the next run

    summary = run_audit(dataclasses.replace(opts, lock_wait_seconds=30))
    assert summary["status"] == "completed" and held["waited"] >= 2.5
    assert counts(db)["images"] == 12
