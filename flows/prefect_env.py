"""Where flows report to: the configured Prefect API, or a local one radlint starts.

With no PREFECT_API_URL, a flow would start its own temporary server, and under the Dask task
runner every worker process would start one more. We start one server here and export its URL, so
the flow process and all Dask workers it spawns report to the same API. It stays up for
RADLINT_PREFECT_SERVER_IDLE seconds (default 600) after the call's last use, so the next call in
this PREFECT_HOME skips its boot, about 4 s on 2 cores (flows/kept_server.py); 0 makes it a temporary server that
stops when the call ends.
"""

from __future__ import annotations

# urllib.request and concurrent.futures are imported where used: every `radlint audit` imports this
# module before it looks for a kept runner (radlint/kept_client.py), and they cost it ~45 ms.
import atexit
import contextlib
import ctypes
import importlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # not on Windows: a temporary server per call there
    fcntl = None

IDLE_ENV = "RADLINT_PREFECT_SERVER_IDLE"
DEFAULT_IDLE_SECONDS = 600.0

QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_UI_ENABLED": "false",
}


def apply_quiet_defaults() -> None:
    """Nothing tries to leave the machine (analytics off); set before Prefect is imported."""
    for k, v in QUIET_DEFAULTS.items():
        os.environ.setdefault(k, v)


@contextlib.contextmanager
def prefect_api(timeout: int = 90, warm_imports: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield the API URL in use; when none is configured, that of a local server radlint keeps
    running between calls (_kept_api), or of a temporary one for this call (idle_seconds() 0).

    ``warm_imports``: modules to import while the server boots (about 4 s to import and start on an
    idle 2-core machine; the flow's own imports take about 2 s, and the two overlap).
    """
    apply_quiet_defaults()
    existing = os.environ.get("PREFECT_API_URL")
    if existing:  # nothing to boot, so nothing to overlap the imports with
        yield existing
        return
    if idle_seconds() > 0 and fcntl is not None:
        with _kept_api(timeout, warm_imports) as url:
            yield url
        return
    server = TemporaryServer()
    try:
        _boot_while_importing(server, timeout, warm_imports)
        with _reporting_to(server.api_url):
            yield server.api_url
    finally:
        server.stop()


def _boot_while_importing(server: TemporaryServer, timeout: float, warm_imports: tuple[str, ...],
                          launched=lambda: None) -> None:
    """Launch ``server`` and import ``warm_imports`` while it boots and answers its first API
    request; ``launched`` is called after each launch."""
    from concurrent.futures import ThreadPoolExecutor

    server.launch()
    launched()
    with ThreadPoolExecutor(max_workers=1) as pool:
        ready = pool.submit(server.wait_ready, timeout)
        for name in warm_imports:
            importlib.import_module(name)
        try:
            ready.result()
        except _PortTaken:
            # Relaunched here, never in the pool's thread: a temporary server's parent-death
            # signal fires when the thread that started it ends.
            server.launch()
            launched()
            server.wait_ready(timeout)


# A kept runner's child (radlint/kept_runner.py) answers its caller before it drains Prefect's log and
# event workers into a kept server, which outlives the call: the URLs wait here until then.
_deferred_drains: list[str] | None = None


def defer_drains() -> None:
    """From now on, leave the drains into kept servers to drain_deferred()."""
    global _deferred_drains
    _deferred_drains = []


def drain_deferred() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    while _deferred_drains:
        with temporary_settings(updates={PREFECT_API_URL: _deferred_drains.pop()}):
            _drain_workers()


@contextlib.contextmanager
def _reporting_to(url: str, kept: bool = False) -> Iterator[str]:
    """This process, and the Dask workers it starts (through the environment), report to ``url``;
    ``kept``: a server that outlives this call."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_UI_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = url
    try:
        # Heartbeats let a server mark crashed flow runs; radlint's servers are not watched for them,
        # and joining each flow run's heartbeat thread costs up to 1 s per run.
        # No UI URL: Prefect would log "View at http://127.0.0.1:PORT/runs/..." for every flow run,
        # a link to a server without a UI (and, for a temporary one, gone when the audit ends).
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                                         PREFECT_UI_URL: ""}):
            try:
                yield url
            finally:
                if kept and _deferred_drains is not None:
                    _deferred_drains.append(url)
                else:
                    _drain_workers()
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def idle_seconds() -> float:
    """How long a server radlint started stays up after its last use (RADLINT_PREFECT_SERVER_IDLE;
    0: a temporary server per call, stopped when the call ends)."""
    value = os.environ.get(IDLE_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else DEFAULT_IDLE_SECONDS
    except ValueError:
        raise ValueError(f"{IDLE_ENV} must be a number of seconds, not {value!r}") from None


def _state_paths() -> tuple[Path, Path, Path, Path]:
    """(state, lock, touch, log) files of the kept server, in this PREFECT_HOME."""
    home = _home_without_import()
    if home is None:
        from prefect.settings import get_current_settings

        home = Path(get_current_settings().home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return tuple(home / f"radlint-server.{ext}" for ext in ("json", "lock", "used", "log"))


def _healthy(url: str, timeout: float = 1.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


# Importing Prefect costs ~1 s on 2 cores; a server launched after it boots that much later. So
# until the server is launched, what the launch needs is found without importing Prefect.


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def settings_files(environ=os.environ, cwd: str | Path = ".") -> dict[str, Path]:
    """The files Prefect reads settings from when it is imported: ``.env``, ``prefect.toml`` and
    ``pyproject.toml`` in the working folder, and the profiles file."""
    home = Path(environ.get("PREFECT_HOME") or Path(environ.get("HOME", "~")) / ".prefect").expanduser()
    return {".env": Path(cwd, ".env"), "prefect.toml": Path(cwd, "prefect.toml"),
            "pyproject.toml": Path(cwd, "pyproject.toml"),
            "profiles": Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()}


def _home_without_import() -> Path | None:
    """PREFECT_HOME as Prefect resolves it, where that is certain without importing Prefect: set in
    the environment, or the default ~/.prefect when no settings file in reach (.env, prefect.toml,
    pyproject.toml in the working folder, the profiles file) mentions a home. None otherwise."""
    if "prefect" in sys.modules:
        return None  # its settings are at hand, and may hold temporary ones
    if os.environ.get("PREFECT_HOME"):
        return Path(os.environ["PREFECT_HOME"]).expanduser()
    import tomllib

    files = settings_files()
    for name, says_home in ((".env", lambda text: "PREFECT_HOME" in text),
                            ("profiles", lambda text: "PREFECT_HOME" in text),
                            ("prefect.toml", lambda text: "home" in tomllib.loads(text)),
                            ("pyproject.toml",
                             lambda text: "home" in tomllib.loads(text).get("tool", {}).get("prefect", {}))):
        try:
            if says_home(files[name].read_text(errors="replace")):
                return None
        except OSError:
            continue
        except tomllib.TOMLDecodeError:
            return None
    return Path("~/.prefect").expanduser()


def _prefect_site() -> str:
    """The folder that holds the prefect package (uvicorn's --app-dir)."""
    import importlib.util

    return str(Path(importlib.util.find_spec("prefect").origin).parent.parent)


@contextlib.contextmanager
def _kept_api(timeout: float, warm_imports: tuple[str, ...]) -> Iterator[str]:
    """The API of the server this PREFECT_HOME's last radlint call left running, or a new one that
    stays up idle_seconds() after its last use (flows/kept_server.py)."""
    state, lock, touch, log = _state_paths()
    version = _prefect_version()
    idle = idle_seconds()
    with open(lock, "a+") as held:
        # One call at a time decides whether to start a server: two would start two.
        fcntl.flock(held, fcntl.LOCK_EX)
        touch.touch()
        url = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            found = json.loads(state.read_text())
            # Another install's server (another Prefect version) may not speak this client's API.
            if found["prefect_version"] == version:
                url = found["url"]
        if url is None or not _healthy(url):
            server = TemporaryServer(kept=(idle, touch, log))

            def record() -> None:  # at once: a call interrupted while it boots still leaves it findable
                state.write_text(json.dumps({"url": server.api_url, "pid": server.process.pid,
                                             "prefect_version": version}))

            _boot_while_importing(server, timeout, warm_imports, launched=record)
            url = server.api_url
        else:
            for name in warm_imports:
                importlib.import_module(name)
        touch.touch()  # the boot or the imports above may have taken longer than the idle time
    done = threading.Event()
    # A long audit may not call the API for minutes; the touches come well inside the idle time,
    # however short it is set, or the server could stop under a call still using it.
    period = min(30.0, max(0.2, idle / 4))

    def keep_alive() -> None:
        while not done.wait(period):
            touch.touch()

    threading.Thread(target=keep_alive, name="radlint-server-keepalive", daemon=True).start()
    try:
        with _reporting_to(url, kept=True):
            yield url
    finally:
        done.set()
        touch.touch()


class TemporaryServer:
    """Prefect's own API app (``prefect.server.api.server:create_app``) under uvicorn in a child
    process, launched as ``prefect.server.api.server.SubprocessASGIServer`` launches it.

    Not that class itself: importing its module (all of prefect.server, 2.3-2.6 s here) would come before the child could start,
    while launching the same command directly lets the child boot during our own imports.
    """

    def __init__(self, kept: tuple[float, Path, Path] | None = None) -> None:
        """``kept``: (idle seconds, touch file, log file) for a server that outlives this process
        (flows/kept_server.py); None for one that ends with it."""
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log: Any = None
        self.kept = kept

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def launch(self) -> None:
        self.port = _free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        if "prefect" in sys.modules:
            # Settings made in this process (temporary_settings) reach the child too. Where Prefect is
            # not imported yet there are none, and the child reads the same environment and files.
            from prefect.settings import get_current_settings

            env.update(get_current_settings().to_environment_variables(exclude_unset=True))
        if self.log is None:
            # Its output goes to a file, shown only if it fails to start: stopped while it flushes
            # events (the end of every run, a Ctrl-C), it logs cancellation tracebacks that are
            # no news to the user.
            self.log = tempfile.TemporaryFile() if self.kept is None else open(self.kept[2], "a+b")
        if self.kept is None:
            command = [
                sys.executable, "-m", "uvicorn", "--app-dir", _prefect_site(),
                "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
            ]
        else:
            command = [sys.executable, "-m", "radlint.flows.kept_server", "--port", str(self.port),
                       "--idle", str(self.kept[0]), "--touch", str(self.kept[1])]
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            # Its own session: a Ctrl-C at the terminal reaches the audit, which stops the server
            # after its last API call, instead of killing the API under a running flow.
            start_new_session=True,
            # A kept server outlives this process on purpose and stops itself when idle.
            preexec_fn=_die_with_parent(os.getpid()) if self.kept is None else None,
        )
        if self.kept is None:
            atexit.register(self.stop)

    def wait_healthy(self, timeout: float) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll() if self.process else None
            # uvicorn could not bind (the port was taken meanwhile): 3 from its command line, 1 from
            # uvicorn.Server in kept_server
            if code == 3 or (code == 1 and self.kept is not None and "address already in use" in self.output_tail().lower()):
                if threading.current_thread() is not threading.main_thread():
                    raise _PortTaken()
                self.launch()
                continue
            if code is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {code}: {self.output_tail()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        tail = self.output_tail()
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout} s: {tail}")

    def wait_ready(self, timeout: float) -> None:
        """Wait until healthy, then make the first API request, which costs the server ~0.45 s
        (its database layer starts on first use) that a flow's first call would otherwise wait."""
        import urllib.error
        import urllib.request

        self.wait_healthy(timeout)
        try:
            with urllib.request.urlopen(f"{self.api_url}/admin/version", timeout=timeout):
                pass
        except (OSError, urllib.error.URLError):
            pass  # only a warm-up: the flow's own first request reports real problems

    def output_tail(self, n: int = 2000) -> str:
        if self.log is None:
            return ""
        self.log.seek(0, os.SEEK_END)
        self.log.seek(max(0, self.log.tell() - n))
        return " ".join(self.log.read().decode("utf-8", "replace").split()[-60:])

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log, self.log = self.log, None
        if log is not None:
            log.close()


class _PortTaken(Exception):
    """The server's port was taken before it could bind: launch it again (from the main thread)."""


def _die_with_parent(parent: int):
    """A ``preexec_fn`` that makes the child get SIGTERM when ``parent`` dies, even by ``kill -9``
    (Linux ``prctl(PR_SET_PDEATHSIG)``); elsewhere None. A temporary server that outlived its
    audit would hold ~220 MB forever."""
    if not sys.platform.startswith("linux"):
        return None

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drain_workers() -> None:
    """Flush Prefect's log and event workers while the temporary API still runs.

    Stopping the server first leaves them retrying against a closed port for a minute or more
    at interpreter exit (as prefect.testing.utilities.prefect_test_harness also avoids).
    """

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    try:
        run_coro_as_sync(drain())
    except Exception:  # draining is best effort; the audit's results are already written
        pass
