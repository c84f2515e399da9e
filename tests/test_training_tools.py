"""Tools around training that run without torch: the compact data copy, the recipe recorder and
the GPU benchmark's CPU path."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image


def _labelled_folder(tmp_path):
    rows = []
    (tmp_path / "src" / "images").mkdir(parents=True)
    for i, (split, size) in enumerate([("train", (500, 300)), ("val", (200, 100)), ("test", (640, 480))]):
        arr = (np.random.default_rng(i).random(size) * 255).astype(np.uint8)
        name = f"images/im{i}.jpg"
        Image.fromarray(arr).save(tmp_path / "src" / name)
        rows.append({"image_id": f"im{i}", "file": name, "patient_id": f"p{i}", "body_part": "chest",
                     "view": "PA", "source": "s"})
    with open(tmp_path / "src" / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    split = tmp_path / "split.csv"
    split.write_text("patient_id,split\np0,train\np1,val\np2,test\n")
    return tmp_path / "src", split


def test_pack_keeps_the_chosen_splits_downscaled_and_records_its_command(tmp_path):
    from radlint.models.pack import main

    src, split = _labelled_folder(tmp_path)
    out = tmp_path / "packed"
    assert main(["--data", str(src), "--out", str(out), "--split-file", str(split),
                 "--max-side", "256", "--quality", "90"]) == 0
    with open(out / "labels.csv", newline="") as f:
        kept = [r["image_id"] for r in csv.DictReader(f)]
    assert kept == ["im0", "im1"]  # the test image stays behind
    assert not (out / "images" / "im2.jpg").exists()
    assert Image.open(out / "images" / "im0.jpg").size == (154, 256)  # 300x500 -> longest side 256
    assert Image.open(out / "images" / "im1.jpg").size == (100, 200)  # small images are not enlarged
    meta = json.loads((out / "pack.json").read_text())
    assert meta["images"] == 2 and "--max-side 256" in meta["command"]


def test_train_command_records_pack_step_and_labels_used(tmp_path):
    from radlint.models.export import train_command  # torch is imported only by export's main

    data = tmp_path / "packed"
    data.mkdir()
    (data / "pack.json").write_text(json.dumps({"command": "python -m radlint.models.pack --out X", "images": 2}))
    targs = {"tag": "t", "data": str(data), "size": "256", "epochs": "91", "device": "cuda",
             "fit_seconds": "300.0", "workers": "7", "seed": "0"}
    cmd = train_command(targs)
    assert cmd.startswith("python -m radlint.models.pack --out X && python -m radlint.models.train --tag t")
    assert f"--data {data}" in cmd and "--overrides ''" in cmd and "--epochs 91" in cmd
    assert "--fit-seconds" not in cmd and "--device" not in cmd and "--workers" not in cmd


def test_gpu_bench_runs_the_cpu_provider(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from bench.gpu import main

    out = tmp_path / "gpu.md"
    assert main(["--images", "8", "--batches", "4,8", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| onnxruntime cpu | 4 |" in text and "| onnxruntime cpu | 8 |" in text
    assert "1.0x" in text


def test_compare_heads_table_sets_each_task_against_its_single_task_network():
    from radlint.models.compare_heads import table

    def summary(val, test):
        return {"weights": "ema", "validation": {"ema": [12, val]}, "test_quick": test}

    summaries = {
        "multi-head": summary({"body_part_macro_auc": 0.90, "orientation_macro_auc": 0.80},
                              {"body_part_macro_auc": 0.88}),
        "multi-head, 3x samples": summary({"body_part_macro_auc": 0.95, "orientation_macro_auc": 0.97},
                                          {"body_part_macro_auc": 0.93}),
        "body_part only": summary({"body_part_macro_auc": 0.92}, {"body_part_macro_auc": 0.91}),
        "projection only (chest images)": summary({}, {}),
        "orientation only": summary({"orientation_macro_auc": 0.98}, None),
    }
    rows = table(summaries).splitlines()[2:]
    assert rows == [
        "| body_part_macro_auc | validation | 0.9000 | 0.9500 | 0.9200 | -0.0200 | +0.0300 |",
        "| body_part_macro_auc | test | 0.8800 | 0.9300 | 0.9100 | -0.0300 | +0.0200 |",
        "| orientation_macro_auc | validation | 0.8000 | 0.9700 | 0.9800 | -0.1800 | -0.0100 |",
    ]  # a metric missing from any run (orientation test here) gets no row


def test_leave_one_source_out_table_names_each_network(tmp_path, monkeypatch):
    from radlint.models import card

    run = tmp_path / "loso_x"
    run.mkdir()
    # projection classes 0 PA, 1 AP, 2 LATERAL; the model tells PA from AP perfectly and never
    # calls a frontal image lateral
    y = np.array([0, 0, 1, 1, 2, 0, 1, 2])
    p = np.zeros((len(y), 3))
    p[np.arange(len(y)), y] = 0.8
    p[p == 0] = 0.1
    np.savez(run / "test_preds.npz", projection=y, p_projection=p[:, None, :])
    (run / "summary.json").write_text(json.dumps({
        "n_train": 100, "seconds": 600, "params": 2328000,
        "args": {"exclude_source": "site_b", "epochs": "15", "samples_per_epoch": "1024",
                 "widths": "32,64,128,224", "size": "256"},
    }))
    monkeypatch.setattr(card, "WORK", tmp_path)
    lines, res = card.loso_section(n_boot=50)
    assert lines[0].split(" | ")[1] == "network"
    assert "widths 32,64,128,224, 256 px, 2.33 M parameters" in lines[2]
    assert "15 epochs × 1024 samples, 10 min" in lines[2]
    assert res["site_b"]["pa_vs_ap"][0] == 1.0 and res["site_b"]["counts"] == "3/3/2"
