"""A process that keeps `radlint audit`'s imports loaded between calls and forks one child per call.

    python -m radlint.kept_runner --socket PATH --idle SECONDS

Importing Prefect, the flow and what it reads and infers with takes 1.6-3.4 s on 2 cores: most of a
small audit's call once a Prefect server is up (bench/README.md, "Fixed cost"). The first
``radlint audit`` in an environment runs in its own process as always, then leaves this runner
behind; a later call in the same environment hands its arguments, working folder, environment and
standard streams to the runner over a Unix socket, and the runner forks a child that runs the call
exactly as ``radlint.cli.main`` would, writing to the caller's terminal. The caller waits for the
child's exit status, which it returns as its own, and passes Ctrl-C and SIGTERM on to the child; a
caller that dies takes its child with it (the child treats the closed socket as a Ctrl-C).

Each call forks from the same freshly imported process, so no state passes from one call to the
next. What a module reads from the environment or the working folder when it is imported (Prefect's
settings, Dask's and fsspec's configuration) is fixed in the runner, so a runner serves only calls
whose such inputs equal its own: the socket's name is a hash of them (``radlint.kept_client.environment_key``); any other
call runs in its own process and starts a runner for its own environment. Variables that name
secrets are left out of the hash (they are only read when used, from the child's environment).

What a child does not share with its caller: resource limits (``ulimit``) and process group (the
child is the runner's, so Ctrl-Z stops only the caller), and the child shows in ``ps`` under the
runner's command line.

The runner stops after ``SECONDS`` without a call (RADLINT_PREFECT_SERVER_IDLE, the kept Prefect
server's idle time; 0 turns both off), when another runner takes its socket, or on SIGTERM. RADLINT_KEPT_RUNNER=0
turns only the runner off. Linux only (fork, SO_PEERCRED); elsewhere every call runs in its own
process. Only this user's processes can connect: a private folder, and the peer's uid is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from radlint.kept_client import COMMANDS, HEADER

# What the runner imports before it takes calls: the flow and everything a shard or the lake
# adaptation imports on first use (several only where a lake needs them: a second shard, 30+ images).
WARM_MODULES = (
    "radlint.cli",
    "radlint.flows.audit_lake",
    "radlint.tasks.adapt",
    "radlint.tasks.findings",
    "radlint.tasks.shard",
    "fastapi.encoders",  # Prefect serialises a flow's parameters with it, imported on the first run
    "pydicom",
    "onnxruntime",
    "duckdb",
    "pyarrow.parquet",
    "sklearn.decomposition",
    "sklearn.linear_model",
    "sklearn.neighbors",
    "sklearn.preprocessing",
    "prefect_dask",
    "distributed",
    "s3fs",
    "PIL.JpegImagePlugin",  # thumbnails
)

_MAX_REQUEST = 16 << 20


def _warm_up() -> None:
    import importlib

    for name in WARM_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    try:
        if len(fds) != 3 or len(data) < HEADER.size:
            raise ValueError("a request carries three streams and a header")
        (size,) = HEADER.unpack_from(data)
        if size > _MAX_REQUEST:
            raise ValueError(f"request of {size} bytes")
        body = bytearray(data[HEADER.size:])
        while len(body) < size:
            chunk = conn.recv(min(1 << 16, size - len(body)))
            if not chunk:
                raise ValueError("the caller closed the socket mid-request")
            body += chunk
        request = json.loads(bytes(body))
        argv = request.get("argv")
        if not isinstance(argv, list) or not argv or argv[0] not in COMMANDS:
            raise ValueError("not a radlint audit call")
    except Exception:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return request, fds


def _run_child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the caller's process, run the call, exit with its status."""
    import atexit

    code = 70  # EX_SOFTWARE, should anything below fail before the call runs
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            with contextlib.suppress(Exception):
                stream.reconfigure(line_buffering=os.isatty(fd))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["argv0"], *request["argv"]]
        answered = threading.Event()
        threading.Thread(target=_follow_caller, args=(conn, answered), name="radlint-caller", daemon=True).start()
        from radlint import cli
        from radlint.flows import prefect_env

        prefect_env.defer_drains()
        try:
            code = cli.main(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        # The call's output and files are complete: the caller returns now, and this process flushes
        # Prefect's logs and events into the server (which outlives the call) and exits as an
        # interpreter does (threading's exit hooks, where Prefect drains its services, then atexit).
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        answered.set()
        _tell(conn, exit=code)
        quiet = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(quiet, target)
        prefect_env.drain_deferred()
        getattr(threading, "_shutdown", lambda: None)()
        atexit._run_exitfuncs()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code if isinstance(code, int) else 1)


def _follow_caller(conn: socket.socket, answered: threading.Event) -> None:
    """A caller that goes away (killed, its terminal closed) before its answer interrupts its child,
    as a Ctrl-C would."""
    with contextlib.suppress(OSError):
        while conn.recv(1 << 10):
            pass
    if not answered.is_set():
        os.kill(os.getpid(), signal.SIGINT)


def _tell(conn: socket.socket, **message: int) -> None:
    """One line of JSON to a caller (``pid``, then ``exit``); one that has gone away misses it."""
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _exit_status(status: int) -> int:
    """What a shell reports for a process that ended with ``status`` (128 + N when killed by signal N)."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def serve(path: Path, idle: float) -> int:
    import fcntl
    import selectors
    import warnings

    lock = open(path.with_suffix(".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another runner for this environment is starting or running
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    with contextlib.suppress(OSError):  # two lines a call, kept across runners: bounded here
        if path.with_suffix(".log").stat().st_size > 1 << 20:
            os.truncate(path.with_suffix(".log"), 0)
    _warm_up()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path.with_name(f".{path.stem}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    listener.bind(str(staging))
    os.chmod(staging, 0o600)
    listener.listen(16)
    os.replace(staging, path)  # bound after the imports: a caller that connects is served at once
    print(f"radlint kept runner {os.getpid()}: listening at {path}", file=sys.stderr, flush=True)
    mine = path.stat().st_ino
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    children: dict[int, socket.socket] = {}
    pidfds: dict[int, int] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    last_call = time.monotonic()
    calls = 0

    def still_mine() -> bool:
        try:
            return path.stat().st_ino == mine
        except OSError:
            return False

    try:
        while not stop.is_set():
            # A child's pidfd becomes readable when it exits: its caller hears at once, not at the next tick.
            events = selector.select(timeout=0.5)
            if any(key.fileobj is listener for key, _ in events):
                conn, _ = listener.accept()
                last_call = time.monotonic()
                try:
                    if _peer_uid(conn) != os.getuid():
                        raise PermissionError("caller of another user")
                    request, fds = _read_request(conn)
                except Exception as exc:
                    print(f"radlint kept runner: refused a call: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                with warnings.catch_warnings():
                    # BLAS and jemalloc keep idle threads; their libraries handle fork (pthread_atfork).
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
                if pid == 0:
                    # Nothing of the runner or of the other calls in flight stays open in a child.
                    for other in [listener, lock, *children.values()]:
                        other.close()
                    for fd in pidfds.values():
                        os.close(fd)
                    selector.close()
                    _run_child(conn, request, fds)
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                with contextlib.suppress(OSError, AttributeError):  # pidfds: Linux 5.3 and later
                    pidfds[pid] = os.pidfd_open(pid)
                    selector.register(pidfds[pid], selectors.EVENT_READ)
                calls += 1
                print(f"radlint kept runner {os.getpid()}: call {calls}: child {pid}", file=sys.stderr, flush=True)
                _tell(conn, pid=pid)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if pid in pidfds:
                    selector.unregister(pidfds[pid])
                    os.close(pidfds.pop(pid))
                code = _exit_status(status)
                print(f"radlint kept runner {os.getpid()}: child {pid} exited {code}", file=sys.stderr, flush=True)
                if conn is not None:
                    _tell(conn, exit=code)
                    conn.close()
                last_call = time.monotonic()
            if not children and (time.monotonic() - last_call > idle or not still_mine()):
                break
    finally:
        if still_mine():
            with contextlib.suppress(OSError):
                path.unlink()
        listener.close()
    for pid, conn in children.items():  # stopped by a signal: the calls in flight end as interrupted
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGINT)
    for pid, conn in children.items():
        with contextlib.suppress(ChildProcessError):
            _, status = os.waitpid(pid, 0)
            _tell(conn, exit=_exit_status(status))
        conn.close()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", required=True, type=Path, help="where to listen (named by environment_key)")
    ap.add_argument("--idle", type=float, required=True, help="seconds without a call before the runner exits")
    args = ap.parse_args(argv)
    return serve(args.socket, args.idle)


if __name__ == "__main__":
    raise SystemExit(main())
