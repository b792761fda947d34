"""PyTorch: TorchScript archives (torch.jit.save) and torch.export programs (.pt2), exported with
torch.onnx.export keeping the batch dimension dynamic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelplane.convert.base import Arrays, Converted, ConvertOptions
from modelplane.errors import UnsupportedModel


def _example(options: ConvertOptions) -> Any:
    import torch

    if options.input_shape is None:
        raise UnsupportedModel(
            "a TorchScript file does not record its input shape; push with --input-shape, for "
            "example --input-shape 1,3,32,32 (the first dimension is the batch)"
        )
    return (torch.randn(*options.input_shape),)


def _outputs(result: Any) -> list[Any]:
    return list(result) if isinstance(result, tuple | list) else [result]


def convert_torchscript(source: Path, workdir: Path, options: ConvertOptions) -> Converted:
    import torch

    module = torch.jit.load(str(source), map_location="cpu").eval()  # type: ignore[no-untyped-call]  # torch stub
    example = _example(options)
    with torch.no_grad():
        outputs = _outputs(module(*example))
    return _export(module, example, len(outputs), workdir, dynamo=False)


def convert_export(source: Path, workdir: Path, options: ConvertOptions) -> Converted:
    import torch

    program = torch.export.load(str(source))
    example = program.example_inputs[0] if program.example_inputs else None
    if example is None:
        example = _example(options)
    module = program.module()
    with torch.no_grad():
        outputs = _outputs(module(*example))
    return _export(module, tuple(example), len(outputs), workdir, dynamo=True)


def _export(module: Any, example: Any, n_outputs: int, workdir: Path, dynamo: bool) -> Converted:
    import torch

    inputs = [f"input_{i}" if len(example) > 1 else "input" for i in range(len(example))]
    outputs = [f"output_{i}" if n_outputs > 1 else "output" for i in range(n_outputs)]
    path = workdir / "model.onnx"
    try:
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(
                module, tuple(example), str(path), input_names=inputs, output_names=outputs,
                dynamic_shapes=tuple({0: batch} for _ in example), dynamo=True,
                external_data=False, verbose=False,
            )  # fmt: skip
        else:
            axes = {name: {0: "batch"} for name in inputs + outputs}
            torch.onnx.export(
                module, tuple(example), str(path), input_names=inputs, output_names=outputs,
                dynamic_axes=axes, dynamo=False, opset_version=17,
            )  # fmt: skip
    except Exception as exc:
        raise UnsupportedModel(f"torch.onnx.export failed: {str(exc)[:400]}") from None

    def original(feeds: Arrays) -> Arrays:
        with torch.no_grad():
            result = _outputs(module(*(torch.from_numpy(feeds[n]) for n in inputs)))
        return {
            name: np.asarray(r.detach().numpy()) for name, r in zip(outputs, result, strict=True)
        }

    examples = {n: np.asarray(t.detach().numpy()) for n, t in zip(inputs, example, strict=True)}
    return Converted(path, original, example_inputs=examples)
