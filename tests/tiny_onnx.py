"""Tiny random-weight ONNX models with the real insightface IO signatures (test helper, not a test).

- SCRFD-like detector: input 1x3xHxW; nine outputs in SCRFD's order: scores for strides 8, 16, 32
  (rows x 1), then box distances (rows x 4), then keypoint offsets (rows x 10), where rows =
  (H/stride) * (W/stride) * 2 anchors. insightface's router takes any model with >= 5 outputs for
  SCRFD; nine outputs mean 3 strides, 2 anchors, with keypoints.
- ArcFace-like recogniser: input Nx3x112x112 -> N x 512 (N symbolic, or fixed 1).

Weights are random (seeded): outputs have the right shapes and nothing else. `score_bias` shifts
the detector's logits so a test can ask for "every anchor fires" or "nothing fires".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
STRIDES = (8, 16, 32)
ANCHORS = 2
WIDTH = 8  # channels of the toy backbone


class _Graph:
    """Collects nodes and random initialisers for one graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def conv(self, name: str, x: str, cin: int, cout: int, *, stride: int = 1, bias: float = 0.0) -> str:
        kernel = 3 if stride > 1 else 1
        w = self.const(f"{name}.w", (self.rng.standard_normal((cout, cin, kernel, kernel)) * 0.3).astype(np.float32))
        b = self.const(f"{name}.b", np.full(cout, bias, dtype=np.float32))
        pads = [kernel // 2] * 4
        self.nodes.append(helper.make_node("Conv", [x, w, b], [name], name=name, strides=[stride] * 2, pads=pads))
        return name

    def op(self, kind: str, name: str, inputs: list[str], **attrs) -> str:
        self.nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name


def _head(g: _Graph, feature: str, stride: int, channels: int, kind: str, score_bias: float) -> str:
    """One SCRFD output: a 1x1 conv to anchors*channels, laid out as (H*W*anchors, channels) rows."""
    name = f"{kind}_{stride}"
    x = g.conv(f"{name}.conv", feature, WIDTH, ANCHORS * channels, bias=score_bias if kind == "score" else 0.0)
    if kind == "score":
        x = g.op("Sigmoid", f"{name}.sigmoid", [x])
    elif kind == "bbox":
        x = g.op("Softplus", f"{name}.softplus", [x])  # distances in stride units, positive like trained ones
    x = g.op("Transpose", f"{name}.nhwc", [x], perm=[0, 2, 3, 1])
    return g.op("Reshape", name, [x, g.const(f"{name}.shape", np.array([-1, channels], dtype=np.int64))])


def scrfd_model(score_bias: float = 0.0, seed: int = 0) -> onnx.ModelProto:
    g = _Graph(seed)
    x = g.op("Relu", "stem.relu", [g.conv("stem", "input.1", 3, WIDTH, stride=2)])
    x = g.op("Relu", "stage2.relu", [g.conv("stage2", x, WIDTH, WIDTH, stride=2)])
    features = {}
    for stride in STRIDES:
        x = g.op("Relu", f"stage{stride}.relu", [g.conv(f"stage{stride}", x, WIDTH, WIDTH, stride=2)])
        features[stride] = x
    outputs = []
    for kind, channels in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in STRIDES:
            name = _head(g, features[stride], stride, channels, kind, score_bias)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"rows_{stride}", channels]))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])
    graph = helper.make_graph(g.nodes, "tiny_scrfd", [image], outputs, g.weights)
    return _finish(graph)


def arcface_model(embedding_dim: int = 512, batch: int | str = "batch", seed: int = 1) -> onnx.ModelProto:
    g = _Graph(seed)
    x = g.op("Relu", "conv1.relu", [g.conv("conv1", "input.1", 3, WIDTH, stride=2)])
    x = g.op("Relu", "conv2.relu", [g.conv("conv2", x, WIDTH, 2 * WIDTH, stride=2)])
    x = g.op("Flatten", "flatten", [g.op("GlobalAveragePool", "pool", [x])])
    w = g.const("fc.w", g.rng.standard_normal((2 * WIDTH, embedding_dim)).astype(np.float32))
    b = g.const("fc.b", g.rng.standard_normal(embedding_dim).astype(np.float32) * 0.1)
    g.op("Gemm", "embedding", [x, w, b])
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, embedding_dim])
    return _finish(helper.make_graph(g.nodes, "tiny_arcface", [image], [output], g.weights))


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by any onnxruntime of the last years
    onnx.checker.check_model(model, full_check=True)
    return model


def write_pack(
    folder: Path, *, score_bias: float = 0.0, detector: bool = True, recognizer_batch: int | str = "batch"
) -> Path:
    """A model-pack directory like buffalo_l's: det_*.onnx and w600k_*.onnx (names only for humans)."""
    folder.mkdir(parents=True, exist_ok=True)
    if detector:
        onnx.save(scrfd_model(score_bias), folder / "det_tiny.onnx")
    onnx.save(arcface_model(batch=recognizer_batch), folder / "w600k_tiny.onnx")
    return folder
