"""models/lake_embedder.graft on small ONNX graphs (no torch): the model's class outputs stay
bit-identical, the embedding output becomes the grafted network's, and a model whose own pooled
features were named ``embedding`` (and feed its heads) keeps them under another name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from radlint.models import lake_embedder  # noqa: E402

SIZE = 8


def model_with_own_embedding():
    """GAP -> Flatten named 'embedding' -> MatMul head: the tensor feeds the head and is an output."""
    w = numpy_helper.from_array(np.array([[1.0, -1.0]], np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["embedding"], axis=1),
             helper.make_node("MatMul", ["embedding", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["body_part"], axis=1)]
    graph = helper.make_graph(
        nodes, "model", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("body_part", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1])], initializer=[w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def embedder():
    """Its own input name and internal names that collide with the model's ('gap', 'w')."""
    w = numpy_helper.from_array(np.arange(3, dtype=np.float32)[None, :] + 1, "w")
    nodes = [helper.make_node("GlobalMaxPool", ["x"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["out"])]
    graph = helper.make_graph(
        nodes, "embedder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": x})))


def test_graft_keeps_class_outputs_and_replaces_the_embedding():
    x = np.random.default_rng(0).uniform(-1, 1, (5, 1, SIZE, SIZE)).astype(np.float32)
    before = run(model_with_own_embedding(), x)
    grafted, own_width, width = lake_embedder.graft(model_with_own_embedding(), embedder(), "image")
    onnx.checker.check_model(grafted)
    after = run(grafted, x)
    assert (own_width, width) == (1, 3)
    assert sorted(after) == ["body_part", "embedding"]
    assert np.array_equal(after["body_part"], before["body_part"])
    assert np.array_equal(after["embedding"][:, :1], before["embedding"])
    expected = x.reshape(5, -1).max(axis=1, keepdims=True) * np.array([[1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_allclose(after["embedding"][:, 1:], expected, rtol=1e-6)
    names = [n.name for n in grafted.graph.initializer]
    assert len(names) == len(set(names)) and "lake_embedder/w" in names
    assert [i.name for i in grafted.graph.input] == ["image"]


def test_turned_model_is_the_embedder_alone_with_identical_features():
    x = np.random.default_rng(3).uniform(-1, 1, (4, 1, SIZE, SIZE)).astype(np.float32)
    grafted, own_width, _ = lake_embedder.graft(model_with_own_embedding(), embedder(), "image")
    assert lake_embedder.is_grafted(grafted) and not lake_embedder.is_grafted(model_with_own_embedding())
    alone = lake_embedder.turned_model(grafted, "image")
    onnx.checker.check_model(alone)
    assert [o.name for o in alone.graph.output] == ["embedding"]
    assert all(n.name.startswith(lake_embedder.PREFIX) for n in alone.graph.node)  # no classifier node
    assert np.array_equal(run(alone, x)["embedding"], run(grafted, x)["embedding"][:, own_width:])


def test_ungraft_restores_the_model_and_a_new_graft_replaces_the_old():
    x = np.random.default_rng(4).uniform(-1, 1, (3, 1, SIZE, SIZE)).astype(np.float32)
    original = run(model_with_own_embedding(), x)
    grafted, own_width, _ = lake_embedder.graft(model_with_own_embedding(), embedder(), "image")
    base = lake_embedder.ungraft(grafted)
    onnx.checker.check_model(base)
    assert not lake_embedder.is_grafted(base)
    back = run(base, x)
    assert sorted(back) == ["body_part", "embedding"]
    assert np.array_equal(back["body_part"], original["body_part"])
    assert np.array_equal(back["embedding"], original["embedding"])
    again, own_again, width = lake_embedder.graft(base, embedder(), "image")
    assert (own_again, width) == (own_width, 3)
    assert np.array_equal(run(again, x)["embedding"], run(grafted, x)["embedding"])
    assert lake_embedder.ungraft(model_with_own_embedding()) is not None  # not grafted: returned as is


def test_quantize_stores_int8_weights_and_keeps_the_features_close(tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("sympy", reason="quantization's shape inference needs sympy (the train extra, via torch)")
    rng = np.random.default_rng(5)
    calibration = rng.uniform(-1, 1, (32, 1, SIZE, SIZE)).astype(np.float32)
    renamed = embedder()  # the audit feeds the model's input name
    renamed.graph.input[0].name = "image"
    renamed.graph.node[0].input[0] = "image"
    onnx.save(renamed, str(tmp_path / "embedder.onnx"))
    path = lake_embedder.quantize(tmp_path / "embedder.onnx", tmp_path, "image", calibration)
    q = onnx.load(str(path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in q.graph.node}
    int8 = [numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == TensorProto.INT8]
    # 7-bit weights: uint8 x int8 pairs summed in 16 bits (x86 without VNNI) cannot saturate
    assert int8 and all(np.abs(a).max() <= 64 for a in int8)
    x = rng.uniform(-1, 1, (4, 1, SIZE, SIZE)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = ort.InferenceSession(renamed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(sess.run(None, {"image": x})[0], want, atol=0.05 * np.abs(want).max())


def test_quantize_keeps_the_first_and_last_convolutions_float(tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("sympy", reason="quantization's shape inference needs sympy (the train extra, via torch)")
    rng = np.random.default_rng(6)
    nodes, inits, prev = [], [], "image"
    for k in range(6):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (4, 1 if k == 0 else 4, 1, 1)).astype(np.float32), f"w{k}"))
        nodes += [helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"], name=f"conv{k}"),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"])]
        prev = f"r{k}"
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]), helper.make_node("Flatten", ["gap"], ["out"])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "convs.onnx"))
    calibration = rng.uniform(-1, 1, (16, 1, SIZE, SIZE)).astype(np.float32)
    q = onnx.load(str(lake_embedder.quantize(tmp_path / "convs.onnx", tmp_path, "image", calibration)))
    dequantized = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    quantized = sorted(n.name for n in q.graph.node if n.op_type == "Conv" and n.input[1] in dequantized)
    first, last = lake_embedder.QUANTIZE_KEEP_FLOAT
    assert quantized == [f"conv{k}" for k in range(first, 6 - last)]


def test_graft_drops_an_identity_that_only_exposed_the_old_embedding():
    m = model_with_own_embedding()
    for node in m.graph.node:  # the older layout: pooled features 'feat', Identity -> 'embedding'
        node.input[:] = ["feat" if n == "embedding" else n for n in node.input]
        node.output[:] = ["feat" if n == "embedding" else n for n in node.output]
    m.graph.node.append(helper.make_node("Identity", ["feat"], ["embedding"], name="embedding_output"))
    grafted, own_width, _ = lake_embedder.graft(m, embedder(), "image")
    assert own_width == 1
    assert not [n for n in grafted.graph.node if n.op_type == "Identity"]
    x = np.ones((2, 1, SIZE, SIZE), np.float32)
    np.testing.assert_allclose(run(grafted, x)["embedding"], [[1, 1, 2, 3], [1, 1, 2, 3]])


def test_register_rewrites_the_entry_and_the_registry_reads_it(tmp_path):
    from radlint.tasks.infer import load_registry, sha256_file

    src = (Path(__file__).resolve().parent.parent / "models" / "registry.yaml").read_text()
    (tmp_path / "registry.yaml").write_text(src)
    entry = yaml.safe_load(src)["models"][0]
    (tmp_path / entry["file"]).write_bytes(b"stand-in model bytes")
    own = entry["embedding"]["probe_features"]["projection"][1] if "probe_features" in entry["embedding"] \
        else entry["embedding"]["size"]
    (tmp_path / "model.turned.onnx").write_bytes(b"stand-in turned bytes")
    lake_embedder.register(tmp_path / "registry.yaml", entry["name"], own, 1280, "model.turned.onnx")
    text = (tmp_path / "registry.yaml").read_text()
    assert text.count("probe_features:") == src.count("probe_features:") + ("probe_features" not in entry["embedding"])
    first = load_registry(tmp_path / "registry.yaml")[0]
    assert first.sha256 == sha256_file(tmp_path / entry["file"])
    assert first.embedding.size == own + 1280
    assert first.embedding.probe_features == {"body_part": (own, own + 1280), "projection": (0, own),
                                              "orientation": (own, own + 1280)}
    assert first.embedding.turned.path == tmp_path / "model.turned.onnx"
    assert first.embedding.turned.sha256 == sha256_file(tmp_path / "model.turned.onnx")
    assert first.embedding.turned_columns() == (own, own + 1280)
    # an old turned block replaced, not kept beside the new one; added where the entry had none
    assert ([ln.strip() for ln in text.splitlines()].count("turned:")
            == [ln.strip() for ln in src.splitlines()].count("turned:") + ("turned" not in entry["embedding"]))
    rest = [line for line in text.splitlines() if "sha256" not in line]
    assert "# radlint model registry" in text and len(rest) >= len(src.splitlines()) - src.count("sha256:")


def test_a_regraft_without_a_turned_file_keeps_the_chosen_probe_columns(tmp_path):
    """v4's probes read columns chosen on data (orientation its own, [0, 1280]); regrafting it with
    --no-turned must keep them and leave the model to run the turned views."""
    from radlint.tasks.infer import load_registry, sha256_file

    src = (Path(__file__).resolve().parent.parent / "models" / "registry.yaml").read_text()
    (tmp_path / "registry.yaml").write_text(src)
    entry = yaml.safe_load(src)["models"][0]
    chosen = entry["embedding"]["probe_features"]
    (tmp_path / entry["file"]).write_bytes(b"stand-in regrafted bytes")
    own = chosen["projection"][1]
    lake_embedder.register(tmp_path / "registry.yaml", entry["name"], own, entry["embedding"]["size"] - own)
    first = load_registry(tmp_path / "registry.yaml")[0]
    assert first.sha256 == sha256_file(tmp_path / entry["file"])
    assert first.embedding.probe_features == {t: tuple(v) for t, v in chosen.items()}
    assert first.embedding.turned is None


def test_calibration_inputs_come_from_the_training_split_in_every_turn(tmp_path):
    from PIL import Image

    from radlint.tasks.preprocess import model_input, rotate_to_orientation

    rows = []
    for i in range(12):
        pid, name = f"p{i}", f"images/img{i:02d}.png"
        (tmp_path / "images").mkdir(exist_ok=True)
        pixels = np.zeros((40, 30), np.uint8)
        pixels[: 5 + i, :10] = 200  # a mark in the top left, so each turn shows
        Image.fromarray(pixels).save(tmp_path / name)
        rows.append({"image_id": f"img{i:02d}", "file": name, "patient_id": pid})
    (tmp_path / "labels.csv").write_text("image_id,file,patient_id\n" + "".join(
        f"{r['image_id']},{r['file']},{r['patient_id']}\n" for r in rows))
    split = tmp_path / "split.csv"  # every third patient is not in the training split
    split.write_text("patient_id,split\n" + "".join(f"p{i},{'val' if i % 3 == 2 else 'train'}\n" for i in range(12)))
    x = lake_embedder.calibration_inputs(tmp_path, split, 16, n=4)
    assert x.shape == (4, 1, 16, 16) and x.dtype == np.float32
    train = [r for r in rows if int(r["patient_id"][1:]) % 3 != 2]
    picked = train[:: len(train) // 4][:4]
    turns = ("upright", "rot90cw", "rot180", "rot90ccw")
    for k, r in enumerate(picked):
        pixels = np.asarray(Image.open(tmp_path / r["file"]).convert("L"))
        np.testing.assert_array_equal(x[k], model_input(rotate_to_orientation(pixels, turns[k]), 16))
    split.write_text("patient_id,split\n" + "".join(f"p{i},val\n" for i in range(12)))
    with pytest.raises(SystemExit, match="no training-split images"):
        lake_embedder.calibration_inputs(tmp_path, split, 16)


def test_register_rewrites_an_entry_that_export_wrote_in_flow_style(tmp_path):
    from radlint.tasks.infer import load_registry, sha256_file

    src = (Path(__file__).resolve().parent.parent / "models" / "registry.yaml").read_text()
    entry = yaml.safe_load(src)["models"][0]
    entry["embedding"] = {"output": "embedding", "size": 224}
    entry = {k: entry[k] for k in ("name", "file", "sha256", "input", "preprocessing", "tasks", "embedding")}
    (tmp_path / "registry.yaml").write_text(
        "# header kept\n" + yaml.safe_dump({"schema": 1, "models": [entry]}, sort_keys=False,
                                           default_flow_style=None, width=100))
    (tmp_path / entry["file"]).write_bytes(b"stand-in model bytes")
    (tmp_path / "model.turned.onnx").write_bytes(b"stand-in turned bytes")
    lake_embedder.register(tmp_path / "registry.yaml", entry["name"], 224, 1280, "model.turned.onnx")
    text = (tmp_path / "registry.yaml").read_text()
    assert text.startswith("# header kept\n")
    first = load_registry(tmp_path / "registry.yaml")[0]
    assert first.sha256 == sha256_file(tmp_path / entry["file"])
    assert first.embedding.size == 224 + 1280
    assert first.embedding.probe_features["projection"] == (0, 224)
    assert first.embedding.turned.sha256 == sha256_file(tmp_path / "model.turned.onnx")
    assert list(first.tasks["body_part"].classes) == entry["tasks"]["body_part"]["classes"]


def test_remove_cuts_the_graft_out_of_the_file_and_every_probe_reads_the_own_columns(tmp_path):
    from radlint.tasks.infer import load_registry, sha256_file

    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, SIZE, SIZE)).astype(np.float32)
    grafted, own_width, _ = lake_embedder.graft(model_with_own_embedding(), embedder(), "image")
    path = tmp_path / "model.onnx"
    onnx.save(grafted, str(path))
    assert lake_embedder.remove(path, "image", SIZE) == own_width
    cut = onnx.load(str(path))
    assert not lake_embedder.is_grafted(cut)
    got, want = run(cut, x), run(grafted, x)
    assert np.array_equal(got["body_part"], want["body_part"])
    assert np.array_equal(got["embedding"], want["embedding"][:, :own_width])
    with pytest.raises(SystemExit, match="has no grafted embedder"):
        lake_embedder.remove(path, "image", SIZE)

    src = (Path(__file__).resolve().parent.parent / "models" / "registry.yaml").read_text()
    entry = yaml.safe_load(src)["models"][0]
    (tmp_path / "registry.yaml").write_text(src.replace(f"file: {entry['file']}", "file: model.onnx", 1))
    lake_embedder.register(tmp_path / "registry.yaml", entry["name"], own_width, 0)
    first = load_registry(tmp_path / "registry.yaml")[0]
    assert first.sha256 == sha256_file(path) and first.embedding.size == own_width
    assert set(first.embedding.probe_features.values()) == {(0, own_width)}
    assert first.embedding.turned is None


def test_the_shipped_model_runs_no_second_network():
    """v4's probes read its own features, which served them as well as the grafted ImageNet
    network's did on the planted lakes and cost no second network per image and per turned view
    (docs/notes-2026-12-lake-adaptation.md, fourteenth round); a graft put back by mistake would
    cost about two thirds of a model pass per view on an AVX2-only CPU and feed no probe."""
    import onnx

    from radlint.tasks.infer import load_registry

    entry = load_registry()[0]
    model = onnx.load(str(entry.path))
    assert not lake_embedder.is_grafted(model)
    x = np.zeros((1, 1, entry.input_size, entry.input_size), np.float32)
    got = ort.InferenceSession(str(entry.path), providers=["CPUExecutionProvider"]).run(
        [entry.embedding.output], {entry.input_name: x})[0]
    assert got.shape == (1, entry.embedding.size)
    assert all(b <= entry.embedding.size for _, b in entry.embedding.probe_features.values())
