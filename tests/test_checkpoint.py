"""radlint import-checkpoint on a randomly initialised checkpoint of the paper's exact layout."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from radlint import checkpoint as ck  # noqa: E402
from radlint.tasks.infer import load_registry, sha256_file  # noqa: E402
from radlint.tasks.vocabulary import BODY_PART, ORIENTATION, PROJECTION  # noqa: E402


def _random_checkpoint(heads: dict[str, int], seed: int = 0) -> dict:
    """Random weights with the paper's keys and shapes (incl. random BN statistics)."""
    EfficientNetB4, _ = ck.build_modules()
    torch.manual_seed(seed)
    net = EfficientNetB4(heads, in_channels=1)
    sd = net.state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) * 0.5 + 0.75)
        elif k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.05)
    return sd


def test_layout_matches_torchvision_efficientnet_b4():
    EfficientNetB4, _ = ck.build_modules()
    # torchvision's published parameter count of efficientnet_b4 (3 channels, 1000 classes)
    full = EfficientNetB4({}, in_channels=3, num_classes=1000)
    assert sum(p.numel() for p in full.parameters()) == 19_341_616
    sd = _random_checkpoint({"label_bodypart": 7})
    assert tuple(sd["features.0.0.weight"].shape) == (48, 1, 3, 3)
    assert tuple(sd["features.1.0.block.0.0.weight"].shape) == (48, 1, 3, 3)  # depthwise, e=1
    assert tuple(sd["features.1.0.block.1.fc1.weight"].shape) == (12, 48, 1, 1)
    assert tuple(sd["features.7.1.block.3.1.running_var"].shape) == (448,)
    assert tuple(sd["features.8.0.weight"].shape) == (1792, 448, 1, 1)
    assert tuple(sd["multi_classifier.label_bodypart.1.weight"].shape) == (7, 1792)
    assert not any(k.startswith("classifier.") for k in sd)
    stages = [max(int(k.split(".")[2]) for k in sd if k.startswith(f"features.{i}."))
              for i in range(1, 8)]
    assert [s + 1 for s in stages] == [2, 4, 4, 6, 6, 8, 2]


def _run(tmp_path, path, kind):
    reg = tmp_path / "registry.yaml"
    reg.write_text("schema: 1\nmodels: []\n")
    ap = argparse.ArgumentParser()
    ck.add_arguments(ap)
    args = ap.parse_args([str(path), "--kind", kind, "--registry", str(reg)])
    assert ck.run(args) == 0
    entries = load_registry(reg)
    assert len(entries) == 1
    return entries[0]


def _onnx_out(entry, x):
    sess = ort.InferenceSession(str(entry.path), providers=["CPUExecutionProvider"])
    names = [t.output for t in entry.tasks.values()]
    return dict(zip(entry.tasks, sess.run(names, {"image": x})))


@pytest.mark.slow
def test_bodypart_checkpoint_converts_with_parity(tmp_path):
    sd = _random_checkpoint({"label_bodypart": 7}, seed=1)
    # wrapped like a DataParallel training checkpoint
    path = tmp_path / "bodypart.pt"
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    entry = _run(tmp_path, path, "bodypart")
    assert entry.path.exists() and sha256_file(entry.path) == entry.sha256
    assert entry.input_size == 256
    assert entry.tasks["body_part"].classes == BODY_PART

    # parity against the same weights in torch, mapping applied by hand
    EfficientNetB4, _ = ck.build_modules()
    net = EfficientNetB4({"label_bodypart": 7}, in_channels=1).eval()
    net.load_state_dict(sd)
    x = np.random.default_rng(2).uniform(-1, 1, (3, 1, 256, 256)).astype(np.float32)
    with torch.no_grad():
        p7 = torch.softmax(net(torch.from_numpy(x))["label_bodypart"], 1).numpy()
    m = np.array(ck.mapping_matrix(ck.BODYPART_CLASSES, BODY_PART, ck.BODYPART_MAP))
    got = _onnx_out(entry, x)["body_part"]
    assert got.shape == (3, 9)
    assert np.abs(got - p7 @ m).max() < 1e-4
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # Incomplete Chest counts as chest; Extremities is split between the limbs
    assert np.allclose(got[:, BODY_PART.index("chest")], p7[:, 2] + p7[:, 3], atol=1e-5)
    assert np.allclose(got[:, BODY_PART.index("upper_limb")], p7[:, 6] / 2, atol=1e-5)
    assert np.all(got[:, BODY_PART.index("spine")] == 0)


@pytest.mark.slow
def test_cxp_checkpoint_maps_classes(tmp_path):
    sd = _random_checkpoint({"label_APorPA": 3, "label_round": 4}, seed=3)
    # make the heads decisive: AP and "Left rotation" win regardless of the features
    sd["multi_classifier.label_APorPA.1.weight"].zero_()
    sd["multi_classifier.label_APorPA.1.bias"].copy_(torch.tensor([8.0, 0.0, 0.0]))
    sd["multi_classifier.label_round.1.weight"].zero_()
    sd["multi_classifier.label_round.1.bias"].copy_(torch.tensor([0.0, 0.0, 8.0, 0.0]))
    path = tmp_path / "cxp.pt"
    torch.save(sd, path)
    entry = _run(tmp_path, path, "cxp")
    assert set(entry.tasks) == {"projection", "orientation"}
    assert entry.tasks["projection"].classes == PROJECTION
    assert entry.tasks["orientation"].classes == ORIENTATION
    x = np.zeros((2, 1, 256, 256), np.float32)
    out = _onnx_out(entry, x)
    assert [PROJECTION[i] for i in out["projection"].argmax(1)] == ["AP", "AP"]
    assert [ORIENTATION[i] for i in out["orientation"].argmax(1)] == ["rot90ccw", "rot90ccw"]
    np.testing.assert_allclose(out["orientation"].sum(1), 1.0, atol=1e-5)


def test_wrong_kind_is_reported(tmp_path):
    sd = _random_checkpoint({"label_bodypart": 7}, seed=4)
    path = tmp_path / "bp.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="label_APorPA"):
        ck.convert(path, "cxp", tmp_path)
