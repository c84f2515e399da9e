"""The temporary Prefect API of a `radlint audit` without PREFECT_API_URL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_audit_prints_no_links_to_its_temporary_server(tmp_path, make_dicom, tiny_registry):
    """Prefect logs "View at <ui url>/runs/..." per flow run; the temporary server (which has no UI)
    is gone when the audit ends, so such a link would lead nowhere."""
    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(3):
        (lake / f"img{i}.dcm").write_bytes(make_dicom(seed=i))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    # INFO: the level a user sees (the test session runs Prefect at WARNING)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), RADLINT_PATIENT_SALT="test-salt", PREFECT_LOGGING_LEVEL="INFO")
    proc = subprocess.run(
        [sys.executable, "-m", "radlint.cli", "audit", str(lake), "--db", str(tmp_path / "a.duckdb"),
         "--registry", str(tiny_registry), "--executor", "local", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Beginning flow run" in out  # Prefect's run log is shown ...
    assert "View at" not in out and "/runs/flow-run/" not in out  # ... without links to the server
