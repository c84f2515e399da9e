"""``radlint evaluate``: recompute the model card's figures on any labeled image folder.

The metrics and the folder evaluation live in tasks/evaluation.py (training imports them from
there); this module is the subcommand's arguments and output.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

# evaluate and to_markdown are this command's; the others are re-exported because models/train.py
# and models/export.py still import them from here (PENDING in tests/test_layers.py until they
# import radlint.tasks.evaluation).
from radlint.tasks.evaluation import (  # noqa: F401
    apply_overrides,
    auc_ovr,
    choose_thresholds,
    evaluate,
    predict_folder,
    stored_orientation,
    to_markdown,
)


def _jsonable(o):
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, (np.floating, np.integer)):
        return _jsonable(o.item())
    return o


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, required=True,
                        help="CSV in labels.csv format (file, body_part, view, patient_id)")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder the CSV's file column is relative to (default: its folder)")
    parser.add_argument("--split-file", type=Path, default=None,
                        help="CSV patient_id,split (e.g. models/splits/patient_split.csv)")
    parser.add_argument("--split", default=None, help="keep only patients of this split")
    parser.add_argument("--source", default=None,
                        help="keep only rows whose source column is this (a source left out of "
                             "a model's training: leave-one-source-out)")
    parser.add_argument("--overrides", type=Path, default=None,
                        help="CSV keyed by file whose non-empty cells replace the labels' values "
                             "(e.g. an orientation column for images not stored upright)")
    parser.add_argument("--registry", type=Path, default=None, help="model registry YAML")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the result as markdown (.md) or JSON (.json)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: auto)")


def run(args) -> int:
    if bool(args.split_file) != bool(args.split):
        print("radlint evaluate: --split-file and --split go together")
        return 2
    if not Path(args.labels).exists():
        print(f"radlint evaluate: labels file not found: {args.labels}")
        return 2
    try:
        result = evaluate(args.labels, args.root, registry=args.registry,
                          split_file=args.split_file, split=args.split, n_boot=args.bootstrap,
                          seed=args.seed, threads=args.threads, overrides=args.overrides,
                          source=args.source)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"radlint evaluate: {e}")
        return 1
    md = to_markdown(result)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".json":
            out.write_text(json.dumps(_jsonable(result), indent=2))
        else:
            out.write_text(md)
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience entry point
    ap = argparse.ArgumentParser(prog="radlint evaluate", description=__doc__)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
