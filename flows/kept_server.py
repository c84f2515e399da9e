"""A local Prefect API server that radlint leaves running between calls; it stops itself when idle.

    python -m radlint.flows.kept_server --port PORT --idle SECONDS --touch FILE

Started by ``radlint.flows.prefect_env.prefect_api`` when no PREFECT_API_URL is set (and
RADLINT_PREFECT_SERVER_IDLE is not 0), so that the next radlint call finds a warm API instead of
booting one (about 4 s on an idle 2-core machine). Prefect's own app (``prefect.server.api.server.create_app``) under
uvicorn, as Prefect's temporary server runs it. It exits once neither an API request nor a touch of
``FILE`` (radlint calls touch it while they run) happened for ``SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time


def last_used(touch: str, last_request: float) -> float:
    """Wall-clock time of the last sign of use: an API request or a touch of the file."""
    try:
        touched = os.path.getmtime(touch)
    except OSError:
        touched = 0.0
    return max(touched, last_request)


async def serve(port: int, idle: float, touch: str) -> None:
    import uvicorn
    from prefect.server.api.server import create_app

    app = create_app()
    last_request = [time.time()]

    @app.middleware("http")
    async def seen(request, call_next):
        last_request[0] = time.time()
        return await call_next(request)

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))

    async def watch() -> None:
        # The idle clock starts once the server answers: booting (imports, a new home's database
        # migrations) can take longer than the idle time on a busy machine.
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.1)
        last_request[0] = time.time()
        while not server.should_exit:
            await asyncio.sleep(min(1.0, idle / 4))
            if time.time() - last_used(touch, last_request[0]) > idle:
                server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=float, required=True, help="seconds without use before the server exits")
    ap.add_argument("--touch", required=True, help="file whose modification time radlint calls refresh")
    args = ap.parse_args(argv)
    asyncio.run(serve(args.port, args.idle, args.touch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
