"""Where flows report to: the configured Prefect API, or a temporary local one.

With no PREFECT_API_URL, a flow would start its own temporary server, and under the Dask task
runner every worker process would start one more. We start one temporary server here and export
its URL, so the flow process and all Dask workers it spawns report to the same API.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

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
def prefect_api(timeout: int = 90) -> Iterator[str]:
    """Yield the API URL in use, starting a temporary local server when none is configured."""
    apply_quiet_defaults()
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=timeout)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _drain_workers()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def _drain_workers() -> None:
    """Flush Prefect's log and event workers while the temporary API still runs.

    Stopping the server first leaves them retrying against a closed port for a minute or more
    at interpreter exit (as prefect.testing.utilities.prefect_test_harness also avoids).
    """
    import inspect

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
