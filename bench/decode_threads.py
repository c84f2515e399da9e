"""Per-object decode work (tasks.shard.prepare_object) on one thread vs a thread pool, per syntax.

    .venv/bin/python -m bench.decode_threads [--n 16] [--threads 2]

Why tasks.shard gives only native pixel data to its decode threads: it prints images/s for each
transfer syntax of bench/run.py's realistic files (2500x2000, 16-bit), one thread (the baseline)
and ``--threads`` threads in the same run, and their ratio. Files are generated in a temporary
folder and read into memory first, so this times decode, resize and thumbnail only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import run as bench
from radlint.tasks.shard import prepare_object


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="files per syntax (4 distinct encodes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=256)
    args = ap.parse_args(argv)
    keys = [k for k, _, _ in bench.SYNTAXES]
    lines = [f"| transfer syntax | 1 thread img/s | {args.threads} threads img/s | ratio |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="radlint-decode-") as tmp:
        bench.generate_realistic(Path(tmp), args.n, min(4, args.n), keys)
        for key, label, _ in bench.SYNTAXES:
            payloads = [p.read_bytes() for p in sorted((Path(tmp) / key).glob("*.dcm"))]

            def one(payload):
                return prepare_object(payload, input_size=args.input_size)

            one(payloads[0])  # warm-up: imports and decoder set-up are not timed
            t0 = time.perf_counter()
            for payload in payloads:
                one(payload)
            serial = time.perf_counter() - t0
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(one, payloads[: args.threads]))
                t0 = time.perf_counter()
                list(pool.map(one, payloads))
                pooled = time.perf_counter() - t0
            n = len(payloads)
            lines.append(f"| {label} | {n / serial:.1f} | {n / pooled:.1f} | {serial / pooled:.2f}x |")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
