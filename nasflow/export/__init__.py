"""Exporters: one per deployed format (`onnx`, `onnx-int8`, `tflite`, `tflite-int8`), plugins of kind `exporter`.

Devices import the runtimes and converters from here; nothing here imports a device.
"""

from nasflow.export.common import VerifyResult, classify_accuracy, eval_mode, sha256_file, verify_outputs, write_atomically
from nasflow.export.onnx_fp32 import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    export_onnx_bytes,
    onnx_accuracy,
    verify_onnx,
)

__all__ = [
    "DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "VerifyResult", "classify_accuracy", "eval_mode", "export_onnx",
    "export_onnx_bytes", "onnx_accuracy", "sha256_file", "verify_onnx", "verify_outputs", "write_atomically",
]
