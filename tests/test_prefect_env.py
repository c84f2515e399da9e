"""What `radlint audit` without PREFECT_API_URL prints at INFO, the level a user sees."""

from __future__ import annotations

import os
import subprocess
import sys

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
