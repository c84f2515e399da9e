"""Where an audit's shards run and how large they are, decided from the listed objects."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from radlint.tasks import discover, settings
from radlint.tasks.options import EXECUTORS, AuditOptions

# The Dask path costs ~3.5 s more before its first shard than the flow's own process (cluster
# start with forked workers ~2.5 s, subflow ~0.4 s) and then runs a worker per core. The flow's
# process decodes on one thread while the model runs beside it on every core (tasks.shard), so a
# worker per core gains only on decoding, and less than the cores' count on a small VM whose cores
# slow each other: 2 workers ran 1.0-1.15x as fast as the flow's process, Dask's start included,
# on 160 JPEG 2000 and 96 JPEG-LS objects of bench/run.py (bench/notes-2026.md, 2026-12-07 night).
# Work estimated below the break-even runs in the flow's process.
DASK_START_SECONDS = 3.5
DASK_EFFICIENCY = 0.6


@dataclass(frozen=True)
class Plan:
    """``executor``: ``local`` or ``dask``; ``shards``: the object lists, one per Prefect task;
    ``workers``: processes that run them; ``threads``: cores each of them may use;
    ``estimated_seconds``: the work in one process, as estimated (None where it decided nothing);
    ``note``: what ``auto`` chose, for the log (None where nothing was chosen)."""

    executor: str
    shards: list[list[discover.ObjectRef]]
    workers: int
    threads: int
    seconds_per_mb: float
    estimated_seconds: float | None = None
    note: str | None = None


def worker_count(requested: int | None, dask_address: str | None) -> tuple[int, str | None]:
    """(processes to plan shards for, a warning to log or None)."""
    workers, too_many = settings.local_workers(requested)
    if dask_address:  # a remote cluster's workers are its own, whatever the cores here
        return requested or workers, None
    return workers, too_many


def break_even_seconds(workers: int) -> float:
    """Estimated seconds of work above which ``workers`` Dask processes finish first."""
    speedup = DASK_EFFICIENCY * workers
    return float("inf") if speedup <= 1 else DASK_START_SECONDS / (1 - 1 / speedup)


def choose_executor(executor: str, dask_address: str | None, todo: list, workers: int) -> tuple[str, float]:
    """(where the shards run, cost per MB used for the estimate). Only when the choice depends on
    the transfer syntax are a few objects' file meta read.

    Raises:
        ValueError: ``executor`` is not one of :data:`EXECUTORS`.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
    cost = discover.SECONDS_PER_MB
    if dask_address:
        return "dask", cost
    if executor != "auto":
        return executor, cost
    limit = break_even_seconds(workers)
    costs = discover.SECONDS_PER_MB_BY_SYNTAX.values()
    if discover.estimated_seconds(todo, min(costs)) > limit:
        return "dask", cost
    if discover.estimated_seconds(todo, max(costs)) <= limit:
        return "local", cost
    cost = discover.probe_seconds_per_mb(todo) or cost
    return ("local" if discover.estimated_seconds(todo, cost) <= limit else "dask"), cost


def plan_shards(todo: list[discover.ObjectRef], executor: str, dask_address: str | None, workers: int,
                shard_size: int | None = None) -> Plan:
    """The executor, the shards and the processes for auditing ``todo`` on up to ``workers`` processes.

    Raises:
        ValueError: ``executor`` is not one of :data:`EXECUTORS`.
    """
    where, seconds_per_mb = choose_executor(executor, dask_address, todo, workers)
    estimate = (discover.estimated_seconds(todo, seconds_per_mb)
                if todo and executor == "auto" and not dask_address else None)
    n_workers = 1 if where == "local" else workers
    size = discover.shard_size_for(todo, n_workers, shard_size, seconds_per_mb,
                                   shards_per_worker=1 if where == "local" else 2)
    shards = list(discover.make_shards(todo, size))
    n_workers = max(1, min(n_workers, len(shards)))
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    # Not logged as seconds: the size-based index leaves out the model's inference and the
    # orientation samples, and read as a time it was 5-8x short (issue 23).
    note = None if estimate is None else (
        f"executor auto: {where} ({len(todo)} objects, {sum(o.size_bytes for o in todo) / 1e6:.0f} MB, "
        f"{seconds_per_mb:.4f} s per MB of decoding)")
    return Plan(where, shards, n_workers, threads, seconds_per_mb, estimate, note)


def shard_options(opts: AuditOptions, entry, out_dir: str, planned: Plan, orientation_sample_rate: float) -> dict[str, Any]:
    """The keyword arguments every shard of the run gets (tasks.shard.audit_shard)."""
    return {
        # A folder or URL of the store the workers write to; nothing else here is a path of the
        # flow's disk, except --registry and the salt file when the user's setup provides them
        # (docs/architecture.md, "What a worker needs").
        "out_dir": out_dir,
        # None: each worker loads the model its own installed package ships; model_sha256 makes a
        # worker with another model fail its shard instead of writing rows the diff would not match.
        "registry_path": opts.registry,
        "model_sha256": entry.sha256,
        # The salt's location, never its value: flow and task parameters are stored by Prefect.
        "salt_file": settings.salt_source(opts.db),
        "batch_size": opts.batch_size,
        "device": opts.device,
        "max_pixels": opts.max_pixels,
        "max_inflight_bytes": opts.max_inflight_bytes,
        "threads": planned.threads,
        "decode_threads": planned.threads,
        "orientation_sample_rate": orientation_sample_rate,
    }
