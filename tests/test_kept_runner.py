"""The kept runner (radlint/kept_runner.py): a later `radlint audit` in the same environment runs in a
child forked from the first call's runner, with the same result, exit status and output as in its
own process; another environment is not served by it; Ctrl-C and a killed caller stop the child."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from radlint import kept_client
from radlint.interrupt import MESSAGE
from tests.test_resilience import no_duplicates, slow_lake, wait_for_parts
from tests.test_s3 import _rows

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kept runner is Linux only")


@pytest.fixture
def runner_env(prefect_api):
    """An environment whose calls may leave a runner, with a private TMPDIR short enough for a
    socket path; every runner started in it is stopped afterwards."""
    short = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    env = dict(os.environ, TMPDIR=str(short), RADLINT_PREFECT_SERVER_IDLE="120", RADLINT_PATIENT_SALT="test-salt")
    env.pop(kept_client.SWITCH_ENV, None)
    folder = short / f"radlint-{os.getuid()}"
    try:
        yield env, folder
    finally:
        for pid in runner_pids(folder):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(short, ignore_errors=True)


def runner_pids(folder: Path) -> list[int]:
    pids = []
    for lock in folder.glob("*.lock"):
        text = lock.read_text().strip()
        if text.isdigit() and psutil.pid_exists(int(text)):
            pids.append(int(text))
    return pids


def wait_for_runners(folder: Path, n: int, timeout: float = 120) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        socks = sorted(folder.glob("*.sock"))
        if len(socks) >= n:
            return socks
        time.sleep(0.2)
    logs = "\n".join(p.read_text() for p in folder.glob("*.log")) if folder.exists() else ""
    raise AssertionError(f"{n} runner(s) did not start within {timeout} s; logs: {logs[-2000:]}")


def wait_listening(sock: Path, not_pid: int = 0, timeout: float = 120) -> int:
    """The pid of the runner that last started listening at ``sock`` (not ``not_pid``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(r"kept runner (\d+): listening", sock.with_suffix(".log").read_text())
        if found and int(found[-1]) != not_pid:
            return int(found[-1])
        time.sleep(0.2)
    raise AssertionError(f"no new runner listened at {sock} within {timeout} s")


def calls_served(sock: Path) -> list[int]:
    """The pids of the children the runner at ``sock`` forked, from its log."""
    return [int(m) for m in re.findall(r": call \d+: child (\d+)", sock.with_suffix(".log").read_text())]


def audit(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radlint.cli", "audit", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_image_lake(folder: Path, make_dicom) -> Path:
    folder.mkdir()
    (folder / "img.dcm").write_bytes(make_dicom())
    return folder


def stops_within(pid: int, seconds: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout=seconds)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def test_the_next_audit_in_an_environment_runs_in_the_first_calls_runner(tmp_path, make_dicom, tiny_registry,
                                                                           runner_env):
    env, folder = runner_env
    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(5):
        (lake / f"img{i}.dcm").write_bytes(make_dicom(seed=i, patient_id=f"P{i}"))
    (lake / "broken.dcm").write_bytes(b"not dicom")

    first = audit(env, lake, "--db", tmp_path / "first.duckdb", "--registry", tiny_registry)
    assert first.returncode == 0, first.stderr[-3000:]
    [sock] = wait_for_runners(folder, 1)
    assert oct(sock.stat().st_mode & 0o777) == "0o600" and oct(folder.stat().st_mode & 0o777) == "0o700"

    # Served by the runner, through the Dask path (a fork server and worker processes started from
    # the forked child): every table as the first call's, which ran in the flow's own process.
    second = audit(env, lake, "--db", tmp_path / "second.duckdb", "--registry", tiny_registry,
                   "--executor", "dask", "--workers", "2", "--shard-size", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    [child] = calls_served(sock)
    assert "Status: **completed**" in second.stdout and "audited 6 new objects, 1 skipped" in second.stdout
    assert "second.duckdb" in second.stdout
    for table in ("images", "predictions", "skipped", "thumbnails", "embeddings", "labels"):
        assert _rows(tmp_path / "second.duckdb", table) == _rows(tmp_path / "first.duckdb", table), table
    no_duplicates(tmp_path / "second.duckdb")
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE

    # A call that cannot run: its one-line reason on the caller's stderr, and its exit status.
    missing = audit(env, tmp_path / "no-such-lake", "--db", tmp_path / "x.duckdb", "--registry", tiny_registry)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"radlint: lake not found: {tmp_path / 'no-such-lake'}"
    assert len(calls_served(sock)) == 2

    # Another environment (a Prefect setting read when Prefect is imported) is not this runner's:
    # it runs in its own process and leaves a runner of its own.
    other = audit(dict(env, PREFECT_LOGGING_LEVEL="ERROR"), lake, "--db", tmp_path / "other.duckdb",
                  "--registry", tiny_registry)
    assert other.returncode == 0, other.stderr[-3000:]
    assert len(calls_served(sock)) == 2
    assert len(wait_for_runners(folder, 2)) == 2

    # Turned off: no runner serves the call and none is left.
    off = audit(dict(env, RADLINT_KEPT_RUNNER="0"), lake, "--db", tmp_path / "off.duckdb", "--registry", tiny_registry)
    assert off.returncode == 0 and len(calls_served(sock)) == 2

    # SIGTERM stops a runner, which takes its socket with it.
    pid = int(sock.with_suffix(".lock").read_text())
    os.kill(pid, signal.SIGTERM)
    assert stops_within(pid, 30), "the runner did not stop on SIGTERM"
    assert not sock.exists()


def test_a_runner_stops_when_idle_and_a_dead_ones_socket_is_replaced(tmp_path, make_dicom, tiny_registry,
                                                                      runner_env):
    env, folder = runner_env
    lake = one_image_lake(tmp_path / "lake", make_dicom)
    env = dict(env, RADLINT_PREFECT_SERVER_IDLE="3")
    assert audit(env, lake, "--db", tmp_path / "a.duckdb", "--registry", tiny_registry).returncode == 0
    [sock] = wait_for_runners(folder, 1)
    pid = int(sock.with_suffix(".lock").read_text())
    assert stops_within(pid, 60), "the runner did not stop after being idle"
    assert not sock.exists()

    # A runner killed outright leaves its socket file: the next call runs in its own process, and
    # the runner it leaves takes the socket over.
    env = dict(env, RADLINT_PREFECT_SERVER_IDLE="60")
    assert audit(env, lake, "--db", tmp_path / "b.duckdb", "--registry", tiny_registry).returncode == 0
    [sock] = wait_for_runners(folder, 1)
    pid = int(sock.with_suffix(".lock").read_text())
    os.kill(pid, signal.SIGKILL)
    assert stops_within(pid, 10) and sock.exists()
    done = audit(env, lake, "--db", tmp_path / "c.duckdb", "--registry", tiny_registry)
    assert done.returncode == 0, done.stderr[-3000:]
    assert calls_served(sock) == []
    new_pid = wait_listening(sock, not_pid=pid)
    assert audit(env, lake, "--db", tmp_path / "d.duckdb", "--registry", tiny_registry).returncode == 0
    assert len(calls_served(sock)) == 1
    assert int(sock.with_suffix(".lock").read_text()) == new_pid


@pytest.mark.slow
def test_ctrl_c_reaches_the_runners_child_and_a_killed_caller_stops_it(tmp_path, make_dicom, tiny_registry,
                                                                        runner_env):
    env, folder = runner_env
    small = one_image_lake(tmp_path / "small", make_dicom)
    assert audit(env, small, "--db", tmp_path / "warm.duckdb", "--registry", tiny_registry).returncode == 0
    [sock] = wait_for_runners(folder, 1)
    lake = tmp_path / "lake"
    slow_lake(lake, make_dicom)

    def start(name: str) -> tuple[subprocess.Popen, Path, Path]:
        db, out = tmp_path / f"{name}.duckdb", tmp_path / f"{name}_parts"
        err = open(tmp_path / f"{name}.err", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "radlint.cli", "audit", str(lake), "--db", str(db), "--out", str(out),
             "--registry", str(tiny_registry), "--shard-size", "2", "--executor", "local"],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=err, env=env)
        err.close()
        wait_for_parts(out, 2)
        return proc, db, out

    # Ctrl-C at the caller's terminal: the child stops as an audit in its own process does.
    proc, db, _ = start("interrupted")
    child = calls_served(sock)[-1]
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    err = (tmp_path / "interrupted.err").read_text()
    assert err.strip().splitlines()[-1] == MESSAGE and "Traceback" not in err, err[-3000:]
    assert stops_within(child, 10)

    # The caller killed outright: its child notices the closed socket and stops too.
    proc, db, out = start("killed")
    child = calls_served(sock)[-1]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert stops_within(child, 30), "the child of a killed caller kept running"
    done = audit(env, lake, "--db", db, "--out", out, "--registry", tiny_registry, "--shard-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    no_duplicates(db)


def test_the_environment_key_follows_import_time_settings_and_leaves_secrets_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin"}
    key = kept_client.environment_key(base)
    assert kept_client.environment_key(dict(base, PATH="/bin")) == key  # not read at import
    for secret in ("AWS_SECRET_ACCESS_KEY", "RADLINT_PATIENT_SALT", "PREFECT_API_KEY"):
        assert kept_client.environment_key(dict(base, **{secret: "s3cr3t"})) == key, secret
    assert kept_client.environment_key(dict(base, PREFECT_API_URL="http://127.0.0.1:1/api")) != key
    assert kept_client.environment_key(dict(base, DASK_DISTRIBUTED__WORKER__DAEMON="False")) != key
    assert kept_client.environment_key(base, cwd=str(tmp_path / "elsewhere")) != key
    (tmp_path / "prefect.toml").write_text("[logging]\nlevel = 'ERROR'\n")  # Prefect reads it at import
    assert kept_client.environment_key(base) != key


def test_a_runner_call_answers_before_it_drains_and_its_logs_still_reach_the_kept_server(
        tmp_path, make_dicom, tiny_registry, runner_env):
    """With radlint's kept Prefect server, a runner's child answers its caller first and drains
    Prefect's log worker into the server afterwards: the flow run's logs are all there."""
    import json
    import urllib.request

    env, folder = runner_env
    home = tmp_path / "prefect_home"
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="INFO")
    lake = one_image_lake(tmp_path / "lake", make_dicom)
    try:
        assert audit(env, lake, "--db", tmp_path / "a.duckdb", "--registry", tiny_registry).returncode == 0
        [sock] = wait_for_runners(folder, 1)
        served = audit(env, lake, "--db", tmp_path / "b.duckdb", "--registry", tiny_registry)
        assert served.returncode == 0, served.stderr[-3000:]
        assert len(calls_served(sock)) == 1
        url = json.loads((home / "radlint-server.json").read_text())["url"]

        def post(path: str, body: dict) -> list:
            req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        runs = [r for r in post("/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 10})
                if r["name"] and r["parameters"].get("db", "").endswith("b.duckdb")]
        assert len(runs) == 1 and runs[0]["state_type"] == "COMPLETED"
        deadline = time.monotonic() + 30  # the drain runs after the answer: give it a moment
        while time.monotonic() < deadline:
            logs = post("/logs/filter", {"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}, "limit": 200})
            if any("listed 1 objects" in log["message"] for log in logs):
                break
            time.sleep(0.5)
        assert any("listed 1 objects" in log["message"] for log in logs), [log["message"] for log in logs]
    finally:
        state = home / "radlint-server.json"
        if state.exists():
            with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
                os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)


def test_a_temporary_folder_too_long_for_a_socket_gives_way_to_tmp(tmp_path, monkeypatch):
    long = tmp_path / ("x" * 90)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    path = kept_client.socket_path("k" * 24)
    assert path == Path("/tmp") / f"radlint-{os.getuid()}" / f"{'k' * 24}.sock"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if len(str(tmp_path)) < 60:
        assert kept_client.socket_path("k" * 24).parent.parent == tmp_path
