"""The caller's side of the kept runner (radlint/kept_runner.py): which runner serves this
environment, and handing a `radlint audit` call to it.

Used by the console script (``radlint.cli.entry``) before anything heavy is imported; standard
library only, and the kept Prefect server's settings module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

SWITCH_ENV = "RADLINT_KEPT_RUNNER"
COMMANDS = ("audit",)

# Read by Prefect, Dask, fsspec, NumPy's BLAS, pyarrow or Python itself when they are imported.
_KEY_PREFIXES = ("PREFECT_", "DASK_", "FSSPEC_", "RADLINT_", "PYTHON", "OMP_", "OPENBLAS_", "MKL_",
                 "ARROW_", "LD_", "LC_", "VIRTUAL_ENV", "CONDA_")
_KEY_NAMES = ("HOME", "LANG", "TZ", "TMPDIR", "XDG_CONFIG_HOME", "DO_NOT_TRACK")
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "SALT", "CREDENTIAL")

HEADER = struct.Struct("!I")


def _idle_seconds() -> float:
    """The kept Prefect server's idle time, which the runner shares (0, or a bad value the call
    itself reports: no runner)."""
    from radlint.flows.prefect_env import idle_seconds

    try:
        return idle_seconds()
    except ValueError:
        return 0.0


def _newest_mtime(folders: list[str]) -> float:
    newest = 0.0
    stack = list(folders)
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    newest = max(newest, entry.stat().st_mtime)
    return newest


def _radlint_folders() -> list[str]:
    import importlib.util

    folders: list[str] = []
    for name in ("radlint", "radlint.flows", "radlint.tasks"):
        spec = importlib.util.find_spec(name)
        folders += list(spec.submodule_search_locations or []) if spec else []
    return folders


def environment_key(environ=os.environ, cwd: str | None = None) -> str:
    """A hash of what the runner's imports read from outside: the interpreter, radlint's code, the
    installed packages, the import-time environment variables and Prefect's settings files."""
    import sysconfig

    from radlint.flows.prefect_env import settings_files

    cwd = cwd or os.getcwd()
    env = {k: v for k, v in environ.items()
           if (k.startswith(_KEY_PREFIXES) or k in _KEY_NAMES) and not any(w in k.upper() for w in _SECRET_WORDS)}
    stamps = {}
    for path in [*settings_files(environ, cwd).values(), Path(sysconfig.get_paths()["purelib"])]:
        with contextlib.suppress(OSError):
            st = path.stat()
            stamps[str(path)] = [st.st_mtime_ns, st.st_size]
    blob = json.dumps({"python": [sys.executable, sys.version], "cwd": cwd, "env": sorted(env.items()),
                       "files": stamps, "radlint": _newest_mtime(_radlint_folders())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def runner_folder(base: str) -> Path | None:
    """This user's private folder for runner sockets under ``base``, or None where it cannot be
    made private."""
    folder = Path(base) / f"radlint-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
    except OSError:
        return None
    if not folder.is_dir() or folder.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return folder


def socket_path(key: str) -> Path | None:
    """Where the runner for ``key`` listens: under the temporary folder, or /tmp where that one's
    path is too long for a socket (sun_path holds 108 bytes)."""
    for base in dict.fromkeys([tempfile.gettempdir(), "/tmp"]):
        if len(f"{base}/radlint-{os.getuid()}/{key}.sock".encode()) >= 100:
            continue
        folder = runner_folder(base)
        return folder / f"{key}.sock" if folder is not None else None
    return None


# ---------------------------------------------------------------------------------------------
# The caller's side.


def _stream_fds() -> list[int]:
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:  # a closed standard stream: the child gets /dev/null there
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


class Plan:
    """Where this call's environment's runner listens, and the environment it is keyed on."""

    def __init__(self, path: Path, env: dict[str, str], idle: float):
        self.path, self.env, self.idle = path, env, idle


def plan(argv: list[str]) -> Plan | None:
    """For ``radlint ARGV``: where a runner for this environment listens, or None where this call
    runs in its own process and leaves no runner (not an audit, runners off, no private folder)."""
    if not argv or argv[0] not in COMMANDS or not sys.platform.startswith("linux"):
        return None
    if os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    from radlint.flows.prefect_env import apply_quiet_defaults

    idle = _idle_seconds()
    if idle <= 0:
        return None
    apply_quiet_defaults()  # as the call itself will: a runner's children see what the call would
    try:
        path = socket_path(environment_key())
    except Exception:  # a key that cannot be computed means no runner, never a failed call
        return None
    return Plan(path, dict(os.environ), idle) if path is not None else None


def call(plan: Plan, argv: list[str]) -> int | None:
    """Run ``radlint ARGV`` in the runner's child; the child's exit status, or None where no runner
    answered (the caller runs it itself)."""
    child: list[int] = []
    pending: list[int] = []  # signals that came before the child did: forwarded once it exists

    def forward(signum, frame) -> None:
        if not child:
            pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child[0], signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(plan.path))
            request = json.dumps({"argv": list(argv), "argv0": sys.argv[0], "cwd": os.getcwd(),
                                  "env": plan.env}).encode()
            message = HEADER.pack(len(request)) + request
            sent = socket.send_fds(sock, [message], _stream_fds())
            sock.sendall(message[sent:])
            reader = sock.makefile("rb")
            first = json.loads(reader.readline() or b"{}")
            child.append(int(first["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no runner, or it went away before it forked: the call runs here
        for signum in pending:
            forward(signum, None)
        line = reader.readline()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
        if pending and not child:
            signal.raise_signal(pending[0])  # as if it had come a moment later, to the call itself
    try:
        return int(json.loads(line)["exit"])
    except (ValueError, KeyError, TypeError):
        print("radlint: the kept runner stopped during this call; re-run to finish", file=sys.stderr)
        return 1


def leave_one(plan: Plan) -> None:
    """After a call that ran in its own process: start a runner for its environment (one that
    finds another running or starting exits at once)."""
    try:
        with open(plan.path.with_suffix(".log"), "ab") as log:
            subprocess.Popen([sys.executable, "-m", "radlint.kept_runner", "--socket", str(plan.path),
                              "--idle", str(plan.idle)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=plan.env, start_new_session=True)
    except Exception:
        return  # the call itself succeeded; a runner only speeds up the next one
