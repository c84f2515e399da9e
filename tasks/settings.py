"""Per-process settings that come from the environment, never from code or prefect.yaml."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

SALT_ENV = "RADLINT_PATIENT_SALT"


class SaltError(RuntimeError):
    """No patient-key salt where a shard worker looks for it."""


def salt_source(db: str | Path) -> str | None:
    """Where shard workers find the salt for ``patient_key``: None when ``RADLINT_PATIENT_SALT``
    is set here (workers read the same variable), else the path of ``<db>.salt`` beside the
    database, created with a random salt (mode 0600) if missing.

    Only this path ever travels to workers, never the salt: whatever a flow or task receives is
    stored in plain text in Prefect's database and logs, where it would make every
    ``patient_key`` reversible.
    """
    if os.environ.get(SALT_ENV):
        return None
    path = Path(str(db) + ".salt")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another audit of the same database created it meanwhile
            return str(path)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
    return str(path)


def read_salt(salt_file: str | Path | None) -> str:
    """The salt, read where it is used (a shard worker): ``RADLINT_PATIENT_SALT`` when set, else
    the contents of ``salt_file``.

    Raises:
        SaltError: when neither gives one (a remote Dask worker without shared disk needs
            ``RADLINT_PATIENT_SALT`` in its environment).
    """
    value = os.environ.get(SALT_ENV)
    if value:
        return value
    if salt_file:
        try:
            value = Path(salt_file).read_text().strip()
        except OSError as exc:
            # The file lies beside the database, on the flow's machine: a worker elsewhere cannot see it.
            raise SaltError(
                f"worker {socket.gethostname()} cannot read the patient-key salt file {salt_file} "
                f"({exc.strerror}): it lies beside the database on the flow's machine; on workers "
                f"without that disk set {SALT_ENV} to one value in the flow's and every worker's environment"
            ) from None
        if value:
            return value
    raise SaltError(f"no patient-key salt on worker {socket.gethostname()}: set {SALT_ENV} in the "
                    "flow's and every worker's environment")


def patient_salt(db: str | Path) -> str:
    """The salt for ``patient_key``.

    From ``RADLINT_PATIENT_SALT`` when set (use the same value across databases to join them);
    otherwise a random salt kept in ``<db>.salt`` (mode 0600) beside the database, so the keys
    of one database stay stable across runs but the salt is not inside the database itself.
    """
    return read_salt(salt_source(db))


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def local_workers(requested: int | None) -> tuple[int, str | None]:
    """(worker processes for a local cluster, a warning or None): ``requested`` (default
    :func:`default_workers`) capped at the core count, where more processes only compete for the
    same cores and each holds its own model and ``max_inflight_bytes`` of objects."""
    cores = os.cpu_count() or 1
    if requested is None:
        return default_workers(), None
    if requested > cores:
        return cores, f"--workers {requested} is more than the {cores} cores here: starting {cores} worker processes"
    return requested, None
