"""Leave-one-source-out results of train.py runs (``--exclude-source``), per task, with intervals.

    python -m radlint.models.loso_table models/_work/loso_covid_effl0 [more run folders] [--json OUT]

Reads each run's summary.json and test_preds.npz (the held-out source's labelled chest images,
upright and in the four rotations) and prints one markdown row per run: PA-vs-AP AUC,
frontal-vs-lateral AUC, 3-class accuracy (upright images) and orientation macro AUC over the four
rotations, with percentile-bootstrap 95 % intervals (1000 resamples; orientation resamples images
with their four rotations together). ``models/card.py`` reads the same files for v3's card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from radlint.tasks.evaluation import accuracy, auc_ovr, binary_auc, bootstrap_ci, fmt_ci


def _orientation_macro(p):
    n = len(p)
    y = np.tile(np.arange(4), n)
    pp = p.reshape(-1, 4)
    return float(np.mean([auc_ovr(y == c, pp[:, c]) for c in range(4)]))


def run_row(run: Path, n_boot: int = 1000) -> dict:
    s = json.loads((run / "summary.json").read_text())
    z = np.load(run / "test_preds.npz")
    y = z["projection"]
    p = z["p_projection"][:, 0]  # upright
    f = y != 2
    pa_ap = (binary_auc(y[f] == 0, p[f, 0] / np.clip(p[f, 0] + p[f, 1], 1e-12, None), n_boot=n_boot)
             if len(set(y[f].tolist())) == 2 else None)
    fl = (binary_auc(y != 2, 1 - p[:, 2], n_boot=n_boot)
          if len(set((y == 2).tolist())) == 2 else None)
    acc = bootstrap_ci(accuracy, y, p.argmax(1), n_boot=n_boot)
    po = z["p_orientation"]  # [N, 4 rotations, 4 classes]
    ori = bootstrap_ci(_orientation_macro, po, n_boot=n_boot)
    a = s["args"]
    arch = a.get("arch") or ""
    network = (f"EfficientNet-{arch.rsplit('_', 1)[-1].title()} "
               f"{'ImageNet' if a.get('pretrained') == 'True' else 'scratch'}, {a['size']} px"
               if arch.startswith("efficientnet_lite") else f"widths {a.get('widths')}, {a.get('size')} px")
    return {"run": run.name, "source": a["exclude_source"], "network": network,
            "counts": "/".join(str(int((y == c).sum())) for c in range(3)),
            "pa_vs_ap": pa_ap, "frontal_vs_lateral": fl, "acc": acc, "orientation": ori,
            "n_train": s["n_train"], "epochs": a["epochs"], "samples_per_epoch": a["samples_per_epoch"],
            "minutes": round(s["seconds"] / 60, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args(argv)
    rows = [run_row(r, args.bootstrap) for r in args.runs]
    print("| held-out source | run | network | n (PA/AP/LATERAL) | PA-vs-AP AUC [95% CI] | "
          "frontal-vs-lateral AUC [95% CI] | 3-class accuracy [95% CI] | orientation macro AUC [95% CI] "
          "| trained on |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['run']} | {r['network']} | {r['counts']} | {fmt_ci(r['pa_vs_ap'])} | "
              f"{fmt_ci(r['frontal_vs_lateral'])} | {fmt_ci(r['acc'])} | {fmt_ci(r['orientation'])} | "
              f"{r['n_train']} images, {r['epochs']} × {r['samples_per_epoch']} samples, "
              f"{r['minutes']:.0f} min |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
