"""What lake adaptation costs at 10k and 100k images, against the model inference it rides on.

    .venv/bin/python -m bench.adapt_fit [--sizes 10000,100000] [--threads 2]

For each size, a DuckDB file is filled with what an audit of that many images leaves behind
(images with header labels, predictions, embeddings as wide as the registered model's, the
orientation sample's turned embeddings at the audit's sampling rate), with 10 % of the body-part
labels wrong; then tasks.adapt.adapt_lake runs as the flow runs it (query, fits, table rewrite).
The comparison in the same run is the shipped model's own inference at batch 32 on the same
threads, for the same images, and its turned-view embedder for the orientation sample's extra passes: the least any
audit of those images costs (a real audit also fetches and decodes every object, so the share of
a full audit is smaller than the share printed here).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from radlint.tasks import adapt, database, infer, parts
from radlint.tasks.vocabulary import BODY_PART, ORIENTATION, PROJECTION, TURNS


def fill(db: Path, n: int, dim: int, sha: str, turned_columns: tuple[int, int], seed: int = 0) -> int:
    """A database as an audit of ``n`` images leaves it (turned views hold ``turned_columns`` of the
    embedding); returns the orientation sample size."""
    rng = np.random.default_rng(seed)
    true = rng.choice(len(BODY_PART), size=n, p=[.05, .03, .45, .04, .05, .05, .12, .16, .05])
    centres = rng.normal(size=(len(BODY_PART), dim)).astype(np.float32) * 2
    turn_dir = {o: rng.normal(size=dim).astype(np.float32) for o in ORIENTATION}
    emb = centres[true] + rng.normal(size=(n, dim)).astype(np.float32)
    label = true.copy()
    wrong = rng.random(n) < 0.10
    label[wrong] = rng.integers(0, len(BODY_PART), size=wrong.sum())
    uris = [f"s3://lake/img{i:07d}.dcm" for i in range(n)]
    now = parts.utcnow()
    con = database.connect(db)
    try:
        database.ensure_schema(con)
        database.create_views(con)
        images = pa.table({
            "uri": uris, "etag": ["e"] * n, "patient_key": [f"p{i // 3}" for i in range(n)],
            "label_body_part": [BODY_PART[k] for k in label],
            "label_body_part_source": ["BodyPartExamined"] * n,
            "body_part_examined": [BODY_PART[k].upper() for k in label],
            "label_projection": [PROJECTION[i % 3] if true[i] == 2 else None for i in range(n)],
            "label_projection_source": ["ViewPosition" if true[i] == 2 else None for i in range(n)],
            "audited_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")), "run_id": ["r1"] * n,
        })
        con.register("src", images)
        con.execute(f"insert into images ({', '.join(images.column_names)}) select * from src")
        con.unregister("src")
        logits = emb @ centres.T / dim
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        rows = {"uri": [], "etag": [], "task": [], "predicted": [], "probability": [], "probabilities": [],
                "model": [], "model_sha256": [], "run_id": []}
        for task, classes, probs in (("body_part", BODY_PART, p),
                                     ("projection", PROJECTION, np.full((n, 3), 1 / 3, np.float32)),
                                     ("orientation", ORIENTATION, np.tile([.97, .01, .01, .01], (n, 1)))):
            best = probs.argmax(1)
            rows["uri"] += uris
            rows["etag"] += ["e"] * n
            rows["task"] += [task] * n
            rows["predicted"] += [classes[b] for b in best]
            rows["probability"] += probs.max(1).tolist()
            rows["probabilities"] += [list(zip(classes, r.tolist())) for r in probs]
            rows["model"] += ["m"] * n
            rows["model_sha256"] += [sha] * n
            rows["run_id"] += ["r1"] * n
        preds = pa.table(rows, schema=pa.schema([(k, parts.SCHEMAS["predictions"].field(k).type) for k in rows]))
        con.register("src", preds)
        con.execute(f"insert into predictions ({', '.join(rows)}) select * from src")
        con.unregister("src")
        con.register("src", pa.table({"uri": uris, "etag": ["e"] * n, "model_sha256": [sha] * n,
                                      "vector": list(emb), "run_id": ["r1"] * n}))
        con.execute("insert into embeddings select * from src")
        con.unregister("src")
        rate = adapt.orientation_sample_rate(n, 0)
        sampled = np.flatnonzero(rng.random(n) < rate)
        a, b = turned_columns
        for turn in TURNS:
            vec = (emb[sampled] - turn_dir["upright"] + turn_dir[turn])[:, a:b]
            con.register("src", pa.table({"uri": [uris[i] for i in sampled], "etag": ["e"] * len(sampled),
                                          "model_sha256": [sha] * len(sampled), "turn": [turn] * len(sampled),
                                          "vector": list(vec), "run_id": ["r1"] * len(sampled)}))
            con.execute("insert into orientation_samples select * from src")
            con.unregister("src")
    finally:
        con.close()
    return len(sampled)


def inference_seconds(entry, n: int, n_turned: int, threads: int, probe: int = 256) -> float:
    """Seconds the model takes for ``n`` inputs and the turned views' embedder for ``n_turned``, at
    batch 32 (each timed on ``probe`` inputs)."""
    x = np.random.default_rng(0).normal(size=(probe, 1, entry.input_size, entry.input_size)).astype(np.float32)
    infer.predict(entry, x[:32], device="cpu", batch_size=32, threads=threads)  # sessions and warm-up
    infer.embed_turned(entry, x[:32], device="cpu", batch_size=32, threads=threads)
    t = time.perf_counter()
    infer.predict_with_embedding(entry, x, device="cpu", batch_size=32, threads=threads)
    whole = (time.perf_counter() - t) / probe
    t = time.perf_counter()
    infer.embed_turned(entry, x, device="cpu", batch_size=32, threads=threads)
    return whole * n + (time.perf_counter() - t) / probe * n_turned


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    entry = infer.default_model()
    print(f"model {entry.name}, embedding {entry.embedding.size}-d, {os.cpu_count()} cores, "
          f"{args.threads} threads")
    print("| images | orientation sample | adapt_lake s | of which generic_distrust s | model inference s "
          "(images + sample turns) | adapt / inference |")
    print("|---:|---:|---:|---:|---:|---:|")
    distrust_seconds = [0.0]
    real_distrust = adapt.generic_distrust

    def timed_distrust(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real_distrust(*a, **kw)
        finally:
            distrust_seconds[0] += time.perf_counter() - t0

    adapt.generic_distrust = timed_distrust
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.duckdb"
            n_sampled = fill(db, n, entry.embedding.size, entry.sha256, entry.embedding.turned_columns())
            con = database.connect(db)
            distrust_seconds[0] = 0.0
            try:
                t = time.perf_counter()
                counts = adapt.adapt_lake(con, entry, "bench")
                fit = time.perf_counter() - t
            finally:
                con.close()
        model = inference_seconds(entry, n, 3 * n_sampled, args.threads)
        print(f"| {n:,} | {n_sampled:,} | {fit:.1f} | {distrust_seconds[0]:.1f} | {model:.0f} | {fit / model:.1%} |",
              flush=True)
        print(f"  methods: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
