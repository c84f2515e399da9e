"""Where the seconds of a tiny audit go: the per-call fixed cost of `radlint audit` (issue 24 item 5).

    .venv/bin/python -m bench.fixed_cost [--repeat 3] [--objects 3]

Every row is a fresh process, timed from outside (wall seconds, median of ``--repeat``), as a user's
shell or a scheduler would start it, except the rows marked "in process", which the child times
itself after its imports. The lake is ``--objects`` small uncompressed CR images on local disk, audited
with the packaged model and radlint's defaults (``--executor auto`` runs them in the flow's process).

- cold: no ``PREFECT_API_URL`` and ``RADLINT_PREFECT_SERVER_IDLE=0``; radlint starts (and stops)
  a temporary Prefect server per call.
- kept: no ``PREFECT_API_URL``, radlint's default: the first call in a ``PREFECT_HOME`` starts a
  server that stays up while used (flows/kept_server.py); the next call finds it running.
- warm: ``prefect server start`` runs in the background (started outside the timings, own
  ``PREFECT_HOME``) and ``PREFECT_API_URL`` points at it.
- runner: as kept or warm, plus the kept runner (radlint/kept_runner.py) that an earlier call in
  the same environment left: the call is run by a child forked from a process whose imports are
  loaded. The other kept and warm rows turn it off (RADLINT_KEPT_RUNNER=0).
- "new": a fresh database, every object audited; "re-run": the same database again, nothing new.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PY = sys.executable
RADLINT = str(Path(PY).parent / "radlint")
PREFECT = str(Path(PY).parent / "prefect")

NAIVE = """
import sys, time
t0 = time.perf_counter()
import numpy as np, onnxruntime as ort, pydicom
from radlint.tasks import infer
from radlint.tasks.preprocess import model_input
entry = infer.default_model()
sess = ort.InferenceSession(str(entry.path), providers=["CPUExecutionProvider"])
outs = [t.output for t in entry.tasks.values()]
for f in sys.argv[1:]:
    ds = pydicom.dcmread(f)
    x = model_input(ds.pixel_array, entry.input_size)[None]
    sess.run(outs, {entry.input_name: x})
"""

SERVER_BOOT = """
import time
from radlint.flows.prefect_env import TemporaryServer, apply_quiet_defaults
apply_quiet_defaults()
import prefect.settings
t0 = time.perf_counter()
server = TemporaryServer()
server.launch()
server.wait_ready(120)
print(time.perf_counter() - t0)
server.stop()
"""

DUCKDB = """
import sys, time
from radlint.tasks import database
t0 = time.perf_counter()
con = database.connect(sys.argv[1])
database.ensure_schema(con)
database.create_views(con)
con.close()
print(time.perf_counter() - t0)
"""


def quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_UI_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", RADLINT_PATIENT_SALT="bench-fixed-cost")
    env.update(extra)
    return env


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return wall, proc.stdout


def start_prefect_server(home: Path, port: int) -> subprocess.Popen:
    env = quiet_env(PREFECT_HOME=str(home))
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("prefect server start did not answer within 120 s")


def wait_for_runner(folder: Path, timeout: float = 120) -> int:
    """The pid of the kept runner listening in ``folder`` (the first one there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in folder.glob("*.log"):
            found = re.findall(r"kept runner (\d+): listening", log.read_text())
            if found:
                return int(found[-1])
        time.sleep(0.2)
    raise RuntimeError(f"no kept runner listened in {folder} within {timeout} s")


def stop_runners(folder: Path) -> None:
    for lock in folder.glob("*.lock"):
        text = lock.read_text().strip()
        if text.isdigit():
            try:
                os.kill(int(text), signal.SIGTERM)
            except ProcessLookupError:
                pass


def stop_kept_servers(homes: list[Path]) -> None:
    """The servers the kept rows left running (they would stop when idle; a benchmark cleans up)."""
    for home in homes:
        state = home / "radlint-server.json"
        if state.exists():
            try:
                os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)
            except (ProcessLookupError, KeyError, ValueError):
                pass


def main(argv: list[str] | None = None) -> int:
    from bench.run import free_port, write_small_lake

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--objects", type=int, default=3)
    args = ap.parse_args(argv)
    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="radlint-fixed-cost-") as tmp:
        work = Path(tmp)
        lake = work / "lake"
        write_small_lake(lake, args.objects, uid_base=7_000_000)
        files = sorted(str(p) for p in lake.rglob("*.dcm"))
        env = quiet_env(RADLINT_PREFECT_SERVER_IDLE="0")

        def row(name: str, make_cmd, parse=False) -> None:
            values = []
            for i in range(args.repeat):
                wall, out = timed(make_cmd(i), env_for(name))
                values.append(float(out.strip().splitlines()[-1]) if parse else wall)
            rows.append((name, values))
            print(f"{name:<58} {statistics.median(values):6.2f} s", flush=True)

        def env_for(name: str) -> dict[str, str]:
            if name.startswith("kept"):  # the kept rows' environment at the time of the row
                return kept_env
            return warm_env if name.startswith("warm") else env

        warm_env = env
        row("python -c pass", lambda i: [PY, "-c", "pass"])
        row("import radlint.cli (what radlint --help loads)", lambda i: [PY, "-c", "import radlint.cli"])
        row("import radlint.flows.audit_lake (Prefect, radlint)",
            lambda i: [PY, "-c", "import radlint.flows.audit_lake"])
        row(f"naive: imports + read + predict {args.objects} objects, no Prefect",
            lambda i: [PY, "-c", NAIVE, *files])
        row("temporary Prefect server boot + first request (in process)", lambda i: [PY, "-c", SERVER_BOOT], parse=True)
        row("DuckDB: connect, schema, views of a new file (in process)",
            lambda i: [PY, "-c", DUCKDB, str(work / f"schema{i}.duckdb")], parse=True)
        row(f"cold: radlint audit, {args.objects} new objects",
            lambda i: [RADLINT, "audit", str(lake), "--db", str(work / f"cold{i}.duckdb")])
        row("cold: radlint audit, re-run (nothing new)",
            lambda i: [RADLINT, "audit", str(lake), "--db", str(work / "cold0.duckdb")])
        kept_homes = [work / f"kept-home{i}" for i in range(args.repeat)]
        for i, home in enumerate(kept_homes):
            # Untimed: Prefect creates and migrates the home's database on its first use, which
            # the cold rows (the default PREFECT_HOME, used before) do not pay either.
            timed([RADLINT, "audit", str(lake), "--db", str(work / f"kept-init{i}.duckdb")],
                  quiet_env(PREFECT_HOME=str(home), RADLINT_PREFECT_SERVER_IDLE="0"))
        first = []
        for i, home in enumerate(kept_homes):  # each the first call that starts a server in its home
            wall, _ = timed([RADLINT, "audit", str(lake), "--db", str(work / f"kept-first{i}.duckdb")],
                            quiet_env(PREFECT_HOME=str(home), RADLINT_PREFECT_SERVER_IDLE="120",
                                      RADLINT_KEPT_RUNNER="0"))
            first.append(wall)
        name = f"kept: radlint audit, {args.objects} new objects, first call (starts the server)"
        rows.append((name, first))
        print(f"{name:<58} {statistics.median(first):6.2f} s", flush=True)
        kept_env = quiet_env(PREFECT_HOME=str(kept_homes[0]), RADLINT_PREFECT_SERVER_IDLE="120")
        runner_tmp = Path(tempfile.mkdtemp(prefix="rlb", dir="/tmp"))  # short: a socket path holds 108 bytes
        runner_folder = runner_tmp / f"radlint-{os.getuid()}"
        kept_env_runner = dict(kept_env, TMPDIR=str(runner_tmp))
        kept_env = dict(kept_env, RADLINT_KEPT_RUNNER="0")
        row(f"kept: radlint audit, {args.objects} new objects, next call",
            lambda i: [RADLINT, "audit", str(lake), "--db", str(work / f"kept{i}.duckdb")])
        row("kept: radlint audit, re-run (nothing new), next call",
            lambda i: [RADLINT, "audit", str(lake), "--db", str(work / "kept0.duckdb")])
        def runner_rows(kind: str, label: str) -> None:
            for log in runner_folder.glob("*.log"):
                log.unlink()
            try:
                # Untimed: the call that leaves the runner, as the first call of the day would.
                timed([RADLINT, "audit", str(lake), "--db", str(work / f"{kind}-runner-init.duckdb")], env_for(kind))
                wait_for_runner(runner_folder)
                row(f"{kind} + runner: radlint audit, {args.objects} new objects{label}",
                    lambda i: [RADLINT, "audit", str(lake), "--db", str(work / f"{kind}-runner{i}.duckdb")])
                row(f"{kind} + runner: radlint audit, re-run (nothing new){label}",
                    lambda i: [RADLINT, "audit", str(lake), "--db", str(work / f"{kind}-runner0.duckdb")])
            finally:
                stop_runners(runner_folder)

        kept_env = kept_env_runner
        runner_rows("kept", ", next call")
        stop_kept_servers(kept_homes)
        port = free_port()
        server = start_prefect_server(work / "prefect-home", port)
        try:
            warm_env = quiet_env(PREFECT_API_URL=f"http://127.0.0.1:{port}/api", RADLINT_KEPT_RUNNER="0")
            row(f"warm: radlint audit, {args.objects} new objects",
                lambda i: [RADLINT, "audit", str(lake), "--db", str(work / f"warm{i}.duckdb")])
            row("warm: radlint audit, re-run (nothing new)",
                lambda i: [RADLINT, "audit", str(lake), "--db", str(work / "warm0.duckdb")])
            warm_env = quiet_env(PREFECT_API_URL=f"http://127.0.0.1:{port}/api", TMPDIR=str(runner_tmp),
                                 RADLINT_PREFECT_SERVER_IDLE="120")
            runner_rows("warm", "")
        finally:
            server.terminate()
            server.wait(timeout=30)
    print()
    print("| step | median s | runs |")
    print("|---|---:|---|")
    for name, values in rows:
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
