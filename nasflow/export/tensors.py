"""What a deployed file's input and output tensors are, read from the file itself (for the manifest).

Each description is `{"name", "shape", "dtype", "quantization"}`; `shape` uses None for a dynamic
axis; `quantization` is None for a float tensor, else `{"scale", "zero_point"}`: a caller turns a
float value x into `round(x / scale) + zero_point` and back with `(q - zero_point) * scale`.
Torch is never imported.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from nasflow.errors import ExportError


def _onnx_dtype(elem_type: int) -> str:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _onnx_value(value: Any) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return {"name": value.name, "shape": shape, "dtype": _onnx_dtype(tensor.elem_type), "quantization": None}


def onnx_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """{"inputs": [...], "outputs": [...], "activation_quantization": [...]} of an ONNX file.

    For a QDQ graph, `activation_quantization` gives the scale and zero point that the first
    QuantizeLinear applies to each graph input (the file still takes float32; this is what it
    does to it); empty for a float graph.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(os.fspath(path))
    except Exception as exc:
        raise ExportError(f"cannot read the ONNX file {path}: {exc}") from exc
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    names = {v.name for v in graph.input} - set(constants)
    quantized = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in names:
            scale = constants.get(node.input[1])
            zero = constants.get(node.input[2]) if len(node.input) > 2 else None
            if scale is not None and scale.size == 1:
                quantized.append({
                    "tensor": node.input[0], "scale": float(scale.reshape(-1)[0]),
                    "zero_point": int(zero.reshape(-1)[0]) if zero is not None else 0,
                    "dtype": np.dtype(zero.dtype).name if zero is not None else "uint8",
                })
    return {
        "inputs": [_onnx_value(v) for v in graph.input if v.name in names],
        "outputs": [_onnx_value(v) for v in graph.output],
        "activation_quantization": quantized,
    }


def _tflite_value(detail: dict[str, Any]) -> dict[str, Any]:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    quantization = None if np.issubdtype(dtype, np.floating) or not scale else {"scale": float(scale), "zero_point": int(zero)}
    return {"name": detail["name"], "shape": [int(n) for n in detail["shape"]], "dtype": dtype.name,
            "quantization": quantization}


def tflite_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """{"inputs": [...], "outputs": [...], "tensor_dtypes": {dtype: count}} of a .tflite file (LiteRT)."""
    from nasflow.export.tflite_fp32 import _runtime
    from nasflow.export.tflite_int8 import tensor_types

    try:
        interp = _runtime().interpreter(model_path=os.fspath(path), num_threads=1)
    except Exception as exc:
        raise ExportError(f"cannot read the .tflite file {path}: {exc}") from exc
    return {
        "inputs": [_tflite_value(d) for d in interp.get_input_details()],
        "outputs": [_tflite_value(d) for d in interp.get_output_details()],
        "tensor_dtypes": tensor_types(interp),
    }
