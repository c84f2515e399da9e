"""radlint.flows.dask_env: the audit's own LocalCluster, started and closed in background threads."""

from __future__ import annotations

import os
import subprocess
import sys

import dask
import distributed
import pytest

from radlint.flows.dask_env import WORKER_PRELOAD, BackgroundCluster


def _loaded(modules):
    return [m for m in modules if m in sys.modules]


@pytest.mark.slow
def test_workers_import_the_shard_modules_while_the_cluster_starts():
    with dask.config.set({"distributed.worker.preload": []}):
        with BackgroundCluster(1) as cluster:
            address = cluster.address(timeout=120)
            assert address.startswith("tcp://127.0.0.1:")
            with distributed.Client(address) as client:
                loaded = client.run(_loaded, list(WORKER_PRELOAD))
            assert list(loaded.values()) == [list(WORKER_PRELOAD)]
            cluster.close_in_background()
            cluster.close()  # waits for the background close
            cluster.close()  # and a second close is a no-op
        with pytest.raises(OSError):  # the scheduler is gone
            distributed.Client(address, timeout=2)


def test_a_failed_start_is_raised_by_address_and_close_is_quiet(monkeypatch):
    import radlint.flows.dask_env as dask_env

    def broken(n_workers):
        raise RuntimeError("no cluster today")

    monkeypatch.setattr(dask_env, "_start", broken)
    cluster = BackgroundCluster(2)
    with pytest.raises(RuntimeError, match="no cluster today"):
        cluster.address(timeout=10)
    cluster.close()


def _env_and_parent(name):
    import os

    return os.environ.get(name), os.getppid()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork server on this platform")
def test_workers_fork_from_a_fork_server_with_the_current_environment(monkeypatch):
    import os

    from radlint.flows import dask_env

    assert dask_env._start_method() == "forkserver"  # Dask's default 'spawn' is replaced
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        assert dask_env._start_method() == "fork"  # a configured method is kept
    seen = []
    for value in ("first", "second"):  # the second cluster forks from the fork server the first started
        monkeypatch.setenv("RADLINT_TEST_ENDPOINT", value)
        with BackgroundCluster(1) as cluster:
            with distributed.Client(cluster.address(timeout=120)) as client:
                seen += list(client.run(_env_and_parent, "RADLINT_TEST_ENDPOINT").values())
    assert [env for env, _ in seen] == ["first", "second"]
    assert all(parent != os.getpid() for _, parent in seen)  # not spawned by this process


@pytest.mark.parametrize("configured, chatter", [(None, False), ("info", True)])
def test_the_cluster_keeps_dasks_start_and_stop_chatter_off_the_terminal(configured, chatter):
    """Dask's default INFO lines (scheduler address, nannies, connections) stay off stderr; a level
    the user configured for Dask is kept."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_LOGGING", "DASK_DISTRIBUTED__LOGGING"))}
    if configured:
        env["DASK_LOGGING__DISTRIBUTED"] = configured
    code = ("import logging; logging.basicConfig()\n"
            "from radlint.flows.dask_env import BackgroundCluster\n"
            "c = BackgroundCluster(1)\nc.address()\nc.close()\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("distributed.scheduler" in out.stderr) is chatter, out.stderr[-3000:]
