"""The local Dask cluster of an audit: started in the background, closed in the background.

Starting a LocalCluster costs ~2 s, and a spawned worker then spends ~4 s of one core importing
Prefect's task engine, the flow module and the decoders before it can run its first shard (~10 s
where site-packages have no compiled bytecode); a fork server (used where available) does those
imports once for all workers. The flow starts the cluster as soon as it knows it will need one, so
that this overlaps the listing of the lake and the database work, and closes it while the flow
loads the parts into DuckDB. The workers import those modules as a Dask preload, that is while the
cluster starts, not when the first task arrives.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver as forkserver
import os
import signal
import threading
from concurrent.futures import Future
from typing import Any

# What every shard task needs in a worker: prefect-dask runs each task through Prefect's task engine,
# and the task function itself lives in the flow module (which imports the decoders and ONNX Runtime).
WORKER_PRELOAD = ("prefect.task_engine", "radlint.flows.audit_lake", "radlint.flows.dask_env")


def dask_setup(worker: Any) -> None:
    """Dask preload hook, run in each worker process: ignore SIGINT.

    A Ctrl-C at the terminal reaches every process of its group; a worker that took it would die
    mid-shard with a traceback and Prefect would retry its shard. The audit process handles it
    and stops the workers itself (BackgroundCluster.__exit__).
    """

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A shard cancelled on Ctrl-C warns here ("Async instruction ... cancelled") just before the
    # worker is killed; the audit says "interrupted" once, for all of them.
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


def _start_method() -> str:
    """``forkserver`` where the platform has it and Dask's method is its default (``spawn``).

    A spawned worker imports Prefect, distributed, the decoders and ONNX Runtime itself (~4 s of one
    core each on this project's machine; two workers on two cores: 2.9-3.7 s to a ready cluster). A
    fork server imports them once, then forks each worker from that state (2.5 s to a ready cluster,
    and ~0.2 s for later clusters of the same process). A method the user configured (``fork``,
    ``forkserver``) is left alone.
    """

    import dask

    method = dask.config.get("distributed.worker.multiprocessing-method", "spawn")
    if method == "spawn" and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return method


def _add_forkserver_preload(modules: tuple[str, ...]) -> None:
    # Dask sets the fork server's preload (distributed and its optional packages) on first use;
    # add the shard task's modules. No effect once this process's fork server runs (it has them).

    from distributed.utils import get_mp_context

    ctx = get_mp_context()
    current = list(getattr(forkserver._forkserver, "_preload_modules", None) or [])
    ctx.set_forkserver_preload(current + [m for m in modules if m not in current])


def _start(n_workers: int) -> Any:
    import dask
    import distributed

    # Unconfigured, Dask logs the scheduler's and nannies' every start, connection and stop at INFO,
    # about 20 lines an audit on the caller's terminal; its warnings and errors still show. Logging
    # configured for Dask (DASK_LOGGING__DISTRIBUTED=info, its config files) is left as it is.
    if dask.config.get("logging", None) is None and dask.config.get("distributed.logging", None) is None:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    # An explicit preload replaces the configured one: keep what the user (or a benchmark) configured.
    configured = list(dask.config.get("distributed.worker.preload", None) or [])
    method = _start_method()
    with dask.config.set({"distributed.worker.multiprocessing-method": method}):
        if method == "forkserver":
            _add_forkserver_preload(WORKER_PRELOAD)
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            preload=configured + [m for m in WORKER_PRELOAD if m not in configured],
            # A forked worker starts with the fork server's environment, which may predate
            # credentials or endpoints set since: give it this process's current one.
            env=dict(os.environ) if method == "forkserver" else None,
        )


class BackgroundCluster:
    """A ``distributed.LocalCluster`` of ``n_workers`` single-threaded processes, started in a thread.

    ``address()`` waits for it (and raises what its start raised); ``close()`` closes it, at most
    once; ``close_in_background()`` returns at once and ``close()`` later waits for that.
    """

    def __init__(self, n_workers: int):
        self.n_workers = n_workers
        self._started: Future = Future()
        self._closer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._run_start, name="radlint-dask-start", daemon=True).start()

    def _run_start(self) -> None:
        try:
            self._started.set_result(_start(self.n_workers))
        except BaseException as exc:  # reported to whoever asks for the address
            self._started.set_exception(exc)

    def address(self, timeout: float | None = None) -> str:
        return self._started.result(timeout).scheduler_address

    def _close_now(self) -> None:
        try:
            cluster = self._started.result()
        except BaseException:
            return  # it never started: nothing to close
        cluster.close()

    def close_in_background(self) -> None:
        with self._lock:
            if self._closed or self._closer is not None:
                return
            self._closer = threading.Thread(target=self._close_now, name="radlint-dask-close", daemon=True)
            self._closer.start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            closer = self._closer
        if closer is not None:
            closer.join()
        else:
            self._close_now()

    def terminate(self) -> None:
        """Stop now: the scheduler stops handing out shards and every worker process is killed
        (a running shard cannot be cancelled; its parts are never published), then close."""
        if not self._started.done():
            self.close_in_background()
            return
        try:
            cluster = self._started.result()
        except BaseException:
            return

        self.close_in_background()  # nannies closing do not restart the workers killed below
        for nanny in list(getattr(cluster, "workers", {}).values()):
            pid = getattr(nanny, "pid", None)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.close()

    def __enter__(self) -> "BackgroundCluster":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):  # Ctrl-C, SystemExit
            self.terminate()
        self.close()
