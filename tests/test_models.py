"""Registry integrity, preprocessing determinism and a smoke run of the shipped ONNX model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from radlint.tasks.infer import REGISTRY_PATH, default_model, load_registry, sha256_file
from radlint.tasks.preprocess import model_input, rotate_to_orientation
from radlint.tasks.vocabulary import TASKS


def _raw_registry():
    return yaml.safe_load(REGISTRY_PATH.read_text())


def test_registry_parses_and_files_match_sha256():
    entries = load_registry()
    assert entries, "registry has no models"
    names = [e.name for e in entries]
    assert len(names) == len(set(names))
    for e in entries:
        assert e.path.exists(), f"{e.path} missing"
        # Small enough to commit: the 9.3 MB classifier plus the grafted ImageNet embedder (int8).
        assert e.path.stat().st_size < 20 * 1024 * 1024
        assert sha256_file(e.path) == e.sha256
        assert e.input_name == "image"
        assert e.input_size > 0
        if e.embedding is not None and e.embedding.turned is not None:
            assert e.embedding.turned.path.stat().st_size < 10 * 1024 * 1024
            assert sha256_file(e.embedding.turned.path) == e.embedding.turned.sha256


def test_turned_views_get_the_embedding_columns_the_model_computes():
    # From the registry's turned file where an entry names one (v3: the ImageNet columns alone), else
    # from the model itself (v4, whose orientation probe reads the model's own columns).
    pytest.importorskip("onnxruntime")
    from radlint.tasks import infer

    entries = [e for e in load_registry() if e.embedding is not None]
    assert entries[0].embedding.turned is None and any(e.embedding.turned is not None for e in entries)
    rng = np.random.default_rng(2)
    for entry in entries:
        x = np.stack([model_input(rng.integers(0, 255, (220, 180 + 20 * i), dtype=np.uint8), entry.input_size)
                      for i in range(3)])
        _, whole = infer.predict_with_embedding(entry, x, device="cpu", batch_size=2)
        a, b = entry.embedding.turned_columns()
        oa, ob = entry.embedding.columns("orientation")
        assert a <= oa < ob <= b
        np.testing.assert_array_equal(infer.embed_turned(entry, x, device="cpu", batch_size=2), whole[:, a:b])


def test_default_model_tasks_use_the_vocabularies():
    entry = default_model()
    assert set(entry.tasks) == {"body_part", "projection", "orientation"}
    for name, spec in entry.tasks.items():
        assert spec.classes == TASKS[name]
        assert set(spec.thresholds) == set(spec.classes)
        assert all(0.5 <= t <= 1.0 for t in spec.thresholds.values())
    raw = _raw_registry()["models"][0]
    assert raw["preprocessing"]["letterbox"] is True
    assert raw["preprocessing"]["mean"] == 0.5 and raw["preprocessing"]["std"] == 0.5
    assert (REGISTRY_PATH.parent / raw["card"]).exists()
    assert (REGISTRY_PATH.parent / raw["training"]["split_file"]).exists()


def test_onnx_graph_outputs_match_class_lists():
    onnx = pytest.importorskip("onnx")
    for entry in load_registry():
        model = onnx.load(str(entry.path))
        onnx.checker.check_model(model)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        (inp,) = [i for i in model.graph.input if i.name == entry.input_name]
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param  # dynamic batch axis
        assert [d.dim_value for d in dims[1:]] == [1, entry.input_size, entry.input_size]
        outs = {o.name: o for o in model.graph.output}
        for spec in entry.tasks.values():
            d = outs[spec.output].type.tensor_type.shape.dim
            assert d[-1].dim_value == len(spec.classes)


def test_preprocessing_is_deterministic_from_bytes():
    rng = np.random.default_rng(0)
    img = (rng.random((300, 220)) * 4095).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()

    def tensor(b):
        arr = np.asarray(Image.open(io.BytesIO(b)).convert("L"))
        return model_input(arr, 192)

    a, b = tensor(data), tensor(bytes(data))
    assert a.dtype == np.float32 and a.shape == (1, 192, 192)
    assert np.array_equal(a, b)
    assert np.array_equal(model_input(img, 160), model_input(img.copy(), 160))
    assert -1.0 <= a.min() and a.max() <= 1.0


def test_onnx_model_runs_on_synthetic_batch():
    pytest.importorskip("onnxruntime")
    from radlint.tasks.infer import predict

    entry = default_model()
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (200 + 10 * i, 180), dtype=np.uint8) for i in range(3)]
    x = np.stack([model_input(rotate_to_orientation(im, "rot90cw"), entry.input_size)
                  for im in imgs])
    out = predict(entry, x, device="cpu", batch_size=2)
    for name, spec in entry.tasks.items():
        p = out[name]
        assert p.shape == (3, len(spec.classes))
        assert np.all(p >= 0)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    # batching does not change the result
    single = predict(entry, x[:1], device="cpu", batch_size=1)
    np.testing.assert_allclose(single["body_part"], out["body_part"][:1], atol=1e-5)


def test_cuda_request_preloads_pip_cuda_libraries_once_and_falls_back_to_cpu(monkeypatch):
    """Where onnxruntime lists a CUDA provider, CUDA/cuDNN from pip's nvidia-* wheels are loaded
    before the first CUDA session (else it silently runs on CPU). This host has no CUDA provider:
    onnxruntime's provider list and preload are replaced, the session and its outputs are real."""
    ort = pytest.importorskip("onnxruntime")
    import warnings

    from radlint.tasks import infer

    calls = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: calls.append(1), raising=False)
    infer._preload_cuda_libraries.cache_clear()
    monkeypatch.setattr(infer, "_SESSIONS", {})
    entry = default_model()
    x = np.stack([model_input(np.full((64, 48), 100 + i, np.uint8), entry.input_size) for i in range(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime warns that the CUDA provider it was asked for is absent
        auto = infer.predict(entry, x, device="auto", batch_size=2)
        infer.predict(entry, x, device="cuda", batch_size=2)
    assert calls == [1]
    monkeypatch.setattr(infer, "_SESSIONS", {})
    cpu = infer.predict(entry, x, device="cpu", batch_size=2)
    assert calls == [1]
    np.testing.assert_allclose(auto["body_part"], cpu["body_part"], atol=1e-6)
    infer._preload_cuda_libraries.cache_clear()  # later sessions in this process preload for real
