"""A tiny ONNX model with the IO of insightface's `genderage.onnx` (test helper, not a test).

Input 1x3x96x96, output 1x3: two gender logits (female, male) and age / 100, which is how
insightface's router and its Attribute model recognise and read it. The weights are zero and the
bias is the answer, so a test knows what the model says about any face: plumbing, not quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def genderage_model(male: bool, age: float) -> onnx.ModelProto:
    bias = np.array([0.0, 4.0, age / 100] if male else [4.0, 0.0, age / 100], dtype=np.float32)
    weights = [numpy_helper.from_array(np.zeros((3, 3), np.float32), "fc.w"), numpy_helper.from_array(bias, "fc.b")]
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["fc1"], name="fc1"),
    ]
    image = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 96, 96])
    output = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph(nodes, "tiny_genderage", [image], [output], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_genderage(folder: Path, male: bool = True, age: float = 30.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(genderage_model(male, age), folder / "genderage.onnx")
    return folder
