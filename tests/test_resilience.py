"""Crash and resume for real (SIGKILL of the flow and of a Dask worker), and two audits on one database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from radlint.tasks import database
from tests.test_flows import audit_args, counts

pytestmark = pytest.mark.slow

N_IMAGES = 40


def slow_lake(folder: Path, make_dicom, n: int = N_IMAGES) -> None:
    """JPEG 2000 images large enough that a shard takes a noticeable time to decode."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = (rng.random((640, 640)) * 255).astype(np.uint8)
        (folder / f"img{i:03d}.dcm").write_bytes(make_dicom(JPEG2000Lossless, pixels=pixels, patient_id=f"P{i}"))


def no_duplicates(db: Path) -> None:
    con = database.connect(db, read_only=True)
    try:
        for table, key in database.LOAD_KEYS.items():
            dup = con.execute(
                f"select count(*) from (select {', '.join(key)} from {table} group by all having count(*) > 1)"
            ).fetchone()[0]
            assert dup == 0, f"duplicate rows in {table}"
    finally:
        con.close()


def wait_for_parts(out: Path, n: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = len(list((out / "images").rglob("part-*.parquet"))) if out.exists() else 0
        if found >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {n} parts appeared under {out} within {timeout}s")


def test_kill_flow_mid_run_then_resume(tmp_path, make_dicom, tiny_registry, prefect_api):
    from radlint.cli import run_audit

    lake = tmp_path / "lake"
    slow_lake(lake, make_dicom)
    db = tmp_path / "crash.duckdb"
    out = tmp_path / "crash_parts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "radlint.cli", "audit", str(lake), "--db", str(db), "--out", str(out),
         "--registry", str(tiny_registry), "--workers", "1", "--shard-size", "2", "--device", "cpu"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_parts(out, 3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow process and its Dask workers, mid-run
        proc.wait(timeout=30)
    parts_at_kill = len(list((out / "images").rglob("part-*.parquet")))
    assert parts_at_kill < N_IMAGES // 2, "the run finished before it could be killed"
    # A shard renames its images part before its predictions part; the kill can fall in between,
    # and such a shard is read again (done keys come from predictions), so count finished shards
    # by their predictions parts.
    finished_at_kill = len(list((out / "predictions").rglob("part-*.parquet")))

    summary = run_audit(audit_args(str(lake), db, tiny_registry, out=str(out), shard_size=8))
    assert summary["status"] == "completed"
    c = counts(db)
    assert c["images"] == N_IMAGES and c["predictions"] == 3 * N_IMAGES and c["skipped"] == 0
    no_duplicates(db)
    con = database.connect(db, read_only=True)
    try:
        statuses = sorted(r[0] for r in con.execute("select status from runs").fetchall())
        # the killed run is recorded as interrupted; its finished parts were loaded, not re-read
        assert statuses == ["completed", "interrupted"]
        assert summary["n_new"] <= N_IMAGES - 2 * finished_at_kill
        assert finished_at_kill >= parts_at_kill - 1
    finally:
        con.close()


def test_kill_a_dask_worker_mid_shard(tmp_path, make_dicom, tiny_registry, prefect_api):
    from distributed import Client, LocalCluster

    from radlint.cli import run_audit

    lake = tmp_path / "lake"
    slow_lake(lake, make_dicom)
    db = tmp_path / "worker.duckdb"
    out = tmp_path / "worker_parts"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            pids = list(client.run(os.getpid).values())
            killed = {}

            def killer():
                wait_for_parts(out, 2)
                os.kill(pids[0], signal.SIGKILL)
                killed["at"] = len(list((out / "images").rglob("part-*.parquet")))

            t = threading.Thread(target=killer, daemon=True)
            t.start()
            summary = run_audit(
                audit_args(str(lake), db, tiny_registry, out=str(out), shard_size=2, dask_address=cluster.scheduler_address)
            )
            t.join(timeout=60)
            assert "at" in killed and killed["at"] < N_IMAGES // 2
            if summary["status"] != "completed":  # a shard lost with its worker is re-audited by a re-run
                summary = run_audit(audit_args(str(lake), db, tiny_registry, out=str(out), dask_address=cluster.scheduler_address))
            assert summary["status"] == "completed"
    c = counts(db)
    assert c["images"] == N_IMAGES and c["predictions"] == 3 * N_IMAGES
    no_duplicates(db)


def test_second_audit_on_same_database_stops_with_clear_message(tmp_path, tiny_registry):
    db = tmp_path / "busy.duckdb"
    (tmp_path / "lake").mkdir()
    with database.audit_lock(db):
        proc = subprocess.run(
            [sys.executable, "-m", "radlint.cli", "audit", str(tmp_path / "lake"), "--db", str(db),
             "--registry", str(tiny_registry)],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 2
    assert "another audit is running" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_audit_lock_waits_when_asked(tmp_path):
    db = tmp_path / "wait.duckdb"
    released = threading.Event()

    def hold():
        with database.audit_lock(db):
            time.sleep(1.5)
        released.set()

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.3)
    with pytest.raises(database.DatabaseError, match="another audit"):
        with database.audit_lock(db):
            pass
    start = time.monotonic()
    with database.audit_lock(db, wait_seconds=30):
        assert released.is_set() or time.monotonic() - start > 0.5
    t.join()
