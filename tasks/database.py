"""The DuckDB database the parts load into, managed by the flow process (the single writer):
lock, connection, schema and migrations, loads, runs.

The parts are loaded with anti-joins on (uri, etag[, task, model_sha256]), so loading a part twice
adds nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from radlint.tasks.parts import KINDS, SCHEMAS, out_store, utcnow

SQL_DIR = Path(str(resources.files("radlint.sql")))
# 2: thumbnails, loaded_parts and gates tables; 3: gates.class_thresholds; 4: label_gates;
# 5: embeddings, orientation_samples, lake_predictions, gates.lake_min_severity;
# 6: lake_predictions.generic_distrust, gates.lake_distrust_scale; 7: gates.lake_confusable(_min_severity)
SCHEMA_VERSION = "7"

# Keys that make a load idempotent: a row whose key is already in the table is not added again.
LOAD_KEYS = {
    "images": ("uri", "etag"),
    "predictions": ("uri", "etag", "task", "model_sha256"),
    "skipped": ("uri", "etag"),
    "thumbnails": ("uri", "etag"),
    "embeddings": ("uri", "etag", "model_sha256"),
    "orientation_samples": ("uri", "etag", "model_sha256", "turn"),
}


class DatabaseError(RuntimeError):
    """The database cannot be opened (locked by another audit, unreadable, newer schema)."""


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def sql_files(kind: str) -> list[Path]:
    return sorted((SQL_DIR / kind).glob("*.sql"))


def _sql_digest(kind: str) -> str:
    """sha256 over the names and texts of sql/<kind>: recorded in `meta` when they are applied."""
    h = hashlib.sha256()
    for path in sql_files(kind):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _meta(con) -> dict[str, str]:
    return dict(con.execute("select key, value from meta").fetchall()) if "meta" in _tables(con) else {}


def _set_meta(con, key: str, value: str) -> None:
    con.execute("insert or replace into meta values (?, ?)", [key, value])


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("select table_name from duckdb_tables() where schema_name = 'main'").fetchall()}


def _views(con) -> set[str]:
    return {
        r[0]
        for r in con.execute("select view_name from duckdb_views() where schema_name = 'main' and not internal").fetchall()
    }


def connect(db: str | Path, read_only: bool = False, wait_seconds: float = 0.0):
    """Open the DuckDB file with extension autoloading off (no network at run time).

    Raises:
        DatabaseError: when another process holds the lock (after ``wait_seconds``) or the
            file is not a DuckDB database.
    """
    import duckdb

    deadline = time.monotonic() + wait_seconds
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    while True:
        try:
            return duckdb.connect(str(db), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            msg = str(exc)
            if "lock" in msg.lower() and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            if "lock" in msg.lower():
                # Any process may hold it (a reader's open connection, a notebook), not only an
                # audit: audits are told apart by audit_lock, before this.
                holder = re.search(r"held in (.+?) \(PID (\d+)\)", msg)
                who = f" (pid {holder.group(2)}, {Path(holder.group(1)).name})" if holder else ""
                waited = f" after waiting {wait_seconds:g} s" if wait_seconds else ""
                raise DatabaseError(
                    f"database {db} is held by another process{who}{waited}; close it, or wait longer "
                    "with --wait-lock SECONDS"
                ) from exc
            raise DatabaseError(f"cannot open database {db}: {msg.splitlines()[0]}") from exc
        except duckdb.Error as exc:
            raise DatabaseError(f"cannot open database {db}: {str(exc).splitlines()[0]}") from exc


@contextlib.contextmanager
def audit_lock(db: str | Path, wait_seconds: float = 0.0):
    """Hold ``<db>.lock`` for a whole audit, so two audits never work on one database at once.

    DuckDB's own lock only covers an open connection; the audit closes its connection while the
    shards run, so this lock spans the run.

    Raises:
        DatabaseError: another audit holds the lock (after ``wait_seconds``).
    """
    path = Path(str(db) + ".lock")
    fh = open(path, "a+")
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                raise DatabaseError(f"another audit is running on {db} (pid {holder}); wait for it or use another --db") from None
            time.sleep(0.5)
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    try:
        yield
    finally:
        fh.seek(0)
        fh.truncate()
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def own_paths(db: str | Path, out_dir: str | Path) -> list[str]:
    """The files and folders an audit of ``db`` writes: never lake objects, also when ``--db`` lies
    inside the lake (the database, DuckDB's WAL and temporary folder, the lock, the salt, the parts:
    a local folder, or an object-store URL that may lie under an object-store lake)."""
    db = str(db)
    out = str(out_dir) if _is_url(str(out_dir)) else out_store(out_dir)[1]
    return [db, db + ".wal", db + ".tmp", db + ".lock", db + ".salt", out]


def mark_interrupted_runs(con) -> int:
    """Runs still 'running' when a new audit holds the lock were interrupted (crash, kill)."""
    n = con.execute("select count(*) from runs where status = 'running'").fetchone()[0]
    con.execute("update runs set status = 'interrupted' where status = 'running'")
    return n


def _declared_columns(ddl: str) -> tuple[list[tuple[str, str]], str]:
    """(columns as (name, type), table name) of a DDL file, read by running it on a scratch database."""
    import duckdb

    scratch = duckdb.connect()
    try:
        scratch.execute(ddl)
        name = scratch.execute("select table_name from information_schema.tables").fetchone()[0]
        return [(r[0], r[1]) for r in scratch.execute(f'describe "{name}"').fetchall()], name
    finally:
        scratch.close()


def ensure_schema(con) -> None:
    """Create missing tables, migrate older databases, record the schema version.

    Migration is additive: tables added since the database was written are created, and columns
    added to a table's DDL are added (NULL for existing rows). Nothing is dropped or rewritten.

    Raises:
        DatabaseError: the database was written by a newer radlint.
    """
    meta = _meta(con)
    version = meta.get("schema_version")
    if version is not None and int(version) > int(SCHEMA_VERSION):
        raise DatabaseError(
            f"database schema version {version} is newer than this radlint ({SCHEMA_VERSION}); upgrade radlint"
        )
    digest = _sql_digest("tables")
    if version == SCHEMA_VERSION and meta.get("tables_sha256") == digest:
        # The same DDL was applied before: skip re-running it (~3 ms a file) unless a table is gone.
        if {p.stem.lstrip("0123456789_") for p in sql_files("tables")} <= _tables(con):
            return
    for path in sql_files("tables"):
        ddl = path.read_text()
        con.execute(ddl)
        if version is not None and int(version) < int(SCHEMA_VERSION):
            columns, table = _declared_columns(ddl)
            have = {r[0] for r in con.execute(f'describe "{table}"').fetchall()}
            for name, col_type in columns:
                if name not in have:
                    con.execute(f'alter table "{table}" add column "{name}" {col_type}')
    if version is None:
        con.execute("insert into meta values ('schema_version', ?)", [SCHEMA_VERSION])
        con.execute("insert into meta values ('created_at', ?)", [utcnow().isoformat()])
    elif int(version) < int(SCHEMA_VERSION):
        con.execute("update meta set value = ? where key = 'schema_version'", [SCHEMA_VERSION])
        _set_meta(con, "migrated_at", utcnow().isoformat())
    _set_meta(con, "tables_sha256", digest)


def create_views(con) -> list[str]:
    """(Re)create the views of sql/views in file-name order; returns their names.

    Skipped when the same view files were applied last time and every view still exists.
    """
    names = [path.stem for path in sql_files("views")]
    digest = _sql_digest("views")
    if _meta(con).get("views_sha256") == digest and set(names) <= _views(con):
        return names
    for path in sql_files("views"):
        con.execute(path.read_text())
    _set_meta(con, "views_sha256", digest)
    return names


def has_predictions(db: str | Path, model_sha256: str) -> bool:
    """Whether the database at ``db`` holds any prediction of this model (False when it does not exist)."""
    if not Path(db).exists():
        return False
    con = connect(db, read_only=True)
    try:
        if "predictions" not in _tables(con):
            return False
        return con.execute("select count(*) > 0 from predictions where model_sha256 = ?", [model_sha256]).fetchone()[0]
    finally:
        con.close()


def done_keys(con, model_sha256s: Iterable[str]) -> set[tuple[str, str]]:
    """(uri, etag) pairs that need no new read: predicted with every given model, or skipped
    for a reason that a re-read would not change."""
    shas = sorted(set(model_sha256s))
    done = set(
        con.execute(
            """
            select uri, etag from predictions
            where model_sha256 in (select unnest(?::varchar[]))
            group by uri, etag
            having count(distinct model_sha256) = ?
            """,
            [shas, len(shas)],
        ).fetchall()
    )
    done.update(con.execute("select uri, etag from skipped where reason <> 'fetch_error'").fetchall())
    return done


def orientation_sampled_count(con, model_sha256: str, widths: tuple[int, ...] | None = None) -> int:
    """Objects already in this model's orientation sample (any audited version of them: a replaced
    version's sample counts until the next fit, which reads only current versions). ``widths``: the
    vector lengths the probes can read (the registry's turned columns, or the whole embedding); a
    sample written when the registry named other turned columns is not counted, so that new objects
    refill the sample instead."""
    return con.execute(
        """select count(distinct s.uri) from orientation_samples as s
           join images as i on i.uri = s.uri and i.etag = s.etag
           where s.model_sha256 = ? and (?::integer[] is null or list_contains(?::integer[], len(s.vector)))""",
        [model_sha256, None if widths is None else list(widths), None if widths is None else list(widths)],
    ).fetchone()[0]


def load_parts(con, parts: dict[str, list[str]]) -> dict[str, int]:
    """Insert the rows of Parquet parts that are not in the tables yet; returns rows added per kind."""
    added = {}
    for kind in KINDS:
        files = _existing(con, parts.get(kind, []))
        if not files:
            added[kind] = 0
            continue
        cols = SCHEMAS[kind].names
        keys = LOAD_KEYS[kind]
        col_list = ", ".join(f'"{c}"' for c in cols)
        on = " and ".join(f"t.{k} = p.{k}" for k in keys)
        before = con.execute(f"select count(*) from {kind}").fetchone()[0]
        con.execute(
            f"""
            insert into {kind} ({col_list})
            select {", ".join(f'p."{c}"' for c in cols)}
            from (
                select * from read_parquet(?, hive_partitioning = false)
                qualify row_number() over (partition by {", ".join(keys)}) = 1
            ) as p
            where not exists (select 1 from {kind} as t where {on})
            """,
            [files],
        )
        added[kind] = con.execute(f"select count(*) from {kind}").fetchone()[0] - before
    return added


def _is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def _part_key(path: str) -> str:
    """A part's name in ``loaded_parts``: a local part's resolved path, another store's URL."""
    if _is_url(path):
        return str(path)
    return str(Path(out_store(path)[1] if str(path).startswith("file://") else path).resolve())


def _existing(con, paths: Iterable[str]) -> list[str]:
    """The parts of ``paths`` that exist, as DuckDB reads them; the filesystem of each other store
    is registered with ``con`` (DuckDB's httpfs is never downloaded: autoinstall stays off)."""
    found = []
    for p in paths:
        if not p:
            continue
        if not _is_url(p):
            local = _part_key(p)
            if Path(local).exists():
                found.append(local)
            continue
        fs, root, _ = out_store(p)
        # The workers wrote these objects: a listing this process cached earlier may not show them.
        fs.invalidate_cache(root.rsplit("/", 1)[0])
        if fs.exists(root):
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            if protocol not in con.list_filesystems():
                con.register_filesystem(fs)
            found.append(str(p))
    return found


def unloaded_parts(con, out_dir: str | Path) -> dict[str, list[str]]:
    """Part files under ``out_dir`` (a folder or any fsspec URL) that were never loaded (a run that
    crashed after writing them)."""
    loaded = {r[0] for r in con.execute("select path from loaded_parts").fetchall()}
    found: dict[str, list[str]] = {}
    fs, root, local = out_store(out_dir)
    if not local:
        fs.invalidate_cache(root)
    for kind in KINDS:
        if local:
            paths = [str(p.resolve()) for p in sorted((Path(root) / kind).glob("run_id=*/part-*.parquet"))]
        else:
            paths = [fs.unstrip_protocol(p) for p in sorted(fs.glob(f"{root}/{kind}/run_id=*/part-*.parquet"))]
        for p in paths:
            if p not in loaded:
                found.setdefault(kind, []).append(p)
    return found


def load_and_record(con, parts: dict[str, list[str]]) -> dict[str, int]:
    """Load parts (idempotently) and record them as loaded, in one transaction."""
    con.execute("begin transaction")
    try:
        added = load_parts(con, parts)
        now = utcnow()
        rows = [(_part_key(p), kind, now) for kind, paths in parts.items() for p in _existing(con, paths)]
        if rows:
            con.executemany("insert or ignore into loaded_parts values (?, ?, ?)", rows)
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    return added


def load_thresholds(con, model_name: str, model_sha256: str, tasks: dict[str, Any]) -> None:
    """Copy a model's per-class thresholds from the registry into the thresholds table."""
    con.execute("delete from thresholds where model_sha256 = ?", [model_sha256])
    _insert_rows(con, "thresholds", [
        (model_name, model_sha256, task, cls, float(spec.thresholds.get(cls, 0.5)))
        for task, spec in tasks.items()
        for cls in spec.classes
    ])
    con.execute("delete from gates where model_sha256 = ?", [model_sha256])
    _insert_rows(con, "gates", [
        (model_name, model_sha256, task, spec.min_severity,
         spec.gate_policy.get("target_precision"), spec.gate_policy.get("prevalence"),
         spec.class_thresholds, spec.lake_min_severity, spec.lake_rule, spec.lake_weight,
         spec.lake_prior_images, spec.lake_distrust_scale, list(spec.lake_confusable),
         spec.lake_confusable_min_severity)
        for task, spec in tasks.items()
    ])
    con.execute("delete from label_gates where model_sha256 = ?", [model_sha256])
    _insert_rows(con, "label_gates", [
        (model_name, model_sha256, task, cls, gate)
        for task, spec in tasks.items()
        for cls, gate in spec.label_gates.items()
    ])


def _insert_rows(con, table: str, rows: list[tuple]) -> None:
    # One multi-row INSERT: DuckDB's executemany costs ~2 ms a row.
    if not rows:
        return
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    con.execute(f'insert into "{table}" values ' + ", ".join([one] * len(rows)), [v for r in rows for v in r])


def load_labels(con, table, source_file: str) -> int:
    """Load an external label table (from tasks.labels.read_label_file), replacing by key: a key
    (uri or sop_instance_uid) keeps one row, its latest labels. Rows whose labels are already
    there are left alone (their loaded_at too), so loading the same file every run adds and
    changes nothing. Returns the rows added or replaced.

    Older databases appended every load; their superseded rows (all but the latest per key) are
    dropped here first.
    """
    same_key = "l.uri is not distinct from n.uri and l.sop_instance_uid is not distinct from n.sop_instance_uid"
    same_labels = " and ".join(f"l.{c} is not distinct from n.{c}" for c in ("body_part", "projection", "orientation"))
    con.register("_new_labels", table)
    try:
        con.execute("begin transaction")
        con.execute(
            """
            delete from labels where rowid in (
                select rowid from (
                    select rowid, row_number() over (partition by uri, sop_instance_uid order by loaded_at desc) as n
                    from labels
                ) where n > 1
            )
            """
        )
        # One row per key of the file (its last, as a load in file order would have kept).
        con.execute(
            f"""
            create or replace temp table _changed_labels as
            select n.* exclude (line, last_line) from (
                select *, max(line) over (partition by uri, sop_instance_uid) as last_line
                from (select *, row_number() over () as line from _new_labels)
            ) as n
            where line = last_line
            and not exists (select 1 from labels as l where {same_key} and {same_labels})
            """
        )
        con.execute(f"delete from labels as l where exists (select 1 from _changed_labels as n where {same_key})")
        con.execute(
            """
            insert into labels
            select uri, sop_instance_uid, body_part, projection, orientation, ?, ?
            from _changed_labels
            """,
            [source_file, utcnow()],
        )
        n = con.execute("select count(*) from _changed_labels").fetchone()[0]
        con.execute("drop table _changed_labels")
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
        con.unregister("_new_labels")
    return n


def start_run(con, run_id: str, lake: str, models: list[dict[str, str]]) -> None:
    con.execute(
        "insert into runs (run_id, started_at, lake, status, models) values (?, ?, ?, 'running', ?)",
        [run_id, utcnow(), lake, json.dumps(models)],
    )


def finish_run(con, run_id: str, **counts: Any) -> None:
    sets = ", ".join(f"{k} = ?" for k in counts)
    con.execute(
        f"update runs set finished_at = ?, {sets} where run_id = ?",
        [utcnow(), *counts.values(), run_id],
    )
