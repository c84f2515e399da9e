"""What the lake embedder and the lake adaptation add to a full audit's wall time.

    .venv/bin/python -m bench.embedder_cost [--n-per-syntax 48[,240]] [--repeats 2] [--audits ...]

A lake of realistic CR DICOMs (bench/run.py's generator: about 2000x2500, five transfer syntaxes),
one per size given, is audited from scratch in up to three ways (``--audits``), in alternation,
each on a fresh database:

- **baseline**: the shipped classifier alone (its three class outputs cut out of the shipped ONNX
  graph with onnx.utils.extract_model, no ``embedding`` block): no embedder, no orientation
  sample, no lake adaptation, as radlint audited before issue 20;
- **shipped**: the registered model as it is (its ``embedding`` output, and for a model with a
  grafted ImageNet embedder that second network, the orientation sample, the lake probes after the
  load);
- **shipped, large-lake sample**: the same, with the orientation sample cut to the share a
  ``--large-lake``-image lake gets (tasks.adapt's target over that many new objects, at least its
  minimum rate; set in this process, where the flow computes it). A lake this small is otherwise
  sampled whole, which a large one never is; the fits' cost at that size is bench.adapt_fit's.

The difference is everything lake adaptation costs an audit: a grafted embedder's forward pass per
image where the model has one, the three turned passes per sampled image, writing the embeddings,
and the fits. Prints a table; wall times on a shared machine are noisy, so compare the ratio, and
the median of repeats.

With two or more lake sizes (``--n-per-syntax 48,240``), each audit's wall time is split into a
part that grows with the lake (the slope between the smallest and largest lake) and a part that
does not (the intercept), and the share lake adaptation adds to an audit of ``--large-lake``
images is projected from them, with ``--fit-seconds`` (bench.adapt_fit's fits at that size) added
on top. The slope already holds the small lakes' fits, so adding the large lake's is an upper bound.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from radlint.tasks import adapt, infer

AUDITS = ("baseline", "shipped", "large")


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
    ap.add_argument("--n-per-syntax", default="48",
                    help="images per transfer syntax; a comma list audits a lake of each size")
    ap.add_argument("--n-distinct", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--large-lake", type=int, default=100_000,
                    help="lake size whose orientation sample share the third audit uses")
    ap.add_argument("--audits", default=",".join(AUDITS),
                    help=f"which audits to run, a comma list of {', '.join(AUDITS)}")
    ap.add_argument("--fit-seconds", type=float, default=None,
                    help="the fits' seconds at --large-lake images (bench.adapt_fit), added to the projection")
    args = ap.parse_args(argv)
    sizes = sorted({int(v) for v in args.n_per_syntax.split(",")})
    audits = [a for a in AUDITS if a in args.audits.split(",")]
    if "baseline" not in audits or len(audits) < 2:
        ap.error("--audits needs baseline and at least one of shipped, large")
    large_rate = adapt.orientation_sample_rate(args.large_lake, 0)
    keys = [k for k, _, _ in SYNTAXES]
    rows = {}
    target, min_rate = adapt.ORIENTATION_SAMPLE_TARGET, adapt.ORIENTATION_SAMPLE_MIN_RATE
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        registries = {"baseline": classifier_only_registry(tmp), "shipped": infer.REGISTRY_PATH,
                      "large": infer.REGISTRY_PATH}
        for size in sizes:
            lake = tmp / f"lake-{size}"
            generate_realistic(lake, size, args.n_distinct, keys)
            n = sum(1 for _ in lake.rglob("*.dcm"))
            if not rows:  # the process's first audit pays its imports: untimed
                audit_seconds(lake, tmp / "warm-up.duckdb", registries["baseline"], args.workers)
            times: dict[str, list[float]] = {k: [] for k in audits}
            for r in range(args.repeats):
                for name in audits:
                    if name == "large":
                        adapt.ORIENTATION_SAMPLE_TARGET, adapt.ORIENTATION_SAMPLE_MIN_RATE = 0, large_rate
                    try:
                        seconds, _ = audit_seconds(lake, tmp / f"{name}-{size}-{r}.duckdb", registries[name],
                                                   args.workers)
                    finally:
                        adapt.ORIENTATION_SAMPLE_TARGET, adapt.ORIENTATION_SAMPLE_MIN_RATE = target, min_rate
                    times[name].append(seconds)
                    print(f"  {n} images, {name} run {r + 1}: {seconds:.1f} s", flush=True)
            rows[n] = {k: statistics.median(v) for k, v in times.items()}
    entry = infer.default_model()
    label = {"baseline": "baseline: classifier only, no lake adaptation",
             "shipped": "shipped: the registered model + lake adaptation",
             "large": f"shipped, orientation sample of a {args.large_lake:,}-image lake ({large_rate:.1%})"}
    for n, med in rows.items():
        base = med["baseline"]
        print(f"\n{n} images, five transfer syntaxes, {args.workers} workers; model {entry.name} "
              f"(embedding {entry.embedding.size if entry.embedding else 0}-d); median of {args.repeats}")
        print("| audit | wall s | per image ms | vs baseline |")
        print("|---|---:|---:|---:|")
        for name in audits:
            print(f"| {label[name]} | {med[name]:.1f} | {med[name] / n * 1000:.0f} | "
                  f"{med[name] / base:.2f}x (+{med[name] / base - 1:.0%}) |")
    if len(rows) >= 2:
        (n0, a), (n1, b) = min(rows.items()), max(rows.items())
        print(f"\nGrowing and fixed parts, from the {n0}- and {n1}-image lakes:")
        print("| audit | per image ms (slope) | fixed s (intercept) |")
        print("|---|---:|---:|")
        fit = {}
        for name in audits:
            slope = (b[name] - a[name]) / (n1 - n0)
            fit[name] = (slope, a[name] - slope * n0)
            print(f"| {label[name]} | {slope * 1000:.1f} | {fit[name][1]:.1f} |")
        if "large" in fit:
            big = args.large_lake
            base = fit["baseline"][0] * big + fit["baseline"][1]
            extra = (fit["large"][0] - fit["baseline"][0]) * big + fit["large"][1] - fit["baseline"][1]
            extra += args.fit_seconds or 0.0
            fits = f" + the fits' {args.fit_seconds:.0f} s" if args.fit_seconds else " (fits at that size not added)"
            print(f"\nProjected to {big:,} images: baseline {base:.0f} s, lake adaptation adds {extra:.0f} s"
                  f"{fits}: **+{extra / base:.1%}**")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
