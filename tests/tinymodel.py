"""A deterministic stand-in classifier for tests and benchmarks (needs the `onnx` package, a dev extra).

Global mean brightness -> linear -> softmax for each of the three heads, with the registry's input
and output names: fast, exact, and brighter images favour later classes, so tests can steer
predictions. Never registered in models/registry.yaml.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radlint.tasks.vocabulary import TASKS


def build_tiny_model(path: Path, size: int = 32) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["feat"], axis=1),
    ]
    inits, outputs = [], []
    for task, classes in TASKS.items():
        c = len(classes)
        w = np.linspace(-4, 4, c, dtype=np.float32)[None, :]
        b = np.zeros(c, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"{task}_w"), numpy_helper.from_array(b, f"{task}_b")]
        nodes += [
            helper.make_node("MatMul", ["feat", f"{task}_w"], [f"{task}_mm"]),
            helper.make_node("Add", [f"{task}_mm", f"{task}_b"], [f"{task}_logits"]),
            helper.make_node("Softmax", [f"{task}_logits"], [task], axis=1),
        ]
        outputs.append(helper.make_tensor_value_info(task, TensorProto.FLOAT, ["N", c]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
