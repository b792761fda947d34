"""Structured pruning: hidden units really go (smaller matrices), the ones that do nothing go
first, and the pruned model answers like the source where the removed units were idle."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelplane.convert.prune import hidden_layers, prune
from modelplane.testing import mlp_onnx


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: x})[0]
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def _with_idle_units() -> tuple[onnx.ModelProto, list[list[int]]]:
    """An 8-16-16-3 MLP whose hidden layers each have 8 units a ReLU always zeroes (their
    weights 0, their bias negative), at scattered places; and those places."""
    rng = np.random.default_rng(1)
    sizes = (8, 16, 16, 3)
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers.append((rng.standard_normal((fan_in, fan_out)).astype(np.float32),
                       rng.standard_normal(fan_out).astype(np.float32) * 0.1))  # fmt: skip
    dead = []
    for weights, bias in layers[:2]:
        idle = sorted(rng.choice(16, size=8, replace=False).tolist())
        weights[:, idle] = 0.0
        bias[idle] = -1.0
        dead.append(idle)
    return onnx.load_from_string(mlp_onnx(sizes, layers=layers)), dead


def test_units_that_never_fire_go_first_and_the_answers_stay() -> None:
    model, dead = _with_idle_units()
    x = np.random.default_rng(2).standard_normal((256, 8)).astype(np.float32)
    pruned, info = prune(model, 0.5, {"x": x})
    assert info == {"layers": 2, "units_before": 32, "units_after": 16}
    shapes = _shapes(pruned)
    assert shapes["w0"] == (8, 8)  # the matrices are smaller, not sparse
    assert shapes["b0"] == (8,)
    assert shapes["w1"] == (8, 8)
    assert shapes["w2"] == (8, 3)
    source = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    live = np.delete(np.arange(16), dead[0])  # the first layer kept exactly its live units
    np.testing.assert_array_equal(kept["w0"], source["w0"][:, live])
    np.testing.assert_array_equal(kept["b0"], source["b0"][live])
    np.testing.assert_allclose(_run(pruned, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_a_quarter_pruned_keeps_the_answers_where_idle_units_went() -> None:
    model, _ = _with_idle_units()
    x = np.random.default_rng(3).standard_normal((128, 8)).astype(np.float32)
    assert [layer.units for layer in hidden_layers(model)] == [16, 16]
    pruned, _ = prune(model, 0.25, {"x": x})
    assert _shapes(pruned)["w0"] == (8, 12)
    np.testing.assert_allclose(_run(pruned, x), _run(model, x), rtol=1e-5, atol=1e-5)


def _gemm_model() -> onnx.ModelProto:
    """A torch-style export: Gemm with transposed weights [out, in] and its bias inside."""
    rng = np.random.default_rng(4)
    w1 = rng.standard_normal((32, 6)).astype(np.float32)
    b1 = rng.standard_normal(32).astype(np.float32)
    w2 = rng.standard_normal((2, 32)).astype(np.float32)
    b2 = rng.standard_normal(2).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Tanh", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        initializer=[numpy_helper.from_array(a, n)
                     for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_gemm_with_transposed_weights_is_pruned_on_the_right_axes() -> None:
    model = _gemm_model()
    x = np.random.default_rng(5).standard_normal((64, 6)).astype(np.float32)
    pruned, info = prune(model, 0.5, {"x": x})
    assert info["units_after"] == 16
    shapes = _shapes(pruned)
    assert shapes["w1"] == (16, 6)
    assert shapes["b1"] == (16,)
    assert shapes["w2"] == (2, 16)
    assert _run(pruned, x).shape == (64, 2)
    # without inputs the weights' norms rank the units: still a valid, smaller model
    by_weights, _ = prune(model, 0.5)
    assert _run(by_weights, x).shape == (64, 2)


def test_a_model_without_hidden_layers_says_so() -> None:
    single = onnx.load_from_string(mlp_onnx((4, 3)))
    assert hidden_layers(single) == []
    with pytest.raises(ValueError, match="no hidden layer"):
        prune(single, 0.5)


def test_no_mean_is_folded_into_a_scaled_gemm_and_subgraphs_stop_pruning() -> None:
    model = _gemm_model()
    assert hidden_layers(model)[0].next_bias == "b2"
    scaled = _gemm_model()
    scaled.graph.node[2].attribute.append(helper.make_attribute("alpha", 0.5))
    [layer] = hidden_layers(scaled)
    assert layer.next_bias is None  # alpha * A B + C: a mean added to C would be off by 2x
    x = np.random.default_rng(6).standard_normal((32, 6)).astype(np.float32)
    assert _run(prune(scaled, 0.5, {"x": x})[0], x).shape == (32, 2)
    looped = _gemm_model()
    body = helper.make_graph([], "body", [], [])
    looped.graph.node.append(helper.make_node("If", ["cond"], [], then_branch=body,
                                              else_branch=body))  # fmt: skip
    assert hidden_layers(looped) == []  # a body may read any tensor: nothing is pruned
