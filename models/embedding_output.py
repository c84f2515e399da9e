"""Expose a registered model's pooled features as the ONNX output ``embedding``, weights unchanged.

    python -m radlint.models.embedding_output --name radlint-multihead-v3

The lake-adaptation stage fits per-lake probes on these vectors. For a network exported before
the output existed, the tensor that feeds all the heads' linear layers (the pooled, flattened
features) is routed to a new graph output through an Identity node; no weight or other node
changes, so the three softmax outputs stay bit-identical. The model file is rewritten in place
and its registry entry gets the new sha256 and an ``embedding`` block (output name, size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from radlint.tasks.infer import REGISTRY_PATH, sha256_file

OUTPUT = "embedding"


def pooled_tensor(graph) -> str:
    """The one tensor that every head's Gemm/MatMul reads as its data input."""
    producers = {o: n for n in graph.node for o in n.output}
    heads = []
    for out in graph.output:
        node = producers.get(out.name)
        while node is not None and node.op_type not in ("Gemm", "MatMul"):
            node = producers.get(node.input[0])
        if node is not None:
            heads.append(node.input[0])
    if not heads or len(set(heads)) != 1:
        raise ValueError(f"cannot find one pooled tensor shared by the heads: {sorted(set(heads))}")
    return heads[0]


def add_embedding_output(path: Path) -> int:
    """Add the ``embedding`` output to the ONNX file at ``path``; returns its width D."""
    import onnx
    from onnx import TensorProto, helper, shape_inference

    model = onnx.load(path)
    graph = model.graph
    if any(o.name == OUTPUT for o in graph.output):
        raise ValueError(f"{path.name} already has an output named {OUTPUT!r}")
    source = pooled_tensor(graph)
    width = None
    for init in graph.initializer:  # the first head's weight [classes, D] (Gemm transB=1) gives D
        if any(n.op_type == "Gemm" and n.input[0] == source and n.input[1] == init.name for n in graph.node):
            width = int(init.dims[-1])
            break
    if width is None:
        inferred = shape_inference.infer_shapes(model)
        for vi in inferred.graph.value_info:
            if vi.name == source:
                width = int(vi.type.tensor_type.shape.dim[-1].dim_value)
    if not width:
        raise ValueError(f"cannot tell the width of {source}")
    graph.node.append(helper.make_node("Identity", [source], [OUTPUT], name="embedding_output"))
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", width]))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return width


def register(registry: Path, name: str, width: int) -> None:
    """Record the new sha256 and the embedding block in ``name``'s registry entry."""
    text = registry.read_text()
    data = yaml.safe_load(text)
    entry = next((m for m in data["models"] if m["name"] == name), None)
    if entry is None:
        raise SystemExit(f"no model {name!r} in {registry}")
    model_file = registry.parent / entry["file"]
    old = entry["sha256"]
    new = sha256_file(model_file)
    # Edit the text, not a yaml dump, so the registry keeps its comments and layout.
    head, sep, rest = text.partition(f"sha256: {old}\n")
    if not sep:
        raise SystemExit(f"sha256 {old} not found in {registry}")
    indent = head[head.rfind("\n") + 1 :]
    block = f"sha256: {new}\n{indent}embedding:\n{indent}  output: {OUTPUT}\n{indent}  size: {width}\n"
    registry.write_text(head + block + rest)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="registry entry whose ONNX file gains the output")
    ap.add_argument("--registry", type=Path, default=REGISTRY_PATH)
    args = ap.parse_args(argv)
    data = yaml.safe_load(args.registry.read_text())
    entry = next((m for m in data["models"] if m["name"] == args.name), None)
    if entry is None:
        raise SystemExit(f"no model {args.name!r} in {args.registry}")
    width = add_embedding_output(args.registry.parent / entry["file"])
    register(args.registry, args.name, width)
    print(f"{args.name}: output {OUTPUT!r} [N, {width}] added; registry updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
