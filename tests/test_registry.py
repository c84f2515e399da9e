"""The registry states the audit's preprocessing; an entry that states other inputs is refused at load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from radlint.tasks import infer, preprocess


def _registry_with(tmp_path: Path, tiny_registry: Path, change) -> Path:
    data = yaml.safe_load(tiny_registry.read_text())
    change(data, data["models"][0])
    shutil.copy(tiny_registry.parent / "tiny.onnx", tmp_path / "tiny.onnx")
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(key, value):
    def change(data, model):
        model["preprocessing"][key] = value
    return change


@pytest.mark.parametrize("change, words", [
    # ImageNet's grey mean/std: a model trained on them would see every input shifted
    (_set("mean", 0.485), "preprocessing mean is 0.485"),
    (_set("std", 0.229), "preprocessing std is 0.229"),
    (_set("letterbox", False), "preprocessing letterbox is False"),
    (_set("scale", "minmax_float"), "preprocessing scale is 'minmax_float'"),
    (_set("invert_monochrome1", False), "preprocessing invert_monochrome1 is False"),
    (_set("mean", "half"), "preprocessing mean is 'half'"),
    (_set("resize", "crop"), "preprocessing resize unknown"),
    (lambda data, model: model["input"].update(channels=3), "input.channels is 3"),
    (lambda data, model: data.update(schema=2), "schema 2"),
    (lambda data, model: data.pop("schema"), "schema None"),
])
def test_an_entry_stating_other_preprocessing_is_refused(tmp_path, tiny_registry, change, words):
    path = _registry_with(tmp_path, tiny_registry, change)
    with pytest.raises(infer.RegistryError) as err:
        infer.default_model(path)
    assert words in str(err.value)


def test_what_the_code_does_is_accepted_and_left_out_keys_mean_the_code(tmp_path, tiny_registry):
    # the shipped registry states every key
    shipped = infer.default_model()
    assert shipped.preprocessing == preprocess.PREPROCESSING
    # an equal float written another way, and keys left out (the tiny registry leaves out invert_monochrome1)
    path = _registry_with(tmp_path, tiny_registry, _set("mean", 0.50000000001))
    assert infer.default_model(path).preprocessing["mean"] == pytest.approx(0.5)


def test_the_stated_preprocessing_is_what_model_input_does():
    pixels = np.zeros((60, 40), dtype=np.uint16)
    pixels[:, 20:] = 4095  # a dark and a bright half: min-max puts them at 0 and 255
    x = preprocess.model_input(pixels, 32)
    assert x.shape == (preprocess.CHANNELS, 32, 32)
    # letterbox: the short side is padded with black, which normalises to (0 - mean) / std
    black = (0.0 - preprocess.PREPROCESSING["mean"]) / preprocess.PREPROCESSING["std"]
    assert np.allclose(x[0, :, 0], black) and np.allclose(x[0, :, -1], black)
    # minmax_uint8 then mean/std: the range is [(0 - mean) / std, (1 - mean) / std]
    top = (1.0 - preprocess.PREPROCESSING["mean"]) / preprocess.PREPROCESSING["std"]
    assert x.min() == pytest.approx(black) and x.max() == pytest.approx(top)


def test_audit_with_a_mismatched_registry_stops_before_any_work(tmp_path, tiny_registry, capsys):
    from radlint.cli import main

    path = _registry_with(tmp_path, tiny_registry, _set("mean", 0.485))
    (tmp_path / "lake").mkdir()
    db = tmp_path / "a.duckdb"
    assert main(["audit", str(tmp_path / "lake"), "--db", str(db), "--registry", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "preprocessing mean is 0.485" in err
    assert not db.exists()


def shipped_registry(tmp_path: Path, change_model) -> Path:
    """The shipped registry with absolute model paths, after ``change_model(its first entry)``."""
    data = yaml.safe_load(infer.REGISTRY_PATH.read_text())
    model = data["models"][0]
    model["file"] = str(infer.MODELS_DIR / model["file"])
    if "turned" in model["embedding"]:
        model["embedding"]["turned"]["file"] = str(infer.MODELS_DIR / model["embedding"]["turned"]["file"])
    change_model(model)
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _shipped_with(tmp_path: Path, change) -> Path:
    """The shipped registry with absolute model paths, after ``change(embedding block)``."""
    return shipped_registry(tmp_path, lambda model: change(model["embedding"]))


def _turned(**change) -> dict:
    """A turned-file block (v3's file, the whole of the shipped embedding declared), after ``change``."""
    return dict({"file": str(infer.MODELS_DIR / "radlint-multihead-v3.turned.onnx"),
                 "sha256": infer.load_registry()[1].embedding.turned.sha256, "output": "embedding",
                 "columns": [0, infer.default_model().embedding.size]}, **change)


def test_turned_columns_must_hold_the_orientation_probes_columns(tmp_path):
    size = infer.default_model().embedding.size
    path = _shipped_with(tmp_path, lambda emb: emb.update(turned=_turned(columns=[size // 2, size])))
    with pytest.raises(infer.RegistryError, match="probe_features.orientation .* outside the columns the turned views get"):
        infer.default_model(path)
    path = _shipped_with(tmp_path, lambda emb: emb.update(turned=_turned(columns=[224, 4000])))
    with pytest.raises(infer.RegistryError, match="turned.columns .* is not a column range"):
        infer.default_model(path)


def test_a_turned_file_that_is_not_the_registered_one_is_refused(tmp_path):
    path = _shipped_with(tmp_path, lambda emb: emb.update(turned=_turned(sha256="0" * 64)))
    entry = infer.default_model(path)
    with pytest.raises(infer.RegistryError, match=f"sha256 mismatch for {entry.embedding.turned.path.name}"):
        infer.verify(entry)
    # without a turned file, turned views get the whole embedding from the model itself
    entry = infer.default_model(_shipped_with(tmp_path, lambda emb: emb.pop("turned", None)))
    assert entry.embedding.turned_columns() == (0, entry.embedding.size)


@pytest.mark.parametrize("gate, words", [
    ({"lake_weight": 1.5}, "lake_weight must be within"),
    ({"lake_rule": "sometimes"}, "lake_rule must be"),
    ({"lake_distrust_scale": 0}, "lake_distrust_scale must be above 0"),
    ({"lake_confusable": [["a", "z"]], "lake_confusable_min_severity": 0.9}, "names two or more of the task's classes"),
    ({"lake_confusable": [["a"]]}, "names two or more"),
    ({"lake_confusable": [["a", "b"]], "lake_confusable_min_severity": 0}, "must be within \\(0, 1\\]"),
    ({"lake_confusable_min_severity": 0.9}, "needs gate.lake_confusable"),
])
def test_lake_gates_out_of_range_are_refused(gate, words):
    spec = {"classes": ["a", "b"], "gate": {"min_severity": 0.5, **gate}}
    with pytest.raises(infer.RegistryError, match=words):
        infer._task_spec("body_part", spec)


def test_lake_confusable_sets_reach_the_task_spec_in_either_spelling():
    spec = infer._task_spec("projection", {"classes": ["PA", "AP", "LATERAL"], "gate": {
        "lake_confusable": [["PA", "AP"], "AP|LATERAL"], "lake_confusable_min_severity": 0.9}})
    assert spec.lake_confusable == ("PA|AP", "AP|LATERAL") and spec.lake_confusable_min_severity == 0.9
    assert not {"lake_confusable", "lake_confusable_min_severity"} & set(spec.gate_policy)
    # sets without a gate of their own: declared for choose-lake-gates, no effect on the flags
    spec = infer._task_spec("projection", {"classes": ["PA", "AP"], "gate": {"lake_confusable": [["PA", "AP"]]}})
    assert spec.lake_confusable == ("PA|AP",) and spec.lake_confusable_min_severity is None


def test_lake_distrust_scale_reaches_the_task_spec():
    spec = infer._task_spec("body_part", {"classes": ["a"], "gate": {"lake_distrust_scale": 0.3}})
    assert spec.lake_distrust_scale == 0.3 and "lake_distrust_scale" not in spec.gate_policy
