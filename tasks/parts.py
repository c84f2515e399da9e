"""Parquet parts, written by the workers: one file per shard and table kind, published atomically.

Workers only write Parquet; the flow process loads the parts into DuckDB (tasks/database.py). The
Arrow schemas below are the tables' columns in sql/tables, in order and type
(tests/test_write.py compares them column by column).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

# Part kinds in load order: an image row is loaded before anything that refers to it.
KINDS = ("images", "predictions", "skipped", "thumbnails", "embeddings", "orientation_samples")

# Rows per Parquet row group in a part: what a worker buffers per kind before writing.
ROW_GROUP_ROWS = 512

PROBABILITIES_TYPE = pa.map_(pa.string(), pa.float32())

SCHEMAS: dict[str, pa.Schema] = {
    "images": pa.schema(
        [
            ("uri", pa.string()),
            ("etag", pa.string()),
            ("size_bytes", pa.int64()),
            ("sop_instance_uid", pa.string()),
            ("study_instance_uid", pa.string()),
            ("series_instance_uid", pa.string()),
            ("patient_key", pa.string()),
            ("modality", pa.string()),
            ("body_part_examined", pa.string()),
            ("view_position", pa.string()),
            ("patient_orientation", pa.string()),
            ("series_description", pa.string()),
            ("protocol_name", pa.string()),
            ("study_description", pa.string()),
            ("institution_name", pa.string()),
            ("manufacturer", pa.string()),
            ("rows", pa.int32()),
            ("columns", pa.int32()),
            ("photometric_interpretation", pa.string()),
            ("transfer_syntax_uid", pa.string()),
            ("bits_stored", pa.int32()),
            ("number_of_frames", pa.int32()),
            ("study_month", pa.string()),
            ("label_body_part", pa.string()),
            ("label_body_part_source", pa.string()),
            ("label_projection", pa.string()),
            ("label_projection_source", pa.string()),
            ("label_orientation", pa.string()),
            ("label_orientation_source", pa.string()),
            ("header_json", pa.string()),
            ("audited_at", pa.timestamp("us", tz="UTC")),
            ("run_id", pa.string()),
        ]
    ),
    "predictions": pa.schema(
        [
            ("uri", pa.string()),
            ("etag", pa.string()),
            ("sop_instance_uid", pa.string()),
            ("task", pa.string()),
            ("predicted", pa.string()),
            ("probability", pa.float32()),
            ("probabilities", PROBABILITIES_TYPE),
            ("model", pa.string()),
            ("model_sha256", pa.string()),
            ("predicted_at", pa.timestamp("us", tz="UTC")),
            ("run_id", pa.string()),
        ]
    ),
    "thumbnails": pa.schema(
        [
            ("uri", pa.string()),
            ("etag", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("jpeg", pa.binary()),
        ]
    ),
    "embeddings": pa.schema(
        [
            ("uri", pa.string()),
            ("etag", pa.string()),
            ("model_sha256", pa.string()),
            ("vector", pa.list_(pa.float32())),
            ("run_id", pa.string()),
        ]
    ),
    "orientation_samples": pa.schema(
        [
            ("uri", pa.string()),
            ("etag", pa.string()),
            ("model_sha256", pa.string()),
            ("turn", pa.string()),
            ("vector", pa.list_(pa.float32())),
            ("run_id", pa.string()),
        ]
    ),
    "skipped": pa.schema(
        [
            ("uri", pa.string()),
            ("etag", pa.string()),
            ("size_bytes", pa.int64()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("skipped_at", pa.timestamp("us", tz="UTC")),
            ("run_id", pa.string()),
        ]
    ),
}

def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def out_store(out_dir: str | Path) -> tuple[Any, str, bool]:
    """(fsspec filesystem, root path inside it, whether it is the local disk) of ``--out``: a
    folder, ``file://`` URL, ``s3://bucket/prefix`` or any fsspec URL. Endpoints and credentials
    come from the environment and fsspec's configuration, never from parameters."""
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    fs, root = url_to_fs(str(out_dir))
    return fs, root.rstrip("/") or root, isinstance(fs, LocalFileSystem)


def local_out(out_dir: str | Path) -> str | None:
    """The local folder of ``--out``, or None when it is on another store."""
    _, root, local = out_store(out_dir)
    return root if local else None


def part_path(out_dir: str | Path, kind: str, run_id: str, shard_id: str) -> Path | str:
    """``OUT/<kind>/run_id=<run>/part-<shard>.parquet`` (hive-partitioned by run): a Path on the
    local disk, else the part's URL (``s3://bucket/prefix/...``)."""
    fs, root, local = out_store(out_dir)
    rel = f"{kind}/run_id={run_id}/part-{shard_id}.parquet"
    return Path(root) / rel if local else fs.unstrip_protocol(f"{root}/{rel}")


def _publish(fs, tmp: Path, url: str) -> None:
    """Upload the complete local file ``tmp`` as the object ``url``: an object store shows an
    object only once its PUT (or multipart upload) completes, so nothing half-written ever
    appears under the final key, and no rename is needed (object stores have none that is atomic)."""
    fs.put_file(str(tmp), url)
    with contextlib.suppress(Exception):  # a later listing by this process must see the new object
        fs.invalidate_cache(url.rsplit("/", 1)[0])


class PartWriter:
    """One shard's rows of one kind, streamed to Parquet a row group at a time, published atomically.

    Rows are buffered only up to ``row_group_rows``, so a worker's memory does not grow with the
    shard size. The file is written under a temporary name and renamed by :meth:`close` after an
    fsync: a reader (or a crash) never sees a half-written part under the final name. A part with
    no rows is never created.
    """

    def __init__(self, out_dir: str | Path, kind: str, run_id: str, shard_id: str, row_group_rows: int = ROW_GROUP_ROWS):
        self.schema = SCHEMAS[kind]
        self.final = part_path(out_dir, kind, run_id, shard_id)
        self.fs = None
        if isinstance(self.final, Path):
            self.tmp = self.final.with_name(f".{self.final.name}.{uuid.uuid4().hex}.tmp")
        else:  # an object store: written on this worker's own disk, uploaded whole by close()
            self.fs = out_store(out_dir)[0]
            self.tmp = Path(tempfile.gettempdir()) / f"radlint-{kind}-{shard_id}-{uuid.uuid4().hex}.parquet.tmp"
        self.row_group_rows = row_group_rows
        self.rows: list[dict[str, Any]] = []
        self.n_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.n_rows += 1
        if len(self.rows) >= self.row_group_rows:
            self._flush()

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def _flush(self) -> None:
        if not self.rows:
            return
        if self._writer is None:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
        self.rows.clear()

    def close(self) -> Path | str | None:
        """Publish the part; returns its path (its URL on an object store), or None when no row
        was added."""
        try:
            self._flush()
            if self._writer is None:
                return None
            self._writer.close()
            self._writer = None
            if self.fs is not None:
                _publish(self.fs, self.tmp, self.final)
                return self.final
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.final)
            return self.final
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop what was written (no part is published)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        self.rows.clear()
        if self.tmp.exists():
            self.tmp.unlink()


def write_manifest(shards: list[list[Any]], out_dir: str | Path, run_id: str) -> Path | str:
    """The run's shard lists as one Parquet file (shard, uri, size_bytes, etag), for tasks to read;
    returns its path (its URL when ``out_dir`` is on an object store, where workers read it).

    Row group ``i`` holds shard ``i``, so a task reads only its own shard instead of decoding the
    whole run's list (100k objects: ~48 ms per shard otherwise).
    """
    schema = pa.schema([("shard", pa.int32()), ("uri", pa.string()), ("size_bytes", pa.int64()), ("etag", pa.string())])
    fs, root, local = out_store(out_dir)
    name = f"manifests/run_id={run_id}.parquet"
    path: Path | str = Path(root) / name if local else fs.unstrip_protocol(f"{root}/{name}")
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    else:
        tmp = Path(tempfile.gettempdir()) / f"radlint-manifest-{uuid.uuid4().hex}.parquet.tmp"
    with pq.ParquetWriter(tmp, schema) as writer:
        for i, objs in enumerate(shards):
            writer.write_table(
                pa.table(
                    {
                        "shard": [i] * len(objs),
                        "uri": [o.uri for o in objs],
                        "size_bytes": [o.size_bytes for o in objs],
                        "etag": [o.etag for o in objs],
                    },
                    schema=schema,
                )
            )
    if isinstance(path, Path):
        os.replace(tmp, path)
        return path
    try:
        _publish(fs, tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_manifest(path: str | Path, shard: int) -> list:
    """The objects of one shard of a manifest written by :func:`write_manifest`."""
    from radlint.tasks.discover import ObjectRef

    fs, root, local = out_store(path)
    if local:
        table = pq.ParquetFile(root).read_row_group(shard)
    else:  # range reads of the footer and this row group only
        with fs.open(root, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(shard)
    return [
        ObjectRef(u, int(s), e)
        for u, s, e in zip(
            table.column("uri").to_pylist(), table.column("size_bytes").to_pylist(), table.column("etag").to_pylist()
        )
    ]
