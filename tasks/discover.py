"""List the objects of a lake through fsspec with size and etag (or mtime). Never reads pixels."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator
from urllib.parse import unquote

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


class LakeError(RuntimeError):
    """The lake cannot be listed (missing, unreachable, no permission)."""


@dataclass(frozen=True)
class ObjectRef:
    """One object of the lake. ``etag`` is the store's ETag or, without one, ``size-mtime``."""

    uri: str
    size_bytes: int
    etag: str


def normalize_lake(lake: str) -> str:
    """A plain path becomes an absolute ``file://`` URL; URLs pass through."""
    if "://" in lake:
        return lake.rstrip("/") if not lake.endswith(":///") else lake
    return "file://" + os.path.abspath(os.path.expanduser(lake))


def open_lake(lake: str, storage_options: dict[str, Any] | None = None):
    """Return (filesystem, root path inside it, protocol). Endpoints and credentials come
    from the environment, fsspec config (FSSPEC_CONFIG_DIR) or ``storage_options``."""
    url = normalize_lake(lake)
    try:
        fs, root = url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise LakeError(f"cannot open lake {lake!r}: {exc}") from exc
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return fs, root, protocol


def uri_for(protocol: str, path: str) -> str:
    """The ``uri`` of the object at ``path`` of a filesystem of ``protocol``: ``protocol://path``.

    Local paths are bytes, not always UTF-8 (a name written as latin-1 arrives from the OS as
    surrogate escapes, which no Parquet or DuckDB string can hold): in ``file://`` uris each byte
    that is not valid UTF-8, and each ``%``, is written as ``%XX``, so every path has one uri and
    :func:`path_for_uri` recovers it exactly. Other stores' keys are UTF-8 and are kept as listed.
    """
    if protocol in ("file", "local"):
        path = _percent_encode_path(path)
        return "file://" + path if path.startswith("/") else "file:///" + path
    return f"{protocol}://{path}"


def _percent_encode_path(path: str) -> str:
    if "%" not in path and path.isascii():
        return path
    out = []
    for ch in path:
        if ch == "%":
            out.append("%25")
        elif "\udc80" <= ch <= "\udcff":  # os.fsdecode's escape of an undecodable byte
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        else:
            out.append(ch)
    return "".join(out)


def path_for_uri(uri: str) -> tuple[str, str]:
    """(protocol, path inside its filesystem) of a uri written by :func:`uri_for`.

    The path is the text after ``protocol://`` as listed, never re-parsed as a URL: ``::``
    (fsspec's URL chaining) and ``?versionId=`` (s3fs's version syntax) are characters of a key
    here, and parsing them would read another object.
    """
    protocol, sep, path = uri.partition("://")
    if not sep:
        raise ValueError(f"not an object uri: {uri!r}")
    if protocol in ("file", "local"):
        path = unquote(path, errors="surrogateescape") if "%" in path else path
    return protocol, path


def _etag(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "crc32c"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    if hasattr(mtime, "timestamp"):
        mtime = f"{mtime.timestamp():.6f}"
    return f"{int(info.get('size') or 0)}-{mtime}"


def find_local(root: str) -> dict[str, dict[str, Any]]:
    """The regular files under a local ``root`` with their size and mtime, as fsspec's
    ``LocalFileSystem.find(root, detail=True)`` lists them (symbolic links are neither listed nor
    followed; unreadable folders are left out), in about a third of the time: one lstat per entry
    and no full info dict (100k files: 1.12 -> 0.37 s here)."""
    found: dict[str, dict[str, Any]] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found[entry.path] = {"type": "file", "size": st.st_size, "mtime": st.st_mtime}
                except FileNotFoundError:  # removed while listing
                    pass
    return found


def discover(lake: str, storage_options: dict[str, Any] | None = None, exclude: Iterable[str] = ()) -> list[ObjectRef]:
    """List every file under ``lake`` (recursively), sorted by uri.

    ``exclude``: paths or URLs (files, or folders / prefixes with everything under them) that are
    not lake objects although they lie in it: the audit's own database, its WAL, lock, salt and
    parts (``--out s3://bucket/lake/_parts`` under an ``s3://bucket/lake`` lake included).

    Raises:
        LakeError: when the lake does not exist or cannot be listed.
    """
    fs, root, protocol = open_lake(lake, storage_options)
    try:
        if not fs.exists(root):
            raise LakeError(f"lake not found: {lake}")
        if fs.isfile(root):
            found = {root: fs.info(root)}
        elif isinstance(fs, LocalFileSystem):
            found = find_local(root)
        else:
            found = fs.find(root, detail=True, withdirs=False)
    except LakeError:
        raise
    except Exception as exc:  # botocore / OS errors differ per backend
        raise LakeError(f"cannot list lake {lake!r}: {type(exc).__name__}: {exc}") from exc
    skip = _excluded(root, exclude) if isinstance(fs, LocalFileSystem) else _excluded_urls(fs, exclude)
    refs = []
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        if skip is not None and skip(path):
            continue
        name = path.rsplit("/", 1)[-1]
        # Hidden files and our own temporary parts are never lake objects.
        if name.startswith("."):
            continue
        refs.append(ObjectRef(uri_for(protocol, path), int(info.get("size") or 0), _etag(info)))
    refs.sort(key=lambda r: r.uri)
    return refs


def _excluded(root: str, exclude: Iterable[str]):
    """A test of listed local paths against ``exclude``, or None when nothing lies under ``root``.

    Both the paths as given and as resolved are matched, also when the lake was named through a
    symbolic link (listed paths start with ``root`` as given)."""
    real_root = os.path.realpath(root)
    targets: set[str] = set()
    for path in exclude:
        if "://" in str(path):  # another store's URL (tasks.database.own_paths): never under a local root
            continue
        for p in {os.path.abspath(path), os.path.realpath(path)}:
            targets.add(p)
            if real_root != root and (p == real_root or p.startswith(real_root + os.sep)):
                targets.add(root + p[len(real_root):])
    return _under_any({t for t in targets if t == root or t.startswith(root.rstrip(os.sep) + os.sep)}, os.sep)


def _excluded_urls(fs, exclude: Iterable[str]):
    """Like :func:`_excluded` for an object store: the ``exclude`` URLs of ``fs``'s protocol."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return _under_any({fs._strip_protocol(u) for u in exclude
                       if "://" in str(u) and str(u).partition("://")[0] in protocols}, "/")


def _under_any(targets: set[str], sep: str):
    """A test of a listed path: is it one of ``targets`` or under one; None when there are none."""
    targets = {t.rstrip(sep) for t in targets}
    if not targets:
        return None
    prefixes = tuple(t + sep for t in targets)
    return lambda path: path in targets or path.startswith(prefixes)


def diff(objects: Iterable[ObjectRef], done: set[tuple[str, str]]) -> list[ObjectRef]:
    """Objects whose (uri, etag) pair is not in ``done`` (already audited or skipped)."""
    return [o for o in objects if (o.uri, o.etag) not in done]


def make_shards(objects: list[ObjectRef], shard_size: int) -> Iterator[list[ObjectRef]]:
    """Consecutive chunks of at most ``shard_size`` objects."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    for start in range(0, len(objects), shard_size):
        yield objects[start : start + shard_size]


# Rough costs of an audit in one process on this project's 2-core machine (bench/run.py in-task
# rates, bench/notes-2026.md, stop 12, radlint-multihead-v3): ~5 ms of parsing, thumbnail and
# inference per object, plus a cost per MB that depends on the transfer syntax, because radlint
# decodes at reduced resolution: strided reads of native pixels cost ~1 ms per MB, JPEG-LS ~70.
# SECONDS_PER_MB is used when the transfer syntax is unknown: a middle guess.
SECONDS_PER_OBJECT = 0.005
SECONDS_PER_MB = 0.03
SECONDS_PER_MB_BY_SYNTAX = {
    "1.2.840.10008.1.2": 0.0011,  # implicit VR little endian
    "1.2.840.10008.1.2.1": 0.0011,  # explicit VR little endian
    "1.2.840.10008.1.2.2": 0.0011,  # explicit VR big endian
    "1.2.840.10008.1.2.5": 0.0052,  # RLE lossless
    "1.2.840.10008.1.2.4.90": 0.017,  # JPEG 2000 lossless (decoded at a reduced level)
    "1.2.840.10008.1.2.4.91": 0.017,  # JPEG 2000
    "1.2.840.10008.1.2.4.57": 0.054,  # JPEG lossless
    "1.2.840.10008.1.2.4.70": 0.054,  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": 0.070,  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": 0.070,  # JPEG-LS near-lossless
}
# A sample of the objects' file meta (the first few KB of each) sets the cost per MB when the
# choice between running here and starting Dask workers depends on it.
PROBE_OBJECTS = 8
PROBE_BYTES = 4096


def estimated_seconds(objects: Iterable[ObjectRef], seconds_per_mb: float = SECONDS_PER_MB) -> float:
    """Seconds an audit of ``objects`` is expected to take in one process here."""
    n = total = 0
    for o in objects:
        n += 1
        total += o.size_bytes
    return n * SECONDS_PER_OBJECT + total / 1e6 * seconds_per_mb


def probe_seconds_per_mb(objects: list[ObjectRef], storage_options: dict[str, Any] | None = None,
                         k: int = PROBE_OBJECTS) -> float | None:
    """Cost per MB of ``objects`` from the transfer syntaxes of ``k`` of them spread over the list
    (size-weighted; an unknown or unreadable syntax counts SECONDS_PER_MB), or None when no sampled
    object could be read. Reads only file meta; a storage error is never raised."""
    from radlint.tasks.dicom_io import transfer_syntax_of

    if not objects:
        return None
    sample = objects[:: max(1, len(objects) // k)][:k]
    try:
        fs, _ = filesystem_for_uri(sample[0].uri, storage_options)
        paths = [filesystem_for_uri(o.uri, storage_options)[1] for o in sample]
        heads = fs.cat_ranges(paths, [0] * len(paths), [PROBE_BYTES] * len(paths), on_error="return")
    except Exception:  # any backend's error: the caller falls back to the size-only estimate
        return None
    weighted = size = 0.0
    for obj, head in zip(sample, heads):
        if not isinstance(head, bytes):
            continue
        ts = transfer_syntax_of(head)
        weighted += obj.size_bytes * SECONDS_PER_MB_BY_SYNTAX.get(ts or "", SECONDS_PER_MB)
        size += obj.size_bytes
    if size == 0:
        return None
    return weighted / size


# Automatic shard size: about a minute of one core's work per shard, so the ~0.1-0.3 s each Prefect
# task costs stays below 1 %, within the 500-5,000 objects of docs/architecture.md, and at least two shards per
# Dask worker so that none idles while another finishes a long shard.
SHARD_TARGET_SECONDS = 60.0
SHARD_MIN_OBJECTS = 500
SHARD_MAX_OBJECTS = 5000


def shard_size_for(objects: list[ObjectRef], workers: int, requested: int | None = None,
                   seconds_per_mb: float = SECONDS_PER_MB, shards_per_worker: int = 2) -> int:
    """Objects per shard for ``objects`` on ``workers`` processes; ``requested`` overrides the estimate.
    ``shards_per_worker``: at least this many shards per worker (1 where shards run one after
    another in one process: a second shard would only add a Prefect task run)."""
    n = len(objects)
    if n == 0:
        return 1
    if requested is not None:
        if requested < 1:
            raise ValueError("shard_size must be >= 1")
        size = requested
    else:
        per_object = estimated_seconds(objects, seconds_per_mb) / n
        size = min(SHARD_MAX_OBJECTS, max(SHARD_MIN_OBJECTS, round(SHARD_TARGET_SECONDS / per_object)))
    return max(1, min(size, -(-n // (shards_per_worker * max(1, workers)))))


def cat_objects(fs, paths: list[str]) -> dict[str, Any]:
    """``{path: bytes or the exception}`` of each listed object, read by exactly that path.

    Not ``fs.cat(paths)``: it expands glob characters (a key ``a[1].dcm`` reads ``a1.dcm``), and
    s3fs cuts any key at ``?versionId=`` (``cr/k?versionId=abc.dcm`` reads ``cr/k``); such keys
    are fetched by bucket and key instead.
    """
    from fsspec.asyn import AsyncFileSystem, sync

    if not isinstance(fs, AsyncFileSystem):
        out: dict[str, Any] = {}
        for path in paths:
            try:
                out[path] = fs.cat_file(path)
            except Exception as exc:  # returned per object, as fs.cat(on_error="return") would
                out[path] = exc
        return out

    exact = "s3" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))

    async def read_all() -> list:
        return await asyncio.gather(
            *(_s3_get_exact(fs, p) if exact and "?versionId=" in p else fs._cat_file(p) for p in paths),
            return_exceptions=True,
        )

    results = sync(fs.loop, read_all)
    for value in results:
        if isinstance(value, BaseException) and not isinstance(value, Exception):
            raise value  # cancellation or interrupt: not one object's failure
    return dict(zip(paths, results))


def cat_heads(fs, paths: list[str], nbytes: int) -> dict[str, Any]:
    """``{path: the first nbytes bytes or the exception}``, read by exactly that path (as
    :func:`cat_objects`)."""
    from fsspec.asyn import AsyncFileSystem, sync

    if not isinstance(fs, AsyncFileSystem):
        out: dict[str, Any] = {}
        for path in paths:
            try:
                out[path] = fs.cat_file(path, start=0, end=nbytes)
            except Exception as exc:
                out[path] = exc
        return out

    exact = "s3" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))

    async def read_all() -> list:
        return await asyncio.gather(
            *(_s3_get_exact(fs, p, nbytes) if exact and "?versionId=" in p else fs._cat_file(p, start=0, end=nbytes)
              for p in paths),
            return_exceptions=True,
        )

    results = sync(fs.loop, read_all)
    for value in results:
        if isinstance(value, BaseException) and not isinstance(value, Exception):
            raise value
    return dict(zip(paths, results))


async def _s3_get_exact(fs, path: str, nbytes: int | None = None) -> bytes:
    bucket, _, key = path.partition("/")
    extra = {"Range": f"bytes=0-{nbytes - 1}"} if nbytes else {}
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
    body = resp["Body"]
    try:
        return await body.read()
    finally:
        body.close()


def filesystem_for_uri(uri: str, storage_options: dict[str, Any] | None = None):
    """(fs, path) for a full object URI, as written by :func:`discover` (see :func:`path_for_uri`)."""
    protocol, path = path_for_uri(uri)
    return fsspec.filesystem(protocol, **(storage_options or {})), path


__all__ = [
    "LakeError",
    "cat_heads",
    "cat_objects",
    "ObjectRef",
    "diff",
    "discover",
    "estimated_seconds",
    "probe_seconds_per_mb",
    "shard_size_for",
    "filesystem_for_uri",
    "normalize_lake",
    "open_lake",
    "make_shards",
    "path_for_uri",
    "uri_for",
]
