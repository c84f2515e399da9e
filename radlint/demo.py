"""`radlint demo` and `radlint evaluate-planted`: a lake with planted label errors, audited end to end."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from radlint import lakegen, planted

RADIOGRAPHS_ENV = "RADLINT_RADIOGRAPHS"
SPLITS = resources.files("radlint.models") / "splits"
SPLIT_FILE = Path(str(SPLITS / "patient_split.csv"))
# shared radiographs found not stored upright on review (radlint.tasks.evaluation.apply_overrides)
ORIENTATION_REVIEW = Path(str(SPLITS / "orientation_review.csv"))

# (pydicom-data file, body part, fine label, view) for the fallback lake.
PYDICOM_DATA_IMAGES = [
    ("RG1_UNCR.dcm", "chest", "Chest", "PA"),
    ("RG3_UNCR.dcm", "lower_limb", "Lower Leg", ""),
]


def radiographs_dir() -> Path | None:
    """The shared radiograph folder, when present.

    RADLINT_RADIOGRAPHS when set (that folder or nothing); else ``../shared/data/radiographs``
    beside the working directory (a checkout of the project).
    """
    env = os.environ.get(RADIOGRAPHS_ENV)
    if env is not None:  # set explicitly: that folder or nothing
        return Path(env) if (Path(env) / "labels.csv").exists() else None
    cand = Path.cwd().parent / "shared" / "data" / "radiographs"
    return cand if (cand / "labels.csv").exists() else None


def pydicom_data_sources(work: Path) -> list[lakegen.SourceImage]:
    """Real CR radiographs shipped by pydicom-data, as display PNGs, plus copies of each.

    The copies get their own image ids so that planted errors land on several of them.
    """
    from pydicom.data import get_testdata_file

    from radlint.tasks import dicom_io
    from radlint.tasks.preprocess import to_uint8

    work.mkdir(parents=True, exist_ok=True)
    out = []
    for name, body_part, fine, view in PYDICOM_DATA_IMAGES:
        # pydicom-data ships these; a missing file is skipped, never fetched from the internet
        path = get_testdata_file(name, download=False)
        if path is None:
            continue
        image = dicom_io.read_dicom(Path(path).read_bytes())
        u8 = to_uint8(image.pixels)
        # Shrink once to the size of the shared set (longest side 384) so the demo stays quick.
        pil = Image.fromarray(u8)
        pil.thumbnail((384, 384), Image.Resampling.LANCZOS)
        for copy in range(6):
            arr = np.asarray(pil)
            if copy % 2:
                arr = np.ascontiguousarray(arr[:, ::-1])
            png = work / f"{Path(name).stem}_{copy}.png"
            Image.fromarray(arr).save(png)
            out.append(
                lakegen.SourceImage(
                    image_id=f"pydicom_{Path(name).stem}_{copy}",
                    path=png,
                    body_part=body_part,
                    body_part_fine=fine,
                    view=view,
                    patient_id=f"pydicom_{Path(name).stem}",
                    institution="pydicom-data (NEMA WG04)",
                )
            )
    return out


def _audit(lake: Path, db: Path, workers: int, registry: str | None = None) -> dict:
    """The audit flow on the lake this module just built; every option it does not set keeps its AuditOptions default.

    The flow is called directly, not through the CLI's run_audit, so that the CLI depends on this
    module and not the other way round; the CLI's input checks have nothing to find in a fresh lake.
    """
    from radlint.flows.prefect_env import prefect_api
    from radlint.tasks.options import AuditOptions

    n_objects = sum(1 for p in lake.rglob("*") if p.is_file())
    opts = AuditOptions(
        lake=str(lake),
        db=str(db),
        workers=workers,
        # at least two shards per worker, so every worker has work
        shard_size=max(1, min(250, n_objects // (2 * workers) + 1)),
        registry=registry,
        report=str(db.parent / "report.html"),
    )
    with prefect_api(warm_imports=("radlint.flows.audit_lake",)):
        from radlint.flows.audit_lake import audit_lake

        return audit_lake(**opts.parameters())


def _fresh(work: Path) -> None:
    for name in ("lake", "radlint.duckdb", "radlint.duckdb.wal", "radlint_parts", "sources", "planted_errors.csv"):
        p = work / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    work.mkdir(parents=True, exist_ok=True)


def _audit_and_score(work: Path, truth: Path, workers: int, registry: str | None = None) -> tuple[dict, dict]:
    from radlint.tasks import database

    db = work / "radlint.duckdb"
    summary = _audit(work / "lake", db, workers, registry)
    con = database.connect(db, read_only=True)
    try:
        scores = planted.score(con, truth)
    finally:
        con.close()
    return summary, scores


def _review_for(labels: Path) -> Path | None:
    """The packaged orientation review applies to the shared radiographs' labels only."""
    if not ORIENTATION_REVIEW.exists():
        return None
    from radlint.tasks.evaluation import read_csv

    files = {r["file"] for r in read_csv(labels)}
    return ORIENTATION_REVIEW if all(r["file"] in files for r in read_csv(ORIENTATION_REVIEW)) else None


def run(args) -> int:
    """Build the demo lake, audit it, print the top findings and where the database is."""
    t0 = time.perf_counter()
    work = Path(args.dir).resolve()
    _fresh(work)
    root = radiographs_dir()
    if root is not None:
        sources = lakegen.read_labeled_folder(root / "labels.csv", SPLIT_FILE, "test",
                                              _review_for(root / "labels.csv"))
        origin = f"{root} (test split)" if SPLIT_FILE.exists() else str(root)
        sources = lakegen.stratified_sample(sources, args.n, args.seed)
    else:
        sources = pydicom_data_sources(work / "sources")
        origin = "pydicom-data CR radiographs (shared radiographs not found)"
    truth = work / "planted_errors.csv"
    lakegen.build_lake(sources, work / "lake", truth, error_rate=args.error_rate, seed=args.seed)
    print(f"demo lake: {len(sources)} DICOM objects from {origin}, planted error rate {args.error_rate}")
    summary, scores = _audit_and_score(work, truth, args.workers, args.registry)
    from radlint.tasks.findings import summary_markdown

    print(summary_markdown(summary))
    print("Planted errors found (precision/recall against the planted truth):")
    print(planted.format_table(scores))
    db = work / "radlint.duckdb"
    print(f"\nReview report: {work / 'report.html'}")
    print(f"Database: {db}")
    print(
        "Try: "
        + sys.executable
        + " -c \"import duckdb; duckdb.connect('"
        + str(db)
        + "', read_only=True).sql('select * from top_suspects limit 10').show()\""
    )
    print(f"demo wall time: {time.perf_counter() - t0:.1f} s")
    return 0 if summary.get("status") == "completed" else 1


def run_planted(args) -> int:
    """Planted-error evaluation on a labeled image folder (for example the held-out test split).

    With ``--seeds`` one lake per seed, each in DIR/seed-S (two builds of one lake differ by a few
    hundredths: other planted draws, other folds), then the builds pooled and the lake gates chosen
    over all of them."""
    root = Path(args.dir).resolve()
    try:
        sources = lakegen.read_labeled_folder(Path(args.labels), args.split_file and Path(args.split_file),
                                              args.split, args.overrides,
                                              unseen_source=args.unseen_source)
    except (ValueError, OSError) as e:
        print(f"radlint: {e}", file=sys.stderr)
        return 2
    if not sources:
        print("radlint: no images selected (check --labels/--split-file/--split)", file=sys.stderr)
        return 2
    confusable = _confusable(args.registry)
    seeds = getattr(args, "seeds", None)
    if not seeds:
        return 0 if _planted_build(args, sources, root, args.seed, args.plot, confusable)[0] else 1
    completed = True
    builds = []
    for seed in seeds:
        work = root / f"seed-{seed}"
        print(f"\n=== build with seed {seed} ({work})")
        plot = None
        if args.plot:
            plot = Path(args.plot)
            plot = str(plot.with_name(f"{plot.stem}-seed-{seed}{plot.suffix}"))
        ok, scores = _planted_build(args, sources, work, seed, plot, confusable)
        completed = completed and ok
        builds.append((work, scores))
    print(f"\n=== {len(builds)} builds pooled (seeds {', '.join(str(s) for s in seeds)})")
    print(planted.format_table(planted.pool_scores([scores for _, scores in builds])))
    chosen = _choose_over([work for work, _ in builds], groups=[str(root)] * len(builds), confusable=confusable)
    print("\nLake gates chosen over the builds, flags pooled (registry tasks.<field>.gate):")
    print(_format_chosen(chosen))
    print("\nEach build under those gates (precision / recall, 95 % Wilson intervals):")
    print(_format_per_lake(chosen, [str(work) for work, _ in builds]))
    return 0 if completed else 1


def _planted_build(args, sources, work: Path, seed: int, plot: str | None,
                   confusable: dict[str, tuple[str, ...]]) -> tuple[bool, dict]:
    """One lake of ``sources`` with planted errors drawn with ``seed``, audited and scored in ``work``;
    prints its tables (lake gates tried with the registry's ``confusable`` class sets). Returns (the
    audit completed, the scores)."""
    _fresh(work)
    sources = lakegen.stratified_sample(sources, args.n, seed)
    truth = work / "planted_errors.csv"
    systematic = tuple(args.systematic.split(":", 1)) if args.systematic else None
    lakegen.build_lake(sources, work / "lake", truth, error_rate=args.error_rate, seed=seed,
                       systematic=systematic)
    print(f"lake: {len(sources)} images, planted error rate {args.error_rate} per field"
          + (f", every {systematic[0]} image labelled {systematic[1]} (one protocol)" if systematic else ""))
    summary, scores = _audit_and_score(work, truth, args.workers, args.registry)
    print(planted.format_table(scores))
    from radlint.tasks import database

    con = database.connect(work / "radlint.duckdb", read_only=True)
    try:
        sweep = planted.rule_sweep(con, truth)
        group = planted.systematic_group(con, truth)
        chosen = planted.choose_lake_gates([(con, truth)], confusable=confusable)
        if plot:
            planted.plot_pr(con, truth, plot)
    finally:
        con.close()
    print("\nGeneric-only vs lake-adaptive rules (where no probe scored an image the generic verdict stands):")
    print(planted.format_sweep(sweep))
    print("\nLake gates chosen on this lake (registry tasks.<field>.gate: lake_rule, lake_weight, "
          "lake_prior_images, lake_min_severity, lake_distrust_scale, lake_confusable_min_severity):")
    print(_format_chosen(chosen))
    if group is not None:
        print(f"\nsystematic group: {group['n_images']} images, {group['per_image_flags']} flagged one by one; "
              f"group_findings {'flags' if group['group_flagged'] else 'does NOT flag'} protocol "
              f"{lakegen.SYSTEMATIC_PROTOCOL!r} (n={group['group_n']}, share disagreeing "
              f"{group['group_share_disagree']})")
    if plot:
        print(f"precision-recall plot: {plot}")
    return summary.get("status") == "completed", scores


def _choose_over(builds: list[Path], **choose) -> dict:
    """planted.choose_lake_gates (``choose``: its keyword arguments) over audited evaluate-planted
    folders, each opened read-only for the choice."""
    from radlint.tasks import database

    cons = []
    try:
        for b in builds:
            cons.append((database.connect(b / "radlint.duckdb", read_only=True), b / "planted_errors.csv"))
        return planted.choose_lake_gates(cons, **choose)
    finally:
        for con, _ in cons:
            con.close()


def _confusable(registry: str | None) -> dict[str, tuple[str, ...]]:
    """Per task, the class sets the registry's model declares confusable (gate.lake_confusable)."""
    from radlint.tasks import infer

    entry = infer.default_model(registry) if registry else infer.default_model()
    return {task: spec.lake_confusable for task, spec in entry.tasks.items() if spec.lake_confusable}


def _format_chosen(chosen: dict) -> str:
    return "\n".join(
        f"  {field}: lake_rule {c['lake_rule']}, lake_weight {c['lake_weight']}, lake_prior_images "
        f"{c['lake_prior_images']}, lake_min_severity {c['lake_min_severity']}, lake_distrust_scale "
        f"{c['lake_distrust_scale']}"
        + (f", lake_confusable {c['lake_confusable']}, lake_confusable_min_severity "
           f"{c['lake_confusable_min_severity']}" if c.get("lake_confusable_min_severity") is not None else "")
        + " -> precision "
        f"{planted.format_interval(c['precision'], c.get('precision_ci'))}, "
        f"recall {planted.format_interval(c['recall'], c.get('recall_ci'))}"
        + (f" (worst lake {c['worst'][0]:.3f} / {c['worst'][1]:.3f})" if c["n_lakes"] > 1 else "")
        + f" ({c['criterion']})"
        for field, c in chosen.items()
    )


def choose_gates(args) -> int:
    """`radlint choose-lake-gates DIR...`: pooled over the folders' audited planted lakes. A folder made
    by ``evaluate-planted --seeds`` counts as one lake with several builds (its seed-S folders)."""
    builds: list[Path] = []
    groups: list[str] = []
    for d in args.dirs:
        found = [Path(d)] if _is_build(Path(d)) else sorted(b for b in Path(d).glob("seed-*") if _is_build(b))
        if not found:
            print(f"radlint: {d} has no radlint.duckdb and planted_errors.csv, nor seed-* folders with them "
                  f"(run evaluate-planted --dir {d})", file=sys.stderr)
            return 2
        builds += found
        groups += [str(d)] * len(found)
    chosen = _choose_over(builds, targets=_targets(args.target), groups=groups,
                          confusable=_confusable(args.registry))
    n_lakes = len(set(groups))
    print(f"Lake gates chosen over {n_lakes} lake(s)"
          + (f" ({len(builds)} builds)" if len(builds) > n_lakes else "")
          + ", flags pooled (registry tasks.<field>.gate):")
    print(_format_chosen(chosen))
    print("\nEach build under the chosen gates (precision / recall, 95 % Wilson intervals):")
    print(_format_per_lake(chosen, [str(b) for b in builds]))
    if args.write_registry:
        from radlint.tasks import infer

        source = Path(args.registry) if args.registry else infer.REGISTRY_PATH
        write_registry(source, Path(args.write_registry), chosen,
                       "radlint choose-lake-gates " + " ".join(args.dirs)
                       + "".join(f" --target {f}:{p}:{r}" for f, (p, r) in args.target or ()))
        print(f"\nregistry with these lake gates for its first model: {args.write_registry} (from {source})")
    return 0


LAKE_GATE_KEYS = ("lake_rule", "lake_weight", "lake_prior_images", "lake_min_severity", "lake_distrust_scale",
                  "lake_confusable_min_severity")


def write_registry(source: Path, out: Path, chosen: dict, command: str) -> None:
    """A copy of the registry ``source`` whose first model's lake gates (LAKE_GATE_KEYS of
    tasks.<field>.gate) are ``chosen`` (planted.choose_lake_gates' result), so that the gates an audit
    runs with are what the command printed, not a hand copy. Its class sets (gate.lake_confusable)
    stay as the source declares them. Model files stay where they are: referred to by absolute path
    when ``out`` is in another folder. Checked by loading it before it replaces ``out``."""
    import yaml

    from radlint.tasks import infer

    text = Path(source).read_text()
    data = yaml.safe_load(text)
    model = data["models"][0]
    for field, c in chosen.items():
        gate = model["tasks"][field].setdefault("gate", {})
        for key in LAKE_GATE_KEYS:
            gate.pop(key, None)
            if c.get(key) is not None:
                gate[key] = c[key]
    here, there = Path(source).resolve().parent, Path(out).resolve().parent
    if here != there:
        for m in data["models"]:
            m["file"] = str((here / m["file"]).resolve())
            turned = (m.get("embedding") or {}).get("turned")
            if turned:
                turned["file"] = str((here / turned["file"]).resolve())
            if m.get("card"):
                m["card"] = str((here / m["card"]).resolve())
    source_header = "".join(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines(keepends=True)))
    header = (f"# Written by `{command}` from {Path(source).resolve()}:\n"
              "# the first model's lake gates (tasks.<field>.gate.lake_*) as that command chose them.\n" + source_header)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
    try:
        infer.load_registry(tmp)
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(out)


def _targets(given: list[tuple[str, tuple[float, float]]] | None) -> dict[str, tuple[float, float]]:
    """planted.LAKE_TARGETS with the ``--target`` values (parsed by the CLI) in place of a field's own."""
    return {**planted.LAKE_TARGETS, **dict(given or ())}


def _is_build(folder: Path) -> bool:
    return (folder / "radlint.duckdb").exists() and (folder / "planted_errors.csv").exists()


def _format_per_lake(chosen: dict, dirs) -> str:
    lines = []
    for field, c in chosen.items():
        for lake in c["per_lake"]:
            tp, n_flagged, n_planted = lake["true_positives"], lake["flagged"], lake["planted"]
            r = planted.rates(tp, n_flagged, n_planted)
            lines.append(f"  {field:<12} {dirs[lake['lake']]}: "
                         f"{planted.format_interval(r['precision'], r['precision_ci'])} / "
                         f"{planted.format_interval(r['recall'], r['recall_ci'])} "
                         f"({tp} of {n_flagged} flags right, {n_planted} planted)")
    return "\n".join(lines)
