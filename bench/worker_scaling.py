"""Per-worker throughput from one Dask worker to two (issue 24: flat from 1 to 2 workers).

    .venv/bin/python -m bench.worker_scaling [--n-per-syntax 160] [--syntaxes j2k_lossless,uncompressed]

bench/run.py's realistic CR lake per transfer syntax, audited with ``--executor dask`` by 1 and then
2 local Dask workers (one thread each, as radlint starts them), on a fresh database each time. Per
worker: objects that worker audited / its busy seconds inside ``tasks.shard.audit_shard`` (recorded by
bench/shard_probe.py), so the cluster's start and the flow's fixed costs are left out. A ratio near
1.0 means a second worker adds a worker's worth of throughput; on a 2-core machine each worker has a
core to itself. radlint gives each worker cores // workers threads (ONNX Runtime and decoding), so
one worker here uses both cores and two use one each: the per-core columns divide by that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench.run import SYNTAXES, generate_realistic, run_radlint_audit
from radlint.tasks import infer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per-syntax", type=int, default=160)
    ap.add_argument("--n-distinct", type=int, default=8)
    ap.add_argument("--syntaxes", default="j2k_lossless,uncompressed")
    args = ap.parse_args(argv)
    keys = [k for k in args.syntaxes.split(",") if k]
    unknown = set(keys) - {k for k, _, _ in SYNTAXES}
    if unknown:
        ap.error(f"unknown syntaxes {sorted(unknown)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_realistic(tmp / "lake", args.n_per_syntax, args.n_distinct, keys)
        for key in keys:
            per_worker = {}
            for workers in (1, 2):
                res = run_radlint_audit(str(tmp / "lake" / key), tmp / f"{key}-{workers}.duckdb", infer.REGISTRY_PATH,
                                        workers=workers, device="cpu", logdir=tmp, tag=f"{key}-{workers}",
                                        executor="dask")
                rates = [w["objects"] / w["busy_s"] for w in res["per_worker"].values() if w["busy_s"]]
                per_worker[workers] = (statistics.mean(rates) if rates else None, len(rates), res["img_s"])
            rows.append((key, per_worker))
    cores = os.cpu_count() or 1
    print(f"{cores} cores; per worker = objects / busy seconds in the shard, mean over the workers that ran shards")
    print("| transfer syntax | 1 worker img/s | 2 workers img/s per worker | per worker 2/1 | "
          "per core, 1 worker | per core, 2 workers | per core 2/1 | end-to-end img/s (1 / 2 workers) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, pw in rows:
        one, two = pw[1][0], pw[2][0]
        c1, c2 = max(1, cores // 1), max(1, cores // 2)
        print(f"| {key} | {one:.2f} | {two:.2f} ({pw[2][1]} ran shards) | {two / one:.2f} | {one / c1:.2f} | "
              f"{two / c2:.2f} | {two / c2 / (one / c1):.2f} | {pw[1][2]:.2f} / {pw[2][2]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
