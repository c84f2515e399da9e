"""What `radlint audit` without PREFECT_API_URL prints at INFO, the level a user sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def audit_output(tmp_path_factory, tiny_registry) -> str:
    from tests.conftest import make_dicom as make_dicom_fixture

    make_dicom = make_dicom_fixture.__wrapped__()
    tmp_path = tmp_path_factory.mktemp("audit_at_info")
    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(3):
        (lake / f"img{i}.dcm").write_bytes(make_dicom(seed=i))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    # INFO: the test session runs Prefect at WARNING
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), RADLINT_PATIENT_SALT="test-salt", PREFECT_LOGGING_LEVEL="INFO")
    proc = subprocess.run(
        [sys.executable, "-m", "radlint.cli", "audit", str(lake), "--db", str(tmp_path / "a.duckdb"),
         "--registry", str(tiny_registry), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def test_no_links_to_the_temporary_server(audit_output):
    """Prefect logs "View at <ui url>/runs/..." per flow run; the temporary server (which has no UI)
    is gone when the audit ends, so such a link would lead nowhere."""
    assert "Beginning flow run" in audit_output  # Prefect's run log is shown ...
    assert "View at" not in audit_output and "/runs/flow-run/" not in audit_output  # ... without links


def test_the_executor_choice_is_logged_without_a_time_estimate(audit_output):
    """The size-based estimate was logged as "estimated 1.5 s of work" for a 12.4 s run."""
    assert "executor auto: local (3 objects" in audit_output
    assert "s of work" not in audit_output and "estimated" not in audit_output


def test_a_server_radlint_starts_is_reused_by_the_next_call_and_stops_when_idle(tmp_path):
    """Two processes in one PREFECT_HOME without PREFECT_API_URL: the second finds the first's
    server (no boot), and the server exits once idle for RADLINT_PREFECT_SERVER_IDLE seconds."""
    home = tmp_path / "prefect_home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), RADLINT_PREFECT_SERVER_IDLE="6")
    code = ("import time; from radlint.flows.prefect_env import prefect_api\n"
            "t = time.perf_counter()\n"
            "with prefect_api() as url:\n"
            "    from prefect.client.orchestration import get_client\n"
            "    with get_client(sync_client=True) as c: c.hello()\n"
            "print(url, round(time.perf_counter() - t, 2))")
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        url, seconds = out.stdout.split()[-2:]
        runs.append((url, float(seconds)))
    assert runs[0][0] == runs[1][0], "the second call used the first call's server"
    assert runs[1][1] < runs[0][1] / 2, runs
    state = json.loads((home / "radlint-server.json").read_text())
    assert state["url"] == runs[0][0]
    pid = state["pid"]
    os.kill(pid, 0)  # still running after both calls ended
    _stops_within(pid, 60, "the kept server did not stop after being idle")
    # A call after it stopped starts a new one, which stays up while that call runs, even through
    # a pause longer than its idle time (the call's keep-alive touches follow the idle time).
    paused = code.replace("with prefect_api() as url:\n", "with prefect_api() as url:\n    time.sleep(5)\n")
    assert paused != code
    out = subprocess.run([sys.executable, "-c", paused], env=dict(env, RADLINT_PREFECT_SERVER_IDLE="2"),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    new_pid = json.loads((home / "radlint-server.json").read_text())["pid"]
    assert new_pid != pid
    # It stops a while after: its idle time, a check period, then Prefect's own shutdown (~2 s here).
    _stops_within(new_pid, 60, "the second kept server did not stop after being idle")


def _stops_within(pid: int, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.kill(pid, 9)
    raise AssertionError(message)


@pytest.mark.parametrize("files, expected", [
    ({}, "default"),
    ({"pyproject.toml": "[project]\nname = 'x'\nurls = {homepage = 'https://x'}\n"}, "default"),
    ({"pyproject.toml": "[tool.prefect]\nhome = '/elsewhere'\n"}, None),
    ({"prefect.toml": "home = '/elsewhere'\n"}, None),
    ({"prefect.toml": "not = toml = at all"}, None),
    ({".env": "PREFECT_HOME=/elsewhere\n"}, None),
    ({"profiles.toml": "[profiles.default]\nPREFECT_HOME = '/elsewhere'\n"}, None),
])
def test_the_home_is_found_without_prefect_only_where_no_settings_file_could_move_it(
        tmp_path, monkeypatch, files, expected):
    """The kept server's files live in PREFECT_HOME, found before Prefect is imported (so the
    server boots during that import): where a settings file could name another home, the answer
    is None and radlint asks Prefect instead."""
    from radlint.flows import prefect_env

    monkeypatch.delitem(sys.modules, "prefect", raising=False)
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    found = prefect_env._home_without_import()
    assert found == (tmp_path / "user" / ".prefect" if expected == "default" else None)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "set"))
    assert prefect_env._home_without_import() == tmp_path / "set"  # the environment wins over files


def test_with_prefect_imported_the_home_always_comes_from_its_settings():
    import prefect  # noqa: F401

    from radlint.flows import prefect_env

    assert prefect_env._home_without_import() is None


@pytest.mark.parametrize("argv, code, says", [
    (["--help"], 0, "usage"),
    (["audit", "/no/such/lake", "--db", "{tmp}/a.duckdb"], 2, "lake not found"),
    (["no-such-command"], 2, "invalid choice"),
])
def test_the_console_script_exits_with_main_s_code_and_flushed_output(tmp_path, argv, code, says):
    """`entry` skips the interpreter's teardown: the exit code and everything printed must
    still come through."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "radlint.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert says in (proc.stdout + proc.stderr)


def test_an_unexpected_error_still_exits_nonzero_with_its_traceback(tmp_path):
    code = ("import sys; import radlint.cli as cli\n"
            "def boom(argv=None): raise RuntimeError('unexpected')\n"
            "cli.main = boom\n"
            "cli.entry()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "RuntimeError: unexpected" in proc.stderr
