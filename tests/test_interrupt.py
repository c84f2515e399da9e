"""Ctrl-C and kill -9 of a real `radlint audit` (issue 22 item 6): exit 130 within seconds with one
line, no process left behind, finished parts kept, the run row marked interrupted; a temporary
Prefect server never outlives its audit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from radlint.interrupt import MESSAGE
from radlint.tasks import database
from tests.test_flows import audit_args, counts
from tests.test_resilience import N_IMAGES, no_duplicates, slow_lake, wait_for_parts

pytestmark = pytest.mark.slow


def start_audit(tmp_path: Path, lake: Path, registry: Path, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    db, out = tmp_path / "a.duckdb", tmp_path / "a_parts"
    # No PREFECT_API_URL: the audit starts (and must stop) its own temporary server.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), RADLINT_PATIENT_SALT="test-salt")
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "radlint.cli", "audit", str(lake), "--db", str(db), "--out", str(out),
         "--registry", str(registry), "--shard-size", "2", "--device", "cpu", *extra],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=err, env=env,
    )
    err.close()
    return proc, db, out


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def is_server(p: psutil.Process) -> bool:
    try:
        return "uvicorn" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def wait_gone(procs: list[psutil.Process], timeout: float = 5.0) -> list[int]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive]


def interrupt(proc: subprocess.Popen, out: Path, group: bool) -> tuple[int, float, list[psutil.Process]]:
    try:
        wait_for_parts(out, 2)
        children = descendants(proc.pid)
        assert any(is_server(c) for c in children), "no temporary server was running"
        started = time.monotonic()
        if group:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal
        else:
            os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=30)
        return code, time.monotonic() - started, children
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_interrupted(tmp_path: Path, db: Path, code: int, seconds: float, children: list[psutil.Process]) -> None:
    err = (tmp_path / "stderr.txt").read_text()
    assert code == 130, err[-3000:]
    assert seconds < 15, f"took {seconds:.1f} s to stop"
    assert err.strip().splitlines()[-1] == MESSAGE
    assert err.count(MESSAGE) == 1 and "Traceback" not in err, err[-3000:]
    assert wait_gone(children) == [], "processes left running after the interrupt"
    con = database.connect(db, read_only=True)
    try:
        assert [r[0] for r in con.execute("select status from runs").fetchall()] == ["interrupted"]
    finally:
        con.close()


def test_ctrl_c_to_the_process_group_stops_a_dask_audit(tmp_path, make_dicom, tiny_registry, prefect_api):
    from radlint.cli import run_audit

    lake = tmp_path / "lake"
    slow_lake(lake, make_dicom)
    proc, db, out = start_audit(tmp_path, lake, tiny_registry, "--executor", "dask", "--workers", "2")
    code, seconds, children = interrupt(proc, out, group=True)
    assert_interrupted(tmp_path, db, code, seconds, children)
    finished = len(list((out / "predictions").rglob("part-*.parquet")))
    assert 0 < finished < N_IMAGES // 2, "the run finished before it could be interrupted"

    # The finished parts are kept: the re-run loads them and audits only what is missing.
    summary = run_audit(audit_args(str(lake), db, tiny_registry, out=str(out), shard_size=8))
    assert summary["status"] == "completed"
    assert summary["n_new"] <= N_IMAGES - 2 * finished
    c = counts(db)
    assert c["images"] == N_IMAGES and c["predictions"] == 3 * N_IMAGES
    no_duplicates(db)


def test_ctrl_c_to_the_main_process_only(tmp_path, make_dicom, tiny_registry):
    lake = tmp_path / "lake"
    slow_lake(lake, make_dicom)
    proc, db, out = start_audit(tmp_path, lake, tiny_registry, "--executor", "local")
    code, seconds, children = interrupt(proc, out, group=False)
    assert_interrupted(tmp_path, db, code, seconds, children)


def test_kill_9_takes_the_temporary_server_with_it(tmp_path, make_dicom, tiny_registry):
    lake = tmp_path / "lake"
    slow_lake(lake, make_dicom, n=8)
    proc, _, _ = start_audit(tmp_path, lake, tiny_registry, "--executor", "local")
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while not servers and time.monotonic() < deadline and proc.poll() is None:
            servers = [c for c in descendants(proc.pid) if is_server(c)]
            time.sleep(0.05)
        assert servers, "the audit started no temporary Prefect server"
        os.kill(proc.pid, signal.SIGKILL)  # the audit only: nothing else is signalled
        proc.wait(timeout=10)
        assert wait_gone(servers) == [], "the temporary Prefect server outlived its audit"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        # Only this audit's server: the session's Prefect API (tests/conftest.py) is a uvicorn
        # child of this process too, and later tests need it.
        for p in servers:
            if p.is_running():
                p.kill()
