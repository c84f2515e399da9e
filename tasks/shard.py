"""Audit one shard: fetch objects, decode, classify in batches, write one Parquet part per kind.

This is the body of the flow's only Prefect task. It is a plain function: tests call it
directly, and each bad object becomes a `skipped` row instead of an exception.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from radlint.tasks import dicom_io, infer, parts, preprocess, settings
from radlint.tasks.discover import ObjectRef, cat_heads, cat_objects, filesystem_for_uri
from radlint.tasks.options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_INFLIGHT_BYTES
from radlint.tasks.vocabulary import TURNS

log = logging.getLogger(__name__)

# Set by the audit command on Ctrl-C: a shard running in the audit's own process stops before its
# next object (its parts are not published), instead of finishing first.
STOP = threading.Event()

FETCH_CHUNK = 16  # objects fetched together; the next chunk is fetched while this one decodes
FETCH_ATTEMPTS = 4
# A worker holds at most max_inflight_bytes of objects (the chunk being decoded plus the one
# fetched ahead); an object larger than that alone is skipped as too_large, after its header was read.
# Objects larger than this have their header read first (HEAD_BYTES, growing to HEAD_MAX_BYTES
# while Pixel Data is not reached): not_dicom and too_large are decided without the body. Smaller
# ones (nearly every radiograph) are fetched whole: a second request would cost more than it saves.
PROBE_ABOVE_BYTES = 32 * 1024 * 1024
HEAD_BYTES = 64 * 1024
HEAD_MAX_BYTES = 8 * 1024 * 1024


@dataclass
class ShardResult:
    shard_id: str
    parts: dict[str, str] = field(default_factory=dict)
    n_objects: int = 0
    n_images: int = 0
    n_skipped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _verdicts(fs, objects: list[ObjectRef], paths: list[str], max_pixels: int,
              max_inflight_bytes: int) -> dict[str, dicom_io.Skip]:
    """Skips decided from the headers of the large objects, without fetching their bodies."""
    out: dict[str, dicom_io.Skip] = {}
    sizes = {p: o.size_bytes for o, p in zip(objects, paths)}
    pending = [p for p in paths if sizes[p] > PROBE_ABOVE_BYTES or sizes[p] > max_inflight_bytes]
    n = HEAD_BYTES
    while pending:
        try:
            heads = cat_heads(fs, pending, n)
        except Exception as exc:  # the body fetch reports the store's error
            heads = {p: exc for p in pending}
        more = []
        for p in pending:
            head = heads.get(p)
            verdict = dicom_io.READ_BODY
            if isinstance(head, bytes):
                verdict = dicom_io.header_verdict(head, len(head) < n or len(head) >= sizes[p], max_pixels)
                if verdict == dicom_io.READ_MORE:
                    verdict = dicom_io.READ_BODY if n >= HEAD_MAX_BYTES else verdict
            if isinstance(verdict, dicom_io.Skip):
                out[p] = verdict
            elif verdict == dicom_io.READ_MORE:
                more.append(p)
            elif sizes[p] > max_inflight_bytes:
                out[p] = dicom_io.Skip(
                    dicom_io.TOO_LARGE,
                    f"{sizes[p]} bytes, more than the {max_inflight_bytes} bytes a worker holds at once "
                    "(--max-inflight-mb)",
                )
        pending, n = more, n * 8
    return out


def _fetch_chunk(objects: list[ObjectRef], storage_options: dict | None,
                 max_pixels: int = dicom_io.DEFAULT_MAX_PIXELS,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES) -> list[bytes | Exception]:
    """Bytes of each object (or the exception; a dicom_io.Skip where its header decided), many
    paths at once where the store allows it."""
    if not objects:
        return []
    fs, _ = filesystem_for_uri(objects[0].uri, storage_options)
    paths = [filesystem_for_uri(o.uri, storage_options)[1] for o in objects]
    # fsspec shares one filesystem per process: in a long-lived one (a second audit in a Prefect
    # worker, a test) a folder listing cached earlier predates objects that arrived since, and
    # s3fs reports them as missing (FileNotFoundError, a fetch_error row). Dropping the cached
    # listings of these folders costs no request.
    for folder in {p.rsplit("/", 1)[0] for p in paths}:
        try:
            fs.invalidate_cache(folder)
        except Exception:  # a filesystem without a listing cache
            pass
    results: dict[str, Any] = _verdicts(fs, objects, paths, max_pixels, max_inflight_bytes)
    pending = [p for p in paths if p not in results]
    delay = 0.2
    for attempt in range(FETCH_ATTEMPTS if pending else 0):
        try:
            got = cat_objects(fs, pending)
        except Exception as exc:  # the whole batch call failed: retry everything
            got = {p: exc for p in pending}
        if not isinstance(got, dict):  # a single path returns bytes
            got = {pending[0]: got}
        retry = []
        for p in pending:
            value = got.get(p, FileNotFoundError(p))
            results[p] = value
            if isinstance(value, Exception) and not isinstance(value, FileNotFoundError):
                retry.append(p)
        if not retry:
            break
        pending = retry
        if attempt < FETCH_ATTEMPTS - 1:
            time.sleep(delay)
            delay *= 2
    return [results[p] for p in paths]


def _held_bytes(obj: ObjectRef, max_inflight_bytes: int) -> int:
    """Bytes fetching ``obj`` may hold: at most its header when it is over the bound (never read whole)."""
    return HEAD_MAX_BYTES if obj.size_bytes > max_inflight_bytes else obj.size_bytes


def _groups(objects: list[ObjectRef], max_inflight_bytes: int) -> list[list[ObjectRef]]:
    # Chunks grow 2, 4, 8 ... up to FETCH_CHUNK: decoding starts after two objects have arrived
    # instead of a whole chunk (16 uncompressed radiographs are ~160 MB, ~0.14 s from page cache).
    # Each holds at most half the bound, so it and the chunk fetched ahead fit in it together.
    budget = max(1, max_inflight_bytes // 2)
    groups: list[list[ObjectRef]] = []
    group: list[ObjectRef] = []
    held, size = 0, min(2, FETCH_CHUNK)
    for obj in objects:
        nbytes = _held_bytes(obj, max_inflight_bytes)
        if group and (len(group) >= size or held + nbytes > budget):
            groups.append(group)
            group, held, size = [], 0, min(2 * size, FETCH_CHUNK)
        group.append(obj)
        held += nbytes
    if group:
        groups.append(group)
    return groups


def _chunks(objects: list[ObjectRef], storage_options: dict | None,
            max_pixels: int = dicom_io.DEFAULT_MAX_PIXELS,
            max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES) -> Iterator[tuple[list[ObjectRef], list]]:
    """Yield (objects, payloads) chunk by chunk, fetching one chunk ahead in a thread while the
    two together stay within ``max_inflight_bytes``. The consumer clears each payload list when
    done with it, so that its bytes are not held while the next chunk after it is fetched."""
    groups = _groups(objects, max_inflight_bytes)
    if not groups:
        return
    fetch = functools.partial(_fetch_chunk, storage_options=storage_options, max_pixels=max_pixels,
                              max_inflight_bytes=max_inflight_bytes)

    def held(group: list[ObjectRef]) -> int:
        return sum(_held_bytes(o, max_inflight_bytes) for o in group)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="radlint-fetch") as pool:
        future = pool.submit(fetch, groups[0])
        for i, group in enumerate(groups):
            payloads = future.result() if future is not None else fetch(group)
            future = None
            if i + 1 < len(groups) and held(group) + held(groups[i + 1]) <= max_inflight_bytes:
                future = pool.submit(fetch, groups[i + 1])
            yield group, payloads
            del payloads


def prepare_object(
    payload: bytes, *, input_size: int, salt: str = "", max_pixels: int = dicom_io.DEFAULT_MAX_PIXELS
) -> tuple[dicom_io.DicomImage, np.ndarray, dict]:
    """One object's decoded image, model input and thumbnail. Raises dicom_io.Skip."""
    image = dicom_io.read_dicom(payload, salt=salt, max_pixels=max_pixels, target_size=input_size)
    display = preprocess.to_uint8(image.pixels)
    small = preprocess.resize_longest(display, input_size)
    x = preprocess.normalize(preprocess.pad_square(small, input_size))
    # The model's resized image is already thumbnail-sized: shrinking it (or
    # nothing) is cheaper than a second resize of the decoded image.
    thumb = preprocess.thumbnail_jpeg(small if max(small.shape) >= preprocess.THUMBNAIL_SIDE else display)
    return image, x, thumb


def _threads_help(payload) -> bool:
    """Native pixel data decodes in NumPy, which releases the GIL: two threads prepared 1.2-1.7x as
    many objects per second as one on 2 cores. The codecs here (OpenJPEG, CharLS, GDCM, RLE) hold
    it: two threads were 0.6-1.1x of one (bench/decode_threads.py, stop 13, four runs)."""
    return isinstance(payload, bytes) and dicom_io.transfer_syntax_of(payload[:4096]) in dicom_io.NATIVE_SYNTAXES


def orientation_sampled(uri: str, rate: float) -> bool:
    """Whether ``uri`` is in the self-supervised orientation sample at ``rate`` (0-1).

    A hash of the uri, not a random draw: the same object is in or out on every run and worker,
    so a re-run never adds a second sample of it.
    """
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    return int.from_bytes(hashlib.blake2b(uri.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big") < rate * 2**64


def _embedding_rows(entry, metas: list[dict[str, Any]], vectors: np.ndarray, run_id: str) -> list[dict[str, Any]]:
    return [
        {"uri": m["uri"], "etag": m["etag"], "model_sha256": entry.sha256, "vector": v, "run_id": run_id}
        for m, v in zip(metas, vectors.astype(np.float32))
    ]


def _prediction_rows(
    entry: infer.ModelEntry,
    metas: list[dict[str, Any]],
    probs: dict[str, np.ndarray],
    run_id: str,
    now,
) -> list[dict[str, Any]]:
    rows = []
    for task, spec in entry.tasks.items():
        p = probs[task]
        best = p.argmax(axis=1)
        for i, meta in enumerate(metas):
            rows.append(
                {
                    "uri": meta["uri"],
                    "etag": meta["etag"],
                    "sop_instance_uid": meta["sop_instance_uid"],
                    "task": task,
                    "predicted": spec.classes[int(best[i])],
                    "probability": float(p[i, best[i]]),
                    "probabilities": list(zip(spec.classes, (float(v) for v in p[i]))),
                    "model": entry.name,
                    "model_sha256": entry.sha256,
                    "predicted_at": now,
                    "run_id": run_id,
                }
            )
    return rows


def audit_shard(
    objects: list[ObjectRef],
    *,
    out_dir: str,
    run_id: str,
    shard_id: str,
    registry_path: str | None = None,
    salt_file: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    max_pixels: int = dicom_io.DEFAULT_MAX_PIXELS,
    storage_options: dict | None = None,
    threads: int = 0,
    decode_threads: int = 1,
    orientation_sample_rate: float = 0.0,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    model_sha256: str | None = None,
) -> dict[str, Any]:
    """Audit ``objects`` and write their parts under ``out_dir`` (a folder or any fsspec URL);
    returns a ShardResult dict.

    ``max_inflight_bytes``: object bytes held at once (fetched and fetched ahead); a larger object
    is a ``too_large`` row, decided from its header.

    Pixels are decoded at the lowest resolution the model input allows. ``decode_threads`` > 1
    reads native (uncompressed) pixel data that many objects at a time.
    ``salt_file``: the patient-key salt is read here (``RADLINT_PATIENT_SALT``, else this file),
    never passed in: task parameters are stored by Prefect (settings.salt_source).
    ``model_sha256``: the model the flow planned with; this worker's must be the same.

    Raises:
        settings.SaltError: when the worker finds no salt.
        infer.RegistryError: this worker's model is not ``model_sha256``.
    """
    started = time.perf_counter()
    salt = settings.read_salt(salt_file)
    entry = infer.default_model(registry_path or infer.REGISTRY_PATH)
    if model_sha256 and entry.sha256 != model_sha256:
        raise infer.RegistryError(
            f"this worker's model {entry.name} (sha256 {entry.sha256[:12]}) is not the flow's "
            f"({model_sha256[:12]}): install the same radlint version on every worker"
        )
    result = ShardResult(shard_id=shard_id, n_objects=len(objects))
    # Rows stream to their parts a row group at a time: memory does not grow with the shard size.
    # Images first, predictions next at publication: a loader that sees predictions has their image.
    kinds = ["images", "predictions", "thumbnails", "skipped"]
    if entry.embedding is not None:
        kinds += ["embeddings", "orientation_samples"]
    writers = {kind: parts.PartWriter(out_dir, kind, run_id, shard_id) for kind in kinds}
    images, predictions, thumbnails, skipped = (writers[k] for k in ("images", "predictions", "thumbnails", "skipped"))
    pending_inputs: list[np.ndarray] = []
    pending_meta: list[dict] = []

    def classify(inputs: list[np.ndarray], meta: list[dict]) -> None:
        batch = np.stack(inputs)
        probs, vectors = infer.predict_with_embedding(
            entry, batch, device=device, batch_size=batch_size, threads=threads
        )
        predictions.extend(_prediction_rows(entry, meta, probs, run_id, parts.utcnow()))
        if vectors is not None:
            writers["embeddings"].extend(_embedding_rows(entry, meta, vectors, run_id))
            picked = [i for i, m in enumerate(meta) if orientation_sampled(m["uri"], orientation_sample_rate)]
            if picked:
                turned = np.stack([
                    preprocess.rotate_to_orientation(batch[i, 0], turn)[None] for i in picked for turn in TURNS
                ])
                turned_vectors = infer.embed_turned(entry, turned, device=device, batch_size=batch_size,
                                                    threads=threads)
                writers["orientation_samples"].extend(
                    {"uri": meta[i]["uri"], "etag": meta[i]["etag"], "model_sha256": entry.sha256,
                     "turn": turn, "vector": turned_vectors[j * len(TURNS) + t], "run_id": run_id}
                    for j, i in enumerate(picked) for t, turn in enumerate(TURNS)
                )

    # One batch is classified while the next is decoded: ONNX Runtime releases the GIL, and the
    # codecs that hold it (OpenJPEG, CharLS) then run beside the model instead of before it. Only
    # this thread touches the predictions, embeddings and orientation_samples writers until it is done.
    classifier = ThreadPoolExecutor(1, thread_name_prefix="radlint-infer")
    classifying = None

    def flush(wait: bool = False) -> None:
        nonlocal classifying
        if pending_inputs:
            if classifying is not None:
                classifying.result()  # at most two batches held; a failure surfaces here
            classifying = classifier.submit(classify, list(pending_inputs), list(pending_meta))
            pending_inputs.clear()
            pending_meta.clear()
        if wait and classifying is not None:
            classifying.result()

    prepare = functools.partial(prepare_object, input_size=entry.input_size, salt=salt, max_pixels=max_pixels)
    decoders = ThreadPoolExecutor(decode_threads, thread_name_prefix="radlint-decode") if decode_threads > 1 else None
    try:
        for group, payloads in _chunks(objects, storage_options, max_pixels, max_inflight_bytes):
            ahead = {}
            if decoders is not None:
                ahead = {i: decoders.submit(prepare, p) for i, p in enumerate(payloads) if _threads_help(p)}
            for i, (obj, payload) in enumerate(zip(group, payloads)):
                if STOP.is_set():
                    raise KeyboardInterrupt("audit interrupted")
                now = parts.utcnow()
                if isinstance(payload, dicom_io.Skip):  # decided from the header alone
                    skipped.add(_skip_row(obj, payload.reason, payload.detail, run_id, now))
                    continue
                if isinstance(payload, Exception):
                    skipped.add(_skip_row(obj, "fetch_error", f"{type(payload).__name__}: {payload}", run_id, now))
                    continue
                try:
                    image, x, thumb = ahead[i].result() if i in ahead else prepare(payload)
                except dicom_io.Skip as skip:
                    skipped.add(_skip_row(obj, skip.reason, skip.detail, run_id, now))
                    continue
                except (KeyboardInterrupt, SystemExit, MemoryError):
                    raise
                except BaseException as exc:  # an unforeseen decoder failure is data too, never a crash
                    log.warning("unexpected error reading %s: %r", obj.uri, exc)
                    skipped.add(_skip_row(obj, dicom_io.READ_ERROR, f"{type(exc).__name__}: {exc}", run_id, now))
                    continue
                row = {"uri": obj.uri, "etag": obj.etag, "size_bytes": obj.size_bytes, **image.header}
                row.update(audited_at=now, run_id=run_id)
                images.add(row)
                thumbnails.add({"uri": obj.uri, "etag": obj.etag, **thumb})
                pending_inputs.append(x)
                pending_meta.append(row)
                if len(pending_inputs) >= batch_size:
                    flush()
            payload = None
            payloads.clear()  # the generator's list too: these bytes go before the next fetch
            ahead.clear()
        flush(wait=True)
        for kind, writer in writers.items():
            path = writer.close()
            if path is not None:
                result.parts[kind] = str(path)
    finally:
        if decoders is not None:
            decoders.shutdown(cancel_futures=True)
        classifier.shutdown(wait=True)  # a batch still being classified writes before the abort
        for writer in writers.values():
            writer.abort()
    result.n_images = images.n_rows
    result.n_skipped = skipped.n_rows
    result.seconds = time.perf_counter() - started
    return result.as_dict()


def _skip_row(obj: ObjectRef, reason: str, detail: str, run_id: str, now) -> dict[str, Any]:
    return {
        "uri": obj.uri,
        "etag": obj.etag,
        "size_bytes": obj.size_bytes,
        "reason": reason,
        "detail": detail[:500],
        "skipped_at": now,
        "run_id": run_id,
    }
