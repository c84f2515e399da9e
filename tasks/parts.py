"""Parquet parts, written by the workers: one file per shard and table kind, published atomically.

Workers only write Parquet; the flow process loads the parts into DuckDB (tasks/database.py). The
Arrow schemas below are the tables' columns in sql/tables, in order and type
(tests/test_write.py compares them column by column).
"""

from __future__ import annotations

import contextlib
import os
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


def part_path(out_dir: str | Path, kind: str, run_id: str, shard_id: str) -> Path:
    """``OUT/<kind>/run_id=<run>/part-<shard>.parquet`` (hive-partitioned by run)."""
    return Path(out_dir) / kind / f"run_id={run_id}" / f"part-{shard_id}.parquet"


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
        self.tmp = self.final.with_name(f".{self.final.name}.{uuid.uuid4().hex}.tmp")
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
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
        self.rows.clear()

    def close(self) -> Path | None:
        """Publish the part; returns its path, or None when no row was added."""
        try:
            self._flush()
            if self._writer is None:
                return None
            self._writer.close()
            self._writer = None
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


def write_manifest(shards: list[list[Any]], out_dir: str | Path, run_id: str) -> Path:
    """The run's shard lists as one Parquet file (shard, uri, size_bytes, etag), for tasks to read.

    Row group ``i`` holds shard ``i``, so a task reads only its own shard instead of decoding the
    whole run's list (100k objects: ~48 ms per shard otherwise).
    """
    schema = pa.schema([("shard", pa.int32()), ("uri", pa.string()), ("size_bytes", pa.int64()), ("etag", pa.string())])
    path = Path(out_dir) / "manifests" / f"run_id={run_id}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
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
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path, shard: int) -> list:
    """The objects of one shard of a manifest written by :func:`write_manifest`."""
    from radlint.tasks.discover import ObjectRef

    table = pq.ParquetFile(path).read_row_group(shard)
    return [
        ObjectRef(u, int(s), e)
        for u, s, e in zip(
            table.column("uri").to_pylist(), table.column("size_bytes").to_pylist(), table.column("etag").to_pylist()
        )
    ]
