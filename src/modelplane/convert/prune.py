"""Structured pruning of an ONNX model's dense hidden units: the least important units of each
hidden layer go, with their column of the weights that make them, their bias and their row of
the weights that read them, so the matrices are really smaller (and faster on a CPU), not just
sparse.

A hidden layer here is a MatMul or Gemm with constant weights whose output reaches, through a
bias Add and element-wise activations and nothing else, the input of another MatMul or Gemm
with constant weights. A unit's importance is how much it contributes to the next layer: the
mean absolute value of its activation on the given inputs (or, without inputs, the norm of its
incoming weights) times the norm of its outgoing weights. Convolution channels are not pruned.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from modelplane.convert.base import Arrays

DENSE = {"MatMul", "Gemm"}
SUBGRAPHS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
# element-wise on a unit's own value: a unit's column can go through them unchanged
ELEMENTWISE = {
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Selu",
    "Softplus",
    "Softsign",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "Dropout",
    "Gelu",
}


@dataclass(frozen=True, slots=True)
class Layer:
    """A hidden layer's units: where they are made and where they are read."""

    weight_in: str  # initializer whose ``in_axis`` indexes the units
    in_axis: int
    biases: tuple[str, ...]  # initializers of shape [units] (or [1, units]) added to them
    activation: str  # the tensor the next layer reads
    weight_out: str  # initializer whose ``out_axis`` indexes the units
    out_axis: int
    units: int
    next_bias: str | None = None  # the reading layer's bias: where removed units' mean goes


def _weight(
    node: onnx.NodeProto, initializers: dict[str, np.ndarray], reads: bool
) -> tuple[str, int] | None:
    """The node's constant 2-D weight and the axis of its outputs (``reads`` False) or of its
    inputs (``reads`` True); None where it has none or transposes its input."""
    if len(node.input) < 2 or node.input[1] not in initializers:
        return None
    if initializers[node.input[1]].ndim != 2:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and attrs.get("transA", 0):
        return None
    transposed = node.op_type == "Gemm" and bool(attrs.get("transB", 0))
    # MatMul and Gemm: [in, out]; Gemm with transB: [out, in]
    out_axis = 0 if transposed else 1
    return node.input[1], (1 - out_axis if reads else out_axis)


def _bias(
    node: onnx.NodeProto,
    width: int,
    initializers: dict[str, np.ndarray],
    consumers: dict[str, list[onnx.NodeProto]],
    uses: Counter[str],
) -> str | None:
    """The constant bias of ``width`` values a dense node adds (its own, or the one Add that
    follows it), used by nothing else; None if it has none."""
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None  # alpha * A B + beta * C: a mean folded into C would be scaled
        name = node.input[2] if len(node.input) > 2 else ""
    else:
        after = consumers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add":
            return None
        name = next((i for i in after[0].input if i != node.output[0]), "")
    bias = initializers.get(name)
    if bias is None or uses[name] != 1 or bias.size != width:
        return None
    return name


def hidden_layers(model: onnx.ModelProto) -> list[Layer]:
    graph = model.graph
    if any(a.type in SUBGRAPHS for node in graph.node for a in node.attribute):
        return []  # If/Loop/Scan bodies may read any tensor: not followed, so nothing pruned
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    uses: Counter[str] = Counter()
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
            uses[name] += 1
    outputs = {o.name for o in graph.output}
    layers = []
    for node in graph.node:
        if node.op_type not in DENSE:
            continue
        made = _weight(node, initializers, reads=False)
        if made is None or uses[made[0]] != 1:
            continue
        units = initializers[made[0]].shape[made[1]]
        biases = []
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            bias = initializers.get(node.input[2])
            if bias is None or uses[node.input[2]] != 1:
                continue
            if bias.shape and bias.shape[-1] == units:
                biases.append(node.input[2])
            elif bias.size != 1:
                continue
        tensor = node.output[0]
        while tensor not in outputs and len(consumers[tensor]) == 1:
            nxt = consumers[tensor][0]
            if nxt.op_type == "Add":
                other = next((i for i in nxt.input if i != tensor), "")
                bias = initializers.get(other)
                if bias is None or uses[other] != 1 or bias.shape[-1:] != (units,):
                    break
                if bias.size != units:
                    break
                biases.append(other)
            elif nxt.op_type in DENSE and nxt.input[0] == tensor:
                read = _weight(nxt, initializers, reads=True)
                if read is not None and uses[read[0]] == 1:
                    width = initializers[read[0]].shape[1 - read[1]]
                    after = _bias(nxt, width, initializers, consumers, uses)
                    layers.append(Layer(made[0], made[1], tuple(biases), tensor, read[0],
                                        read[1], units, after))  # fmt: skip
                break
            elif nxt.op_type not in ELEMENTWISE or len(nxt.input) != 1:
                break
            tensor = nxt.output[0]
    return layers


Activity = dict[str, tuple[np.ndarray, np.ndarray]]  # activation -> mean |value|, mean value


def activity(model: onnx.ModelProto, layers: list[Layer], inputs: Arrays) -> Activity:
    """Each layer's units' mean absolute activation and mean activation on ``inputs``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for layer in layers:
        if layer.activation not in known:
            probe.graph.output.append(
                helper.make_tensor_value_info(layer.activation, onnx.TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [layer.activation for layer in layers]
    seen = {}
    for name, value in zip(names, session.run(names, inputs), strict=True):
        rows = value.astype(np.float64).reshape(-1, value.shape[-1])
        seen[name] = (np.abs(rows).mean(axis=0), rows.mean(axis=0))
    return seen


def _kept(units: int, fraction: float) -> int:
    kept = max(1, round(units * (1 - fraction)))
    return kept - kept % 8 if units >= 256 else kept  # multiples of 8 suit the kernels


def _by_unit(array: np.ndarray, axis: int) -> np.ndarray:
    """``array`` with the units' axis first."""
    return np.moveaxis(array, axis, 0)


def prune(
    model: onnx.ModelProto,
    fraction: float,
    inputs: Arrays | None = None,
    seen: Activity | None = None,
) -> tuple[onnx.ModelProto, dict[str, object]]:
    """A copy of ``model`` with ``fraction`` of every hidden layer's units removed (the least
    important on ``inputs``), and what was removed. With ``inputs``, each removed unit's mean
    activation times its outgoing weights is added to the reading layer's bias (what the
    next layer received from it on average), so the change is only its variation."""
    layers = hidden_layers(model)
    if not layers:
        raise ValueError("no hidden layer of dense units to prune")
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if seen is None:  # ``seen``: ``activity`` on the inputs, run once for several fractions
        seen = activity(model, layers, inputs) if inputs is not None else {}
    keep: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)  # initializer -> (axis, kept)
    added: dict[str, np.ndarray] = {}  # bias -> what the removed units gave on average
    before = after = 0
    for layer in layers:
        outgoing = _by_unit(weights[layer.weight_out], layer.out_axis).astype(np.float64)
        if layer.activation in seen:
            incoming, mean = seen[layer.activation]
        else:
            incoming = np.linalg.norm(_by_unit(weights[layer.weight_in], layer.in_axis), axis=1)
            mean = None
        score = incoming * np.linalg.norm(outgoing, axis=1)
        order = np.argsort(-score, kind="stable")
        count = _kept(layer.units, fraction)
        kept, removed = np.sort(order[:count]), order[count:]
        if mean is not None and layer.next_bias is not None and len(removed):
            share = mean[removed] @ outgoing[removed]
            added[layer.next_bias] = added.get(layer.next_bias, 0) + share
        keep[layer.weight_in].append((layer.in_axis, kept))
        keep[layer.weight_out].append((layer.out_axis, kept))
        for bias in layer.biases:
            keep[bias].append((weights[bias].ndim - 1, kept))
        before, after = before + layer.units, after + len(kept)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    for tensor in pruned.graph.initializer:
        if tensor.name in keep or tensor.name in added:
            array = weights[tensor.name]
            if tensor.name in added:
                array = (array + added[tensor.name].reshape(array.shape)).astype(array.dtype)
            for axis, kept in keep.get(tensor.name, []):
                array = np.take(array, kept, axis=axis)
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))
    del pruned.graph.value_info[:]  # the hidden tensors' shapes changed
    return pruned, {"layers": len(layers), "units_before": before, "units_after": after}
