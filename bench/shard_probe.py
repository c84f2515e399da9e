"""Dask worker preload used by bench/run.py: records what each shard task costs inside its worker.

bench/run.py sets ``distributed.worker.preload`` to this file before an audit starts its
LocalCluster, so every worker process of that audit imports it. ``dask_setup`` wraps
``tasks.shard.audit_shard`` (the body of the flow's only task; the flow looks it up through the
module at call time) and appends one JSON line per shard to ``$RADLINT_BENCH_SHARD_LOG``:
wall-clock start/end, the ``seconds`` the shard reports, the object count and the worker's
peak RSS so far (``ru_maxrss``). The wrapper adds two clock reads and one small file append per
shard; it changes nothing the shard computes.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time


def _append(record: dict) -> None:
    path = os.environ.get("RADLINT_BENCH_SHARD_LOG")
    if not path:
        return
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


_PEAK = {"rss": 0}


def _sample_rss(interval: float = 0.1) -> None:
    """Peak RSS of this worker process, sampled (ru_maxrss is not usable here: on Linux it keeps the
    high-water mark of the forking parent across fork+exec, so it reports the flow process's size)."""
    import psutil

    proc = psutil.Process()
    while True:
        try:
            _PEAK["rss"] = max(_PEAK["rss"], proc.memory_info().rss)
        except Exception:
            pass
        time.sleep(interval)


def dask_setup(worker) -> None:  # called by distributed in each worker process (and by run.py in its own)

    import radlint.tasks.shard as shard

    threading.Thread(target=_sample_rss, name="bench-rss", daemon=True).start()

    original = shard.audit_shard
    if getattr(original, "_bench_wrapped", False):
        return

    def audit_shard(objects, **kwargs):
        t0 = time.time()
        result = original(objects, **kwargs)
        t1 = time.time()
        try:
            import psutil

            rss_now = psutil.Process().memory_info().rss
        except Exception:
            rss_now = None
        _append(
            {
                "pid": os.getpid(),
                "shard_id": kwargs.get("shard_id"),
                "n_objects": len(objects),
                "n_images": result.get("n_images"),
                "n_skipped": result.get("n_skipped"),
                "seconds": result.get("seconds"),
                "t0": t0,
                "t1": t1,
                "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "rss_bytes": rss_now,
                "peak_rss_bytes": max(_PEAK["rss"], rss_now or 0),
            }
        )
        return result

    audit_shard._bench_wrapped = True
    shard.audit_shard = audit_shard
