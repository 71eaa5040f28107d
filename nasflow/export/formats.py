"""The built-in exporters, one per format, registered as plugins of kind `exporter`.

A third-party package adds a format the same way: an Exporter subclass returned by a
`nasflow_exporters` hook (see nasflow.hookspecs), then named in `deploy.formats`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from nasflow.errors import ExportError
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import Exporter, PluginOptions

if TYPE_CHECKING:
    import torch

ORT_MISSING = "onnxruntime is not installed: pip install onnxruntime"


class Int8Options(PluginOptions):
    calibration_images: int = Field(256, ge=1, description="training images the activation ranges are calibrated on")
    per_channel: bool = Field(True, description="weights quantized per output channel (false: one scale per tensor)")


def _ort_missing() -> str | None:
    # found, not imported: `nasflow validate` asks every format and must stay quick
    return None if importlib.util.find_spec("onnxruntime") is not None else ORT_MISSING


def _litert_missing() -> str | None:
    from nasflow.export.tflite_fp32 import CONVERTER_MISSING, _find_runtime, converter_available

    problem = _find_runtime()[1]
    if problem is not None:
        return problem
    return None if converter_available() else CONVERTER_MISSING


def _onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    from nasflow.export.onnx_fp32 import onnx_runner

    return onnx_runner(path)


def _shape(example: np.ndarray) -> tuple[int, ...]:
    return tuple(int(n) for n in np.shape(example))


class OnnxExporter(Exporter):
    """ONNX float32 (TorchScript exporter, batch axis dynamic), run by onnxruntime."""

    name = "onnx"
    description = "ONNX float32, batch axis dynamic; checked against PyTorch with onnxruntime"
    suffix = "onnx"

    @classmethod
    def unavailable_reason(cls, options=None) -> str | None:
        return _ort_missing()

    def settings(self) -> dict:
        return {"opset": self.opset}

    def export(self, model: "torch.nn.Module", example, path: Path, calibration=None) -> Path:
        from nasflow.export.onnx_fp32 import export_onnx

        return export_onnx(model, _shape(example), path, opset=self.opset)

    def runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        return _onnx_runner(path)

    def describe(self, path: Path) -> dict:
        from nasflow.export.tensors import onnx_tensors

        return onnx_tensors(path)


class OnnxInt8Exporter(OnnxExporter):
    """ONNX Runtime static quantization (QDQ, int8 weights and activations), float32 input and output."""

    name = "onnx-int8"
    description = "ONNX int8 (QDQ, ONNX Runtime static quantization calibrated on training images)"
    suffix = "int8.onnx"
    quantized = True
    Options = Int8Options

    @classmethod
    def unavailable_reason(cls, options=None) -> str | None:
        return _ort_missing()

    def settings(self) -> dict:
        return {"opset": self.opset, **self.options.model_dump(mode="json")}

    def export(self, model: "torch.nn.Module", example, path: Path, calibration=None) -> Path:
        from nasflow.export.onnx_int8 import export_onnx_int8

        return export_onnx_int8(model, _shape(example), path, calibration, self.opset, self.options.per_channel)

    def runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        return _onnx_runner(path)


class TFLiteExporter(Exporter):
    """LiteRT float32, converted with litert-torch."""

    name = "tflite"
    description = "LiteRT (TFLite) float32, converted with litert-torch"
    suffix = "tflite"

    @classmethod
    def unavailable_reason(cls, options=None) -> str | None:
        return _litert_missing()

    def export(self, model: "torch.nn.Module", example, path: Path, calibration=None) -> Path:
        from nasflow.export.tflite_fp32 import convert_to_tflite

        return convert_to_tflite(model, _shape(example), path)

    def runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        from nasflow.export.tflite_fp32 import tflite_runner

        return tflite_runner(path)

    def describe(self, path: Path) -> dict:
        from nasflow.export.tensors import tflite_tensors

        return tflite_tensors(path)


class TFLiteInt8Options(Int8Options):
    channel_last: bool = Field(
        False, description="NHWC input (images transposed from NCHW by the caller); the Edge TPU needs it"
    )
    float_io: bool = Field(
        False,
        description="float32 input and output (a QUANTIZE op in front, DEQUANTIZE behind); false: int8 tensors, "
        "quantized with their own scale and zero point",
    )


class TFLiteInt8Exporter(TFLiteExporter):
    """LiteRT full-integer int8 (PT2E static quantization), calibrated on training images.

    Input and output tensors are int8 as well (their scale and zero point are in the tensors'
    `quantization` details), unless `float_io` adds float32 ones around them.
    """

    name = "tflite-int8"
    description = "LiteRT (TFLite) full-integer int8, calibrated on training images"
    suffix = "int8.tflite"
    quantized = True
    Options = TFLiteInt8Options

    @property
    def channel_last(self) -> bool:
        return self.options.channel_last

    def export(self, model: "torch.nn.Module", example, path: Path, calibration=None) -> Path:
        import torch

        from nasflow.export.tflite_int8 import convert_to_tflite_int8

        if calibration is None or len(calibration) == 0:
            raise ExportError(f"{self.name} needs at least one calibration image")
        batches = [torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32)) for image in calibration]
        return convert_to_tflite_int8(
            model, _shape(example), path, batches, per_channel=self.options.per_channel,
            channel_last=self.channel_last, float_io=self.options.float_io,
        )

    def runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        from nasflow.export.tflite_fp32 import tflite_runner

        return tflite_runner(path, self.channel_last)


@hookimpl
def nasflow_exporters():
    from nasflow.export.edgetpu import EdgeTPUExporter

    return [OnnxExporter, OnnxInt8Exporter, TFLiteExporter, TFLiteInt8Exporter, EdgeTPUExporter]
