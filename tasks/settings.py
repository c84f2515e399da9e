"""Per-process settings that come from the environment, never from code or prefect.yaml."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SALT_ENV = "RADLINT_PATIENT_SALT"


def patient_salt(db: str | Path) -> str:
    """The salt for ``patient_key``.

    From ``RADLINT_PATIENT_SALT`` when set (use the same value across databases to join them);
    otherwise a random salt kept in ``<db>.salt`` (mode 0600) beside the database, so the keys
    of one database stay stable across runs but the salt is not inside the database itself.
    """
    value = os.environ.get(SALT_ENV)
    if value:
        return value
    path = Path(str(db) + ".salt")
    if path.exists():
        return path.read_text().strip()
    salt = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(salt + "\n")
    return salt


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
