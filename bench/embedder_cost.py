"""What the lake embedder and the lake adaptation add to a full audit's wall time.

    .venv/bin/python -m bench.embedder_cost [--n-per-syntax 48] [--repeats 2]

One lake of realistic CR DICOMs (bench/run.py's generator: about 2000x2500, five transfer syntaxes)
is audited from scratch by two registries in alternation, each on a fresh database:

- **baseline**: the shipped classifier alone (its three class outputs cut out of the shipped ONNX
  graph with onnx.utils.extract_model, no ``embedding`` block): no embedder, no orientation
  sample, no lake adaptation, as radlint audited before issue 20;
- **shipped**: the registered model as it is (classifier + ImageNet embedder, orientation sample,
  lake probes after the load);
- **shipped, large-lake sample**: the same, with the orientation sample cut to the share a
  ``--large-lake``-image lake gets (tasks.adapt's target over that many new objects, at least its
  minimum rate; set in this process, where the flow computes it). A lake this small is otherwise
  sampled whole, which a large one never is; the fits' cost at that size is bench.adapt_fit's.

The difference is everything lake adaptation costs an audit: the embedder's forward pass per
image, the three turned passes per sampled image, writing the embeddings, and the fits. Prints a
table; wall times on a shared machine are noisy, so compare the ratio, and the median of repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from radlint.tasks import adapt, infer


def classifier_only_registry(folder: Path) -> Path:
    """A registry whose first entry is the shipped model without its embedding output."""
    import onnx.utils

    entry = infer.default_model()
    raw = yaml.safe_load(infer.REGISTRY_PATH.read_text())
    first = dict(raw["models"][0])
    outputs = [spec.output for spec in entry.tasks.values()]
    path = folder / "classifier-only.onnx"
    onnx.utils.extract_model(str(entry.path), str(path), [entry.input_name], outputs)
    first.pop("embedding", None)
    first.update(name=first["name"] + "-classifier-only", file=path.name, sha256=infer.sha256_file(path))
    first.pop("card", None)
    registry = folder / "registry.yaml"
    registry.write_text(yaml.safe_dump({"schema": raw["schema"], "models": [first]}, sort_keys=False))
    return registry


def audit_seconds(lake: Path, db: Path, registry: Path, workers: int) -> tuple[float, dict]:
    from radlint.cli import run_audit
    from radlint.tasks.options import AuditOptions

    t = time.perf_counter()
    summary = run_audit(AuditOptions(lake=str(lake), db=str(db), registry=str(registry), workers=workers), quiet=True)
    return time.perf_counter() - t, summary


def main(argv=None) -> int:
    from bench.run import SYNTAXES, generate_realistic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-per-syntax", type=int, default=48)
    ap.add_argument("--n-distinct", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--large-lake", type=int, default=100_000,
                    help="lake size whose orientation sample share the third audit uses")
    args = ap.parse_args(argv)
    large_rate = adapt.orientation_sample_rate(args.large_lake, 0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lake = tmp / "lake"
        generate_realistic(lake, args.n_per_syntax, args.n_distinct, [k for k, _, _ in SYNTAXES])
        n = sum(1 for _ in lake.rglob("*.dcm"))
        registries = {"baseline": classifier_only_registry(tmp), "shipped": infer.REGISTRY_PATH,
                      "large": infer.REGISTRY_PATH}
        times: dict[str, list[float]] = {k: [] for k in registries}
        target, min_rate = adapt.ORIENTATION_SAMPLE_TARGET, adapt.ORIENTATION_SAMPLE_MIN_RATE
        for r in range(args.repeats):
            for name, registry in registries.items():
                if name == "large":
                    adapt.ORIENTATION_SAMPLE_TARGET, adapt.ORIENTATION_SAMPLE_MIN_RATE = 0, large_rate
                try:
                    seconds, _ = audit_seconds(lake, tmp / f"{name}-{r}.duckdb", registry, args.workers)
                finally:
                    adapt.ORIENTATION_SAMPLE_TARGET, adapt.ORIENTATION_SAMPLE_MIN_RATE = target, min_rate
                times[name].append(seconds)
                print(f"  {name} run {r + 1}: {seconds:.1f} s", flush=True)
    base, shipped, large = (statistics.median(times[k]) for k in ("baseline", "shipped", "large"))
    entry = infer.default_model()
    print(f"\n{n} images, five transfer syntaxes, {args.workers} workers; model {entry.name} "
          f"(embedding {entry.embedding.size if entry.embedding else 0}-d); median of {args.repeats}")
    print("| audit | wall s | per image ms | vs baseline |")
    print("|---|---:|---:|---:|")
    print(f"| baseline: classifier only, no lake adaptation | {base:.1f} | {base / n * 1000:.0f} | 1.00x |")
    print(f"| shipped: classifier + embedder + lake adaptation | {shipped:.1f} | {shipped / n * 1000:.0f} | "
          f"{shipped / base:.2f}x (+{shipped / base - 1:.0%}) |")
    print(f"| shipped, orientation sample of a {args.large_lake:,}-image lake ({large_rate:.1%}) | {large:.1f} | "
          f"{large / n * 1000:.0f} | {large / base:.2f}x (+{large / base - 1:.0%}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
