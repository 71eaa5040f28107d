"""ONNX int8: ONNX Runtime static quantization (QDQ), calibrated on real training images.

The float32 ONNX export is quantized by `onnxruntime.quantization.quantize_static`: weights
symmetric int8 (per output channel by default), activations int8 with ranges set by running the
calibration images through the float model (MinMax). QDQ keeps the graph standard ONNX
(QuantizeLinear/DequantizeLinear pairs around each quantized operator), so any runtime that reads
ONNX loads it; input and output stay float32.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nasflow.errors import ExportError
from nasflow.export.common import write_atomically
from nasflow.export.onnx_fp32 import INPUT_NAME, export_onnx_bytes

if TYPE_CHECKING:
    import torch

CALIBRATION_BATCH = 32
_QUANTIZE_LOCK = threading.Lock()  # the calibrator writes its scratch model next to the input


def _reader(images: np.ndarray):
    """A CalibrationDataReader handing `images` to the calibrator in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                [np.ascontiguousarray(images[i : i + CALIBRATION_BATCH], dtype=np.float32)
                 for i in range(0, len(images), CALIBRATION_BATCH)]
            )

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return Reader()


def export_onnx_int8(
    model: "torch.nn.Module",
    input_shape: tuple[int, ...],
    path: str | os.PathLike,
    calibration: np.ndarray,
    opset: int = 17,
    per_channel: bool = True,
) -> Path:
    """Quantize `model` to a QDQ int8 ONNX file at `path` (written atomically), calibrated on `calibration`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if calibration is None or len(calibration) == 0:
        raise ExportError("onnx-int8 needs at least one calibration image")
    data = export_onnx_bytes(model, input_shape, opset)
    with _QUANTIZE_LOCK, tempfile.TemporaryDirectory(prefix="nasflow-onnx-int8-") as tmp:
        src, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_static advises "pre-processing" on the root logger at every call
        try:
            quantize_static(
                str(src), str(out), _reader(calibration), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            )
        except Exception as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise ExportError(f"onnx-int8: static quantization of {type(model).__name__} failed: {text}") from exc
        finally:
            root.setLevel(level)
        write_atomically(Path(path), out.read_bytes(), "int8 ONNX model")
    return Path(path)
