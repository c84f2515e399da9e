"""What an audit must never keep: the patient-key salt (issue 22 item 1) and identifiers (item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from radlint.tasks import dicom_io, settings, write


def _files_containing(root: Path, needle: bytes, skip: tuple[Path, ...] = ()) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path not in skip and needle in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


def _cli_audit(lake: Path, db: Path, registry: Path, prefect_home: Path, salt: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", settings.SALT_ENV)}
    env["PREFECT_HOME"] = str(prefect_home)
    # Prefect's own logs to the API and to the console, so that a salt logged anywhere is found.
    env["PREFECT_LOGGING_LEVEL"] = "DEBUG"
    if salt is not None:
        env[settings.SALT_ENV] = salt
    return subprocess.run(
        [sys.executable, "-m", "radlint.cli", "audit", str(lake), "--db", str(db), "--registry", str(registry),
         "--device", "cpu", "--executor", "dask", "--workers", "2", "--shard-size", "2"],
        capture_output=True, timeout=600, env=env,
    )


def _patient_keys(db: Path) -> dict[str, str]:
    con = write.connect(db, read_only=True)
    try:
        return dict(con.execute("select regexp_extract(uri, '[^/]+$'), patient_key from images").fetchall())
    finally:
        con.close()


@pytest.mark.slow
def test_salt_never_reaches_prefect_or_logs_with_dask(tmp_path, make_dicom, tiny_registry):
    """The salt file's and the environment's salt both stay out of Prefect's database (the flow's
    and tasks' parameters), PREFECT_HOME, the logs and the outputs; keys depend only on the salt."""
    lake = tmp_path / "lake"
    lake.mkdir()
    ids = {f"i{i}.dcm": f"PID-{i:08d}" for i in range(4)}
    for i, (name, pid) in enumerate(ids.items()):
        (lake / name).write_bytes(make_dicom(seed=i, patient_id=pid))
    home = tmp_path / "prefect-home"

    # 1. No RADLINT_PATIENT_SALT: a random salt is created in <db>.salt and only its path travels.
    db = tmp_path / "file-salt.duckdb"
    proc = _cli_audit(lake, db, tiny_registry, home, salt=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    salt_file = Path(str(db) + ".salt")
    assert salt_file.stat().st_mode & 0o777 == 0o600
    salt = salt_file.read_text().strip()
    keys = _patient_keys(db)
    assert keys == {name: dicom_io.patient_key(pid, salt) for name, pid in ids.items()}

    # 2. The same salt from the environment gives the same keys in another database.
    env_db = tmp_path / "env-salt.duckdb"
    proc2 = _cli_audit(lake, env_db, tiny_registry, home, salt=salt)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert not Path(str(env_db) + ".salt").exists()
    assert _patient_keys(env_db) == keys

    needle = salt.encode()
    assert any(home.rglob("*.db")), "Prefect's database is expected under PREFECT_HOME"
    # The scan sees the task parameters: the salt file's path, which travels in their place, is there.
    assert _files_containing(home, str(salt_file).encode())
    assert _files_containing(home, needle) == []
    assert _files_containing(tmp_path, needle, skip=(salt_file,)) == []
    for p in (proc, proc2):
        assert needle not in p.stdout and needle not in p.stderr
