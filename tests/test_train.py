"""models/train.py end to end on a tiny synthetic folder, in float32 and under bfloat16 autocast.

Needs torch (the `train` extra); CI installs a local CPU build when it finds one."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")


def _folder(tmp_path):
    """Chest and knee 'radiographs' for six patients: a bright disc vs a vertical bar."""
    rows = []
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for p in range(6):
        for k, (part, view) in enumerate([("chest", "PA"), ("chest", "AP"), ("lower_limb", "")]):
            img = (rng.random((90, 70)) * 60).astype(np.uint8)
            if part == "chest":
                yy, xx = np.mgrid[:90, :70]
                img[(yy - 45) ** 2 + (xx - 35) ** 2 < 600] += 150
            else:
                img[10:80, 30:40] += 150
            name = f"images/p{p}_{k}.png"
            Image.fromarray(img).save(tmp_path / name)
            rows.append({"file": name, "source": "synthetic", "patient_id": f"p{p}", "body_part": part,
                         "view": view})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    split = tmp_path / "split.csv"
    split.write_text("patient_id,split\n" + "".join(
        f"p{p},{'train' if p < 4 else 'val' if p == 4 else 'test'}\n" for p in range(6)))
    return split


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_run_writes_a_model_chosen_on_validation(tmp_path, monkeypatch, precision):
    import models.train as train

    split = _folder(tmp_path)
    monkeypatch.setattr(train, "WORK", tmp_path / "work")
    assert train.main(["--data", str(tmp_path), "--split-file", str(split), "--overrides", "",
                       "--tag", "t", "--size", "64", "--epochs", "2", "--samples-per-epoch", "32",
                       "--batch-size", "16", "--widths", "8,8,8,8", "--threads", "1", "--workers", "0",
                       "--eval-every", "1", "--precision", precision]) == 0
    out = tmp_path / "work" / "t"
    with open(out / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert [r["epoch"] for r in log] == ["1", "2"]
    assert all(math.isfinite(float(r["loss"])) for r in log)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["args"]["precision"] == precision
    assert summary["n_train"] == 12 and summary["n_val"] == 3 and summary["n_test"] == 3
    assert summary["weights"] in summary["validation"]
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    # weights stay float32 whatever the forward pass ran in, so export and parity are unchanged
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
