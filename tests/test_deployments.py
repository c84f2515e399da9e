"""prefect.yaml for real: a Prefect server on 127.0.0.1, `prefect deploy --all`, a process worker,
and one deployment run to completion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

PREFECT = str(Path(sys.executable).parent / "prefect")


def run(cmd, env, timeout=180):
    proc = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    return proc.stdout


def test_deploy_and_run_nightly_audit(tmp_path, prefect_server, make_dicom, tiny_registry):
    env = prefect_server
    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(4):
        (lake / f"img{i}.dcm").write_bytes(make_dicom(seed=i))
    db = tmp_path / "deployed.duckdb"
    for name, value in (("radlint_lake", str(lake)), ("radlint_db", str(db)), ("radlint_import_prefix", str(lake)),
                        ("radlint_report", str(tmp_path / "report.html"))):
        run([PREFECT, "variable", "set", name, value], env)
    run([PREFECT, "work-pool", "create", "radlint-process", "--type", "process"], env)
    out = run([PREFECT, "--no-prompt", "deploy", "--all"], env, timeout=300)
    for name in ("nightly-full-audit", "hourly-incremental-audit", "report-refresh"):
        assert name in out

    flow_run = run(
        [PREFECT, "deployment", "run", "audit_lake/nightly-full-audit",
         "--param", f"registry={tiny_registry}", "--param", "workers=1"],
        env,
    )
    assert "Created flow run" in flow_run
    worker = subprocess.run(
        [PREFECT, "worker", "start", "--pool", "radlint-process", "--run-once"],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("select count(*) from images").fetchone()[0] == 4
        assert con.execute("select status from runs").fetchall() == [("completed",)]
    finally:
        con.close()

    import re

    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", flow_run).group(1)
    state = httpx.get(env["PREFECT_API_URL"] + f"/flow_runs/{run_id}", timeout=10).json()["state"]["type"]
    assert state == "COMPLETED"
