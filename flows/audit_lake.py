"""audit_lake: discover -> diff -> shard -> one Dask task per shard -> load DuckDB -> findings."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from radlint.flows.dask_env import BackgroundCluster
from radlint.flows.progress import Progress
from radlint.tasks import adapt, discover, findings, infer, labels, settings, shard, write


@task(name="audit-shard", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def audit_shard_task(manifest: str, index: int, **kwargs: Any) -> dict[str, Any]:
    return shard.audit_shard(write.read_manifest(manifest, index), **kwargs)


@flow(name="audit_shards", validate_parameters=False)
def audit_shards(
    manifest: str, shard_sizes: list[int], shard_kwargs: dict[str, Any], run_id: str, n_listed: int = 0
) -> list[dict]:
    """Run the shards on this subflow's task runner (the Dask cluster) and gather their results.

    Object lists travel by reference (a manifest file), never as flow or task parameters: the
    Prefect API refuses flow-run parameters over 512 KiB, about 4,000 objects.
    """
    return run_shards(manifest, shard_sizes, shard_kwargs, run_id, n_listed)


def run_shards(
    manifest: str, shard_sizes: list[int], shard_kwargs: dict[str, Any], run_id: str, n_listed: int = 0
) -> list[dict]:
    """Submit one task per shard to the current flow's task runner; a failed shard is reported,
    not raised."""
    logger = get_run_logger()
    futures = [
        audit_shard_task.with_options(task_run_name=f"shard-{i:05d}").submit(
            manifest, i, shard_id=f"{i:05d}", run_id=run_id, **shard_kwargs
        )
        for i in range(len(shard_sizes))
    ]
    progress = Progress(n_listed, sum(shard_sizes), len(shard_sizes))
    index = {id(f): i for i, f in enumerate(futures)}
    results: list[dict] = [{} for _ in futures]
    for fut in as_completed(futures):
        i = index[id(fut)]
        try:
            results[i] = fut.result()
        except Exception as exc:  # reported as a failed shard; a re-run audits its objects again
            logger.error("shard %05d failed: %s", i, exc)
            results[i] = {"shard_id": f"{i:05d}", "failed": True, "error": str(exc)[:300]}
        progress.update(shard_sizes[i], results[i].get("n_images", 0))
    return results


# The Dask path costs ~3.5 s more before its first shard than the flow's own process (cluster
# start with forked workers ~2.5 s, subflow ~0.4 s) and then runs a worker per core, each ~0.75 as
# fast as the flow's process per core (it gives ONNX Runtime every core): bench/results.md and
# bench/results-uncompressed-320.md, 2-core machine. Work estimated below the break-even runs here.
DASK_START_SECONDS = 3.5
DASK_EFFICIENCY = 0.75
EXECUTORS = ("auto", "dask", "local")


def break_even_seconds(workers: int) -> float:
    """Estimated seconds of work above which ``workers`` Dask processes finish first."""
    speedup = DASK_EFFICIENCY * workers
    return float("inf") if speedup <= 1 else DASK_START_SECONDS / (1 - 1 / speedup)


def _choose_executor(executor: str, dask_address: str | None, todo: list, workers: int) -> tuple[str, float]:
    """(where the shards run, cost per MB used for the estimate). Only when the choice depends on
    the transfer syntax are a few objects' file meta read."""
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


# The flow's own runner runs shards one at a time in this process (executor "local"); the Dask
# path needs a subflow, because a flow's task runner is fixed when the flow starts.
@flow(name="audit_lake", validate_parameters=False, task_runner=ThreadPoolTaskRunner(max_workers=1))
def audit_lake(
    lake: str,
    db: str,
    out: str | None = None,
    labels_file: str | None = None,
    dask_address: str | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    shard_size: int | None = None,
    device: str = "auto",
    max_pixels: int = 80_000_000,
    registry: str | None = None,
    lock_wait_seconds: float = 0.0,
    report: str | None = None,
    executor: str = "auto",
    max_inflight_bytes: int = shard.DEFAULT_MAX_INFLIGHT_BYTES,
) -> dict[str, Any]:
    """Audit every new object of ``lake`` into the DuckDB file ``db``; returns the run summary.

    ``executor``: ``dask`` runs shards on the Dask cluster at ``dask_address`` or on a new
    LocalCluster of ``workers`` processes; ``local`` runs them in this process; ``auto`` (default)
    uses the cluster when ``dask_address`` is given or the work, estimated from the objects'
    sizes and (where it decides) the transfer syntax of a few of them, is more than the cluster's
    start-up time wins back.
    ``shard_size``: objects per Prefect task; None (default) sizes shards to about a minute of work
    each, 500-5,000 objects, at least two per worker.
    ``max_inflight_bytes``: object bytes a shard holds at once; larger objects are ``too_large``.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    out_dir = out or str(Path(db).with_suffix("")) + "_parts"
    entry = infer.default_model(registry or infer.REGISTRY_PATH)
    infer.verify(entry)
    label_table = labels.read_label_file(labels_file) if labels_file else None

    workers = workers or settings.default_workers()
    with write.audit_lock(db, wait_seconds=lock_wait_seconds), contextlib.ExitStack() as stack:
        cluster: BackgroundCluster | None = None
        if executor == "dask" and not dask_address and not write.has_predictions(db, entry.sha256):
            # A first audit with this model: every object listed is new, so the cluster will be
            # needed; its workers start while the lake is listed.
            cluster = stack.enter_context(BackgroundCluster(workers))
        objects = discover.discover(lake)
        run_id = write.new_run_id()
        con = write.connect(db, wait_seconds=0)
        try:
            write.ensure_schema(con)
            write.mark_interrupted_runs(con)
            write.load_thresholds(con, entry.name, entry.sha256, entry.tasks)
            if label_table is not None:
                write.load_labels(con, label_table, os.path.abspath(labels_file))
            orphans = write.unloaded_parts(con, out_dir)
            if orphans:
                recovered = write.load_and_record(con, orphans)
                logger.info("loaded parts left by an interrupted run: %s", recovered)
            todo = discover.diff(objects, write.done_keys(con, [entry.sha256]))
            sample_rate = adapt.orientation_sample_rate(len(todo), write.orientation_sampled_count(con, entry.sha256))
            write.start_run(con, run_id, discover.normalize_lake(lake), [{"name": entry.name, "sha256": entry.sha256}])
        finally:
            con.close()
        logger.info("listed %d objects, %d to audit", len(objects), len(todo))

        where, seconds_per_mb = _choose_executor(executor, dask_address, todo, workers)
        if todo and executor == "auto" and not dask_address:
            logger.info("estimated %.1f s of work in one process (%.4f s per MB), break-even with %d Dask workers %.1f s",
                        discover.estimated_seconds(todo, seconds_per_mb), seconds_per_mb, workers,
                        break_even_seconds(workers))
        n_workers = 1 if where == "local" else workers
        size = discover.shard_size_for(todo, n_workers, shard_size, seconds_per_mb,
                                       shards_per_worker=1 if where == "local" else 2)
        shards = list(discover.make_shards(todo, size))
        n_workers = max(1, min(n_workers, len(shards)))
        if where == "dask" and not dask_address and cluster is None and shards:
            cluster = stack.enter_context(BackgroundCluster(n_workers))
        if shards:
            logger.info("auditing %d shards %s", len(shards),
                        "in this process" if where == "local" else f"on Dask ({dask_address or f'{n_workers} local workers'})")
        cores_per_worker = max(1, (os.cpu_count() or 1) // n_workers)
        shard_kwargs = {
            "out_dir": out_dir,
            "registry_path": str(entry.path.parent / "registry.yaml") if registry is None else registry,
            # The salt's location, never its value: flow and task parameters are stored by Prefect.
            "salt_file": settings.salt_source(db),
            "batch_size": batch_size,
            "device": device,
            "max_pixels": max_pixels,
            "max_inflight_bytes": max_inflight_bytes,
            "threads": cores_per_worker,
            "decode_threads": cores_per_worker,
            "orientation_sample_rate": sample_rate,
        }
        results: list[dict] = []
        if shards:
            manifest = write.write_manifest(shards, out_dir, run_id)
            shard_args = (str(manifest), [len(s) for s in shards], shard_kwargs, run_id, len(objects))
            if where == "local":  # no subflow: its creation and states cost ~0.3-0.4 s of API calls
                results = run_shards(*shard_args)
            else:
                address = dask_address or (cluster.address() if cluster else None)
                results = audit_shards.with_options(task_runner=DaskTaskRunner(address=address))(*shard_args)
        if cluster:  # its workers are done: let them exit while the parts load
            cluster.close_in_background()
        parts = {k: [r["parts"][k] for r in results if k in r.get("parts", {})] for k in write.KINDS}
        failed = [r for r in results if r.get("failed")]

        con = write.connect(db, wait_seconds=60)
        try:
            added = write.load_and_record(con, parts)
            write.create_views(con)
            lake_counts = adapt.adapt_lake(con, entry, run_id)
            logger.info("lake adaptation: %s", lake_counts)
            write.finish_run(
                con,
                run_id,
                status="incomplete" if failed else "completed",
                n_listed=len(objects),
                n_new=len(todo),
                n_images=added["images"],
                n_skipped=added["skipped"],
                n_predictions=added["predictions"],
                n_shards=len(shards),
                n_failed_shards=len(failed),
                wall_seconds=time.perf_counter() - started,
            )
            summary = findings.run_summary(con, run_id)
        finally:
            con.close()
        summary.update(lake_adaptation=lake_counts)
        summary.update(db=str(db), out=out_dir, failed_shards=[r["shard_id"] for r in failed],
                       executor=where if shards else None)
        if report:
            from radlint.report import write_report

            summary["report"] = str(write_report(db, report))
        create_markdown_artifact(
            key="radlint-audit-summary",
            markdown=findings.summary_markdown(summary),
            description=f"radlint audit of {lake}",
        )
    return summary
