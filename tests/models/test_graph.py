"""Graph rewrites keep what the exported graph computes (models.training.graph)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models.training.graph import explicit_softmax


def _softmax_graph(axis: int, opset: int = 20) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "h", "w"])
    node = helper.make_node("Softmax", ["x"], ["y"], axis=axis)
    graph = helper.make_graph([node], "softmax", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_explicit_softmax_computes_what_the_softmax_node_did_even_for_huge_logits():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 5.0, (1, 4, 17, 23)).astype(np.float32)
    x[0, :, 0, 0] = [1000.0, 999.0, -1000.0, 0.0]  # exp would overflow without the max subtracted
    before = _softmax_graph(1)
    expected = _run(before, x)
    after = _softmax_graph(1)
    assert explicit_softmax(after) == 1
    onnx.checker.check_model(after)
    assert [n.op_type for n in after.graph.node] == ["ReduceMax", "Sub", "Exp", "ReduceSum", "Div"]
    got = _run(after, x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def test_a_softmax_over_another_axis_is_left_alone_and_an_old_opset_is_refused():
    other = _softmax_graph(-1)
    assert explicit_softmax(other) == 0 and [n.op_type for n in other.graph.node] == ["Softmax"]
    with pytest.raises(ValueError, match="opset 17 is older than 18"):
        explicit_softmax(_softmax_graph(1, opset=17))


def test_an_export_has_no_softmax_node_left(tiny_model):
    model = onnx.load(str(tiny_model.onnx))
    assert not [n for n in model.graph.node if n.op_type == "Softmax"]
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in model.graph.node for p in n.metadata_props)
