"""Every option of an audit and its one default, in one typed object.

The CLI derives its argparse defaults from :class:`AuditOptions`, the flow's signature takes its
defaults from the same fields (Prefect parameters stay plain values, so deployments can set them)
and builds the object inside; demo, bench and tests build it directly. No module imports here:
the CLI reads these defaults before it imports anything heavy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

EXECUTORS = ("auto", "dask", "local")
DEVICES = ("auto", "cpu", "cuda")
# Frames above about 9k x 9k are refused before decoding.
DEFAULT_MAX_PIXELS = 80_000_000
DEFAULT_BATCH_SIZE = 32
# Object bytes a worker holds at once (the chunk being decoded plus the one fetched ahead).
DEFAULT_MAX_INFLIGHT_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class AuditOptions:
    """One audit of ``lake`` into the DuckDB file ``db``.

    Attributes:
        lake: a folder, ``file://`` URL, ``s3://bucket/prefix`` or any fsspec URL.
        db: the DuckDB file (created when missing).
        out: folder of the Parquet parts; None: ``<db>_parts`` beside the database.
        labels_file: CSV or Parquet label table keyed by sop_instance_uid or uri.
        dask_address: an existing Dask scheduler to run the shards on.
        workers: local Dask worker processes; None: the CPU count, at most 4.
        executor: ``dask`` runs shards on the cluster at ``dask_address`` or on a new LocalCluster
            of ``workers`` processes; ``local`` in the flow's process; ``auto`` on the cluster when
            ``dask_address`` is given or the estimated work is more than a cluster's start-up wins back.
        batch_size: images per inference batch.
        shard_size: objects per Prefect task; None sizes shards to about a minute of work each,
            500-5,000 objects, at least two per worker.
        device: ONNX Runtime device (``auto``, ``cpu``, ``cuda``).
        max_pixels: frames larger than this are ``too_large`` before decoding.
        max_inflight_bytes: object bytes a shard holds at once; a larger object is ``too_large``.
        registry: model registry YAML; None: the packaged one.
        report: write the HTML review report here when the run ends.
        lock_wait_seconds: how long to wait when another audit holds the database.

    Raises:
        ValueError: an option outside its allowed values (at construction).
    """

    lake: str
    db: str
    out: str | None = None
    labels_file: str | None = None
    dask_address: str | None = None
    workers: int | None = None
    executor: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    shard_size: int | None = None
    device: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    registry: str | None = None
    report: str | None = None
    lock_wait_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, not {self.executor!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        for name in ("workers", "batch_size", "shard_size", "max_pixels", "max_inflight_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        # NaN compares false with every deadline: it would neither wait nor fail.
        if not math.isfinite(self.lock_wait_seconds) or self.lock_wait_seconds < 0:
            raise ValueError(f"lock_wait_seconds must be a finite number >= 0, not {self.lock_wait_seconds!r}")

    def parameters(self) -> dict[str, Any]:
        """The options as the audit flow's keyword parameters (plain values)."""
        return dataclasses.asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of option ``name``.

        Raises:
            KeyError: ``name`` has no default (``lake``, ``db``) or is not an option.
        """
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        if field.default is dataclasses.MISSING:
            raise KeyError(f"option {name!r} has no default")
        return field.default
