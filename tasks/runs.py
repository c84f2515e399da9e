"""An audit run's database work before and after its shards, in the flow's process (the single
DuckDB writer): :func:`prepare` and :func:`finish`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from radlint.tasks import adapt, database, discover, findings, parts


@dataclass(frozen=True)
class Prepared:
    """``todo``: the listed object versions not yet audited with the model;
    ``orientation_sample_rate``: share of them that feed the self-supervised orientation probe;
    ``recovered``: rows added per kind from parts an interrupted run left unloaded."""

    run_id: str
    todo: list[discover.ObjectRef]
    orientation_sample_rate: float
    recovered: dict[str, int] | None = None


def prepare(db: str, entry, lake: str, objects: list[discover.ObjectRef], out_dir: str,
            label_table=None, labels_file: str | None = None, wait_seconds: float = 0.0) -> Prepared:
    """Bring the database up to date and start a run: schema and migrations, runs a crash left
    'running', the model's thresholds, the label table, parts a crashed run wrote but never loaded;
    then the diff of ``objects`` against what is audited, and the run's row.

    ``wait_seconds``: how long to wait for another process (a reader) to let go of the database.

    Raises:
        database.DatabaseError: the database is held by another process or written by a newer radlint.
    """
    run_id = database.new_run_id()
    con = database.connect(db, wait_seconds=wait_seconds)
    try:
        database.ensure_schema(con)
        database.mark_interrupted_runs(con)
        database.load_thresholds(con, entry.name, entry.sha256, entry.tasks)
        if label_table is not None:
            database.load_labels(con, label_table, os.path.abspath(labels_file))
        orphans = database.unloaded_parts(con, out_dir)
        recovered = database.load_and_record(con, orphans) if orphans else None
        todo = discover.diff(objects, database.done_keys(con, [entry.sha256]))
        sample_rate = adapt.orientation_sample_rate(
            len(todo), database.orientation_sampled_count(con, entry.sha256, adapt.turned_widths(entry)))
        database.start_run(con, run_id, discover.normalize_lake(lake), [{"name": entry.name, "sha256": entry.sha256}])
    finally:
        con.close()
    return Prepared(run_id, todo, sample_rate, recovered)


def finish(db: str, entry, run: Prepared, results: list[dict], *, n_listed: int, n_shards: int,
           started: float, wait_seconds: float = 0.0) -> dict[str, Any]:
    """Load the shards' parts, (re)create the views, adapt to the lake, close the run's row;
    returns the run summary (findings.run_summary plus ``lake_adaptation`` and ``failed_shards``).

    ``results``: the shards' results (a failed one carries ``failed``); ``started``: the
    ``time.perf_counter()`` at which the run started; ``wait_seconds``: how long to wait for
    another process (a reader) to let go of the database, as at the start (--wait-lock).

    Raises:
        database.DatabaseError: another process still holds the database; the parts stay on disk
            and the next audit loads them.
    """
    written = {k: [r["parts"][k] for r in results if k in r.get("parts", {})] for k in parts.KINDS}
    failed = [r for r in results if r.get("failed")]
    con = database.connect(db, wait_seconds=wait_seconds)
    try:
        added = database.load_and_record(con, written)
        # Rows an interrupted run left in parts count in the run that loaded them (prepare): the
        # interrupted run's row never got its totals, so they would be in no run's otherwise.
        for kind, n in (run.recovered or {}).items():
            added[kind] = added.get(kind, 0) + n
        database.create_views(con)
        lake_counts = adapt.adapt_lake(con, entry, run.run_id)
        database.finish_run(
            con,
            run.run_id,
            status="incomplete" if failed else "completed",
            n_listed=n_listed,
            n_new=len(run.todo),
            n_images=added["images"],
            n_skipped=added["skipped"],
            n_predictions=added["predictions"],
            n_shards=n_shards,
            n_failed_shards=len(failed),
            wall_seconds=time.perf_counter() - started,
        )
        summary = findings.run_summary(con, run.run_id)
    finally:
        con.close()
    summary.update(lake_adaptation=lake_counts)
    summary.update(failed_shards=[r["shard_id"] for r in failed])
    return summary
