"""Ctrl-C during ``radlint audit``: stop within seconds, say one line, exit 130.

Prefect and Dask catch, wrap or retry a KeyboardInterrupt that lands inside their own code (a
shard retried, the flow marked failed with a serialisation error). So SIGINT only sets
``shard.STOP`` while shards run; the flow sees it within half a second, cancels the shards and
raises KeyboardInterrupt from its own code, the Dask workers are killed on the way out
(flows.dask_env) and the temporary Prefect server is stopped after the last API call. Anything
that takes longer than ``GRACE_SECONDS``, or a second Ctrl-C, ends the process at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

MESSAGE = "radlint: interrupted; re-run to finish"
EXIT_INTERRUPTED = 130
GRACE_SECONDS = 8.0


@contextlib.contextmanager
def audit_interrupts(db: str | None, grace_seconds: float = GRACE_SECONDS) -> Iterator[threading.Event]:
    """Handle SIGINT as above for the block (main thread only); yields the event set on Ctrl-C.

    An exception of any kind leaving the block after a Ctrl-C is re-raised as KeyboardInterrupt,
    and the run rows of ``db`` still ``running`` are marked ``interrupted``.
    """
    from radlint.tasks import shard

    if threading.current_thread() is not threading.main_thread():
        yield shard.STOP
        return
    shard.STOP.clear()
    timer: list[threading.Timer] = []

    def on_sigint(signum, frame) -> None:
        if shard.STOP.is_set():  # the second Ctrl-C: no more waiting
            hard_stop(db)
        shard.STOP.set()
        # Prefect's and Dask's shutdown chatter (crash reports, nannies closing) is not news.
        logging.disable(logging.CRITICAL)
        t = threading.Timer(grace_seconds, hard_stop, args=(db,))
        t.daemon = True
        t.start()
        timer.append(t)
        if not _shards_running():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield shard.STOP
    except BaseException as exc:
        if shard.STOP.is_set():
            mark_interrupted(db)
            raise KeyboardInterrupt from exc
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        for t in timer:
            t.cancel()
        if shard.STOP.is_set():
            logging.disable(logging.NOTSET)
            shard.STOP.clear()


def _shards_running() -> bool:
    """Whether the main thread is in the flow's shard loop, which polls shard.STOP itself."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name == "run_shards" and frame.f_code.co_filename.endswith("audit_lake.py"):
            return True
        frame = frame.f_back
    return False


def mark_interrupted(db: str | None) -> None:
    """Mark the runs of ``db`` still ``running`` as ``interrupted`` (best effort)."""
    if not db or not Path(db).exists():
        return
    from radlint.tasks import database

    try:
        con = database.connect(db, wait_seconds=2)
    except Exception:
        return  # the next audit marks them
    try:
        database.ensure_schema(con)
        database.mark_interrupted_runs(con)
    except Exception:
        pass
    finally:
        con.close()


def kill_children() -> None:
    """Kill every process this one started, and theirs (Dask workers, the temporary Prefect server)."""
    try:
        import psutil
    except ImportError:
        return
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=3)


def hard_stop(db: str | None) -> None:
    """End the process now: children killed, the one line said, exit 130."""
    kill_children()
    mark_interrupted(db)
    print(MESSAGE, file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)
