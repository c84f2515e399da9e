"""A real multi-process cluster with no shared disk: `dask scheduler` and two `dask worker` processes
started as commands, each in its own mount namespace where the flow's folder is an empty tmpfs, with
its own working directory and TMPDIR; the lake and --out on the loopback S3 server; a real `prefect
server start` that the flow and the workers reach over HTTP. The audit equals a local run of the same
lake, also when one worker is killed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.test_s3 import _rows

pytestmark = [pytest.mark.s3, pytest.mark.slow]

BIN = Path(sys.executable).parent
TABLES = ("images", "predictions", "skipped", "thumbnails", "embeddings", "orientation_samples", "lake_predictions")


def _can_hide_folders() -> str | None:
    """None when this host can give a process its own mount namespace with a tmpfs over a folder."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs none /mnt && umount /mnt"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount with a tmpfs is not permitted here: {probe.stderr.strip()[:200]}"
    return None


def _start(cmd: list[str], *, env: dict, cwd: Path, log: Path, hide: Path | None = None) -> subprocess.Popen:
    if hide is not None:
        # The worker sees an empty tmpfs where the flow keeps its database and parts folder.
        script = f"mount -t tmpfs none '{hide}' && cd '{cwd}' && exec " + " ".join(f"'{c}'" for c in cmd)
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_workers(address: str, n: int, timeout: float = 120) -> None:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(n, timeout=timeout)


def test_cluster_without_shared_disk_matches_a_local_run_and_survives_a_killed_worker(
        tmp_path, s3_server, make_dicom, prefect_server):
    reason = _can_hide_folders()
    if reason:
        pytest.skip(reason)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("clusterlake")
    fs.mkdir("clusterparts")
    n = 24
    for i in range(n):
        fs.pipe(f"clusterlake/cr/img{i:02d}.dcm", make_dicom(seed=100 + i, patient_id=f"P{i % 6}"))
    fs.pipe("clusterlake/cr/broken.dcm", b"not dicom")

    flow_dir = tmp_path / "flow"
    flow_dir.mkdir()
    env = dict(prefect_server, RADLINT_PATIENT_SALT="cluster-salt")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = []
    try:
        sched_dir = tmp_path / "scheduler"
        sched_dir.mkdir()
        procs.append(_start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                             "--dashboard-address", ":0"],
                            env=dict(env, TMPDIR=str(sched_dir)), cwd=sched_dir, log=tmp_path / "scheduler.log"))
        workers = []
        for k in range(2):
            wdir = tmp_path / f"worker{k}"
            wdir.mkdir()
            (wdir / "tmp").mkdir()
            wenv = dict(env, TMPDIR=str(wdir / "tmp"), PREFECT_HOME=str(wdir / "prefect"))
            workers.append(_start([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                   "--local-directory", str(wdir), "--dashboard-address", ":0", "--no-nanny"],
                                  env=wenv, cwd=wdir, log=tmp_path / f"worker{k}.log", hide=flow_dir))
        procs += workers
        _wait_for_workers(address, 2)

        # The flow's folder really is hidden from a worker process.
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                f"touch '{flow_dir}/marker-flow' && mount -t tmpfs none '{flow_dir}' && ls -A '{flow_dir}'"],
                               capture_output=True, text=True)
        assert probe.returncode == 0 and probe.stdout.strip() == "", probe
        (flow_dir / "marker-flow").unlink()

        db = flow_dir / "cluster.duckdb"
        audit = subprocess.Popen(
            [str(BIN / "radlint"), "audit", "s3://clusterlake/cr", "--db", str(db), "--out", "s3://clusterparts/audit",
             "--dask-address", address, "--shard-size", "1", "--batch-size", "4", "--device", "cpu"],
            env=env, cwd=flow_dir, stdout=(tmp_path / "audit.log").open("w"), stderr=subprocess.STDOUT)
        # Kill one worker as soon as the first shard's part is on the store.
        deadline = time.monotonic() + 300
        killed_mid_run = False
        while time.monotonic() < deadline and audit.poll() is None:
            fs.invalidate_cache()
            if fs.glob("clusterparts/audit/images/run_id=*/part-*.parquet"):
                os.killpg(workers[0].pid, signal.SIGKILL)
                killed_mid_run = audit.poll() is None
                break
            time.sleep(0.2)
        rc = audit.wait(timeout=600)
        log = (tmp_path / "audit.log").read_text()
        assert rc == 0, log[-4000:]
        assert killed_mid_run, "the audit ended before a worker could be killed: make the lake larger"

        # Nothing of the run on the flow's disk but the database (and its lock and salt).
        assert {p.name for p in flow_dir.iterdir()} <= {"cluster.duckdb", "cluster.duckdb.lock", "cluster.duckdb.wal"}
        local = tmp_path / "local.duckdb"
        done = subprocess.run(
            [str(BIN / "radlint"), "audit", "s3://clusterlake/cr", "--db", str(local), "--executor", "local",
             "--shard-size", "1", "--batch-size", "4", "--device", "cpu"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        for table in TABLES:
            cluster_rows, local_rows = _rows(db, table), _rows(local, table)
            assert cluster_rows == local_rows, table
        assert len(_rows(db, "images")) == n and len(_rows(db, "skipped")) == 1
    finally:
        for proc in reversed(procs):
            _stop(proc)
