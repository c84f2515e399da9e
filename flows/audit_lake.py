"""audit_lake: discover -> diff -> shard -> one Dask task per shard -> load DuckDB -> findings."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from radlint.flows.dask_env import BackgroundCluster
from radlint.flows.progress import Progress
from radlint.tasks import adapt, database, discover, findings, infer, labels, parts, plan, runs, shard
from radlint.tasks.options import AuditOptions
from radlint.tasks.report import write_report


@task(name="audit-shard", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def audit_shard_task(manifest: str, index: int, **kwargs: Any) -> dict[str, Any]:
    return shard.audit_shard(parts.read_manifest(manifest, index), **kwargs)


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
    pending = list(futures)
    # Woken twice a second to see a Ctrl-C (shard.STOP): the audit command raises no
    # KeyboardInterrupt in here, where it could land inside Prefect's or Dask's own code.
    while pending:
        if shard.STOP.is_set():
            _cancel(pending)
            raise KeyboardInterrupt("audit interrupted")
        done, not_done = wait(pending, timeout=0.5)
        pending = [f for f in pending if f in not_done]
        for fut in done:
            i = index[id(fut)]
            try:
                results[i] = fut.result()
            except Exception as exc:  # reported as a failed shard; a re-run audits its objects again
                logger.error("shard %05d failed: %s", i, exc)
                results[i] = {"shard_id": f"{i:05d}", "failed": True, "error": str(exc)[:300]}
            progress.update(shard_sizes[i], results[i].get("n_images", 0))
    return results


def _cancel(futures: list) -> None:
    """Cancel shards not finished, through Dask's (or the thread pool's) own futures."""
    for fut in futures:
        inner = getattr(fut, "wrapped_future", None)
        try:
            if inner is not None:
                inner.cancel()
        except Exception:  # best effort: the cluster is stopped right after
            pass


# The flow's own runner runs shards one at a time in this process (executor "local"); the Dask
# path needs a subflow, because a flow's task runner is fixed when the flow starts.
# The parameters are AuditOptions' fields with its defaults (documented there), as plain values
# so that deployments can set them; tests/test_flows.py keeps the two the same.
@flow(name="audit_lake", validate_parameters=False, task_runner=ThreadPoolTaskRunner(max_workers=1))
def audit_lake(
    lake: str,
    db: str,
    out: str | None = AuditOptions.out,
    labels_file: str | None = AuditOptions.labels_file,
    dask_address: str | None = AuditOptions.dask_address,
    workers: int | None = AuditOptions.workers,
    executor: str = AuditOptions.executor,
    batch_size: int = AuditOptions.batch_size,
    shard_size: int | None = AuditOptions.shard_size,
    device: str = AuditOptions.device,
    max_pixels: int = AuditOptions.max_pixels,
    max_inflight_bytes: int = AuditOptions.max_inflight_bytes,
    registry: str | None = AuditOptions.registry,
    report: str | None = AuditOptions.report,
    lock_wait_seconds: float = AuditOptions.lock_wait_seconds,
) -> dict[str, Any]:
    """Audit every new object of ``lake`` into the DuckDB file ``db``; returns the run summary.

    Lists, plans, prepares the database, submits one task per shard, gathers and finishes.
    """
    opts = AuditOptions(**locals())
    logger = get_run_logger()
    started = time.perf_counter()
    out_dir = opts.out or str(Path(opts.db).with_suffix("")) + "_parts"
    entry = infer.default_model(opts.registry or infer.REGISTRY_PATH)
    infer.verify(entry)
    label_table = labels.read_label_file(opts.labels_file) if opts.labels_file else None
    workers, too_many = plan.worker_count(opts.workers, opts.dask_address)
    if too_many:
        logger.warning(too_many)
    with database.audit_lock(opts.db, wait_seconds=opts.lock_wait_seconds), contextlib.ExitStack() as stack:
        cluster: BackgroundCluster | None = None
        if opts.executor == "dask" and not opts.dask_address and not database.has_predictions(opts.db, entry.sha256):
            # A first audit with this model: every object listed is new, so the cluster will be
            # needed; its workers start while the lake is listed.
            cluster = stack.enter_context(BackgroundCluster(workers))
        own = database.own_paths(opts.db, out_dir) + ([opts.report] if opts.report else [])
        objects = discover.discover(opts.lake, exclude=own)
        run = runs.prepare(opts.db, entry, opts.lake, objects, out_dir, label_table, opts.labels_file,
                           wait_seconds=opts.lock_wait_seconds)
        if run.recovered:
            logger.info("loaded parts left by an interrupted run: %s", run.recovered)
        logger.info("listed %d objects, %d to audit", len(objects), len(run.todo))
        planned = plan.plan_shards(run.todo, opts.executor, opts.dask_address, workers, opts.shard_size)
        if planned.note:
            logger.info(planned.note)
        if planned.executor == "dask" and not opts.dask_address and cluster is None and planned.shards:
            cluster = stack.enter_context(BackgroundCluster(planned.workers))
        if planned.shards and entry.embedding is not None and len(objects) >= adapt.MIN_IMAGES:
            # the lake will be refitted after the load: its imports overlap the shards
            threading.Thread(target=adapt.preload, name="radlint-preload", daemon=True).start()
        results = submit(planned, plan.shard_options(opts, entry, out_dir, planned, run.orientation_sample_rate),
                         run.run_id, len(objects), out_dir, opts.dask_address, cluster)
        if cluster:  # its workers are done: let them exit while the parts load
            cluster.close_in_background()
        summary = runs.finish(opts.db, entry, run, results, n_listed=len(objects), n_shards=len(planned.shards),
                              started=started, wait_seconds=opts.lock_wait_seconds)
        logger.info("lake adaptation: %s", summary["lake_adaptation"])
        summary.update(db=str(opts.db), out=out_dir, executor=planned.executor if planned.shards else None)
        if opts.report:
            summary["report"] = str(write_report(opts.db, opts.report))
        create_markdown_artifact(key="radlint-audit-summary", markdown=findings.summary_markdown(summary),
                                 description=f"radlint audit of {opts.lake}")
    return summary


def submit(planned: plan.Plan, shard_kwargs: dict[str, Any], run_id: str, n_listed: int, out_dir: str,
           dask_address: str | None, cluster: BackgroundCluster | None) -> list[dict]:
    """Run the planned shards where the plan says and gather their results (one per shard)."""
    if not planned.shards:
        return []
    get_run_logger().info("auditing %d shards %s", len(planned.shards), "in this process" if planned.executor == "local"
                          else f"on Dask ({dask_address or f'{planned.workers} local workers'})")
    manifest = parts.write_manifest(planned.shards, out_dir, run_id)
    shard_args = (str(manifest), [len(s) for s in planned.shards], shard_kwargs, run_id, n_listed)
    if planned.executor == "local":  # no subflow: its creation and states cost ~0.3-0.4 s of API calls
        return run_shards(*shard_args)
    # Imported here: prefect_dask brings in distributed (~0.5 s), which a run in this process never uses.
    from prefect_dask import DaskTaskRunner

    address = dask_address or (cluster.address() if cluster else None)
    return audit_shards.with_options(task_runner=DaskTaskRunner(address=address))(*shard_args)
