"""The `edgetpu` format: a full-integer, channel-last .tflite compiled by `edgetpu_compiler`.

Where the compiler is installed, the artifact is its output (`*.edgetpu.tflite`) and the int8 model
it was compiled from stays beside it (`*.cpu.int8.tflite`). The compiled file's Edge TPU subgraph
is a custom operator only the Edge TPU delegate runs, so verification runs that int8 model on
LiteRT's CPU kernels: the compiler maps the quantized operators one to one, keeping their int8
arithmetic. Where the compiler is missing, the artifact is the int8 model alone, named
`*.edgetpu-uncompiled.int8.tflite`, and its manifest entry carries the operator-mapping report
(`nasflow.export.edgetpu_ops`) with `compiled: false`: it is never presented as an Edge TPU model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from nasflow.export.formats import TFLiteInt8Exporter, TFLiteInt8Options

if TYPE_CHECKING:
    import torch

COMPILED_SUFFIX = "edgetpu.tflite"
UNCOMPILED_SUFFIX = "edgetpu-uncompiled.int8.tflite"
CPU_SUFFIX = "cpu.int8.tflite"


class EdgeTPUExportOptions(TFLiteInt8Options):
    channel_last: bool = Field(True, description="NHWC input; NCHW would leave every operator on the CPU")
    float_io: Literal[False] = Field(
        False, description="always false: the compiler is given int8 input and output, the tensors it maps"
    )
    compiler: str = Field("edgetpu_compiler", description="the compiler executable (a name on PATH or a path)")
    compiler_timeout_s: float = Field(180.0, gt=0, description="seconds one compilation may take")


def cpu_model_path(path: Path) -> Path:
    """The int8 model a compiled artifact at `path` was compiled from."""
    return path.with_name(path.name[: -len(COMPILED_SUFFIX)] + CPU_SUFFIX)


class EdgeTPUExporter(TFLiteInt8Exporter):
    """Coral Edge TPU: full-int8 NHWC .tflite, compiled when edgetpu_compiler is installed."""

    name = "edgetpu"
    description = ("Coral Edge TPU: int8 NHWC .tflite compiled by edgetpu_compiler; without the compiler the "
                   "int8 model with an operator-mapping report, marked not compiled")
    suffix = COMPILED_SUFFIX
    Options = EdgeTPUExportOptions

    def __init__(self, options=None, opset: int = 17):
        super().__init__(options, opset)
        self.compiler = shutil.which(self.options.compiler)
        # an instance attribute: the file name says whether it is a compiled Edge TPU model
        self.suffix = COMPILED_SUFFIX if self.compiler else UNCOMPILED_SUFFIX

    def settings(self) -> dict[str, Any]:
        # whether it is compiled is part of the artifact: installing the compiler makes a new one
        return {**super().settings(), "compiled": self.compiler is not None}

    def note(self) -> str | None:
        if self.compiler:
            return None
        return (f"edgetpu: {self.options.compiler!r} is not installed, so the artifact is the int8 model with an "
                "operator-mapping report (manifest `edgetpu`), not compiled for the Edge TPU; to compile, install "
                "Coral's `edgetpu-compiler` package (Debian/Ubuntu on x86-64, from packages.cloud.google.com/apt) "
                "or set deploy.options.edgetpu.compiler to its path")

    def export(self, model: "torch.nn.Module", example, path: Path, calibration=None) -> Path:
        if not self.compiler:
            return super().export(model, example, path, calibration)
        from nasflow.plugins.devices.edgetpu_device import compile_for_edgetpu

        cpu = super().export(model, example, cpu_model_path(path), calibration)
        with tempfile.TemporaryDirectory(dir=path.parent) as out:
            compiled = compile_for_edgetpu(cpu, Path(out), self.compiler, self.options.compiler_timeout_s)
            compiled.path.replace(path)
        return path

    def runner(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        return super().runner(self._cpu_model(path))

    def describe(self, path: Path) -> dict[str, Any] | None:
        from nasflow.export.edgetpu_ops import edgetpu_mapping

        described = super().describe(self._cpu_model(path)) or {}
        report = edgetpu_mapping(self._cpu_model(path)).to_dict()
        report["compiled"] = self._is_compiled(path)
        return {**described, "layout": "NHWC" if self.channel_last else "NCHW", "edgetpu": report}

    @staticmethod
    def _is_compiled(path: Path) -> bool:
        return path.name.endswith(COMPILED_SUFFIX)

    def _cpu_model(self, path: Path) -> Path:
        return cpu_model_path(path) if self._is_compiled(path) else path
