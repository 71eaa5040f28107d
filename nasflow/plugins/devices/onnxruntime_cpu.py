"""Device backend that times ONNX models with onnxruntime's CPU execution provider."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nasflow.errors import DeviceError, ExportError
from nasflow.export import export_onnx_bytes, sha256_file
from nasflow.fingerprint import base_fingerprint
from nasflow.hookspecs import hookimpl
from nasflow.plugin_api import DeviceBackend, LatencyStats, Measurement
from nasflow.plugins.devices.torch_cpu import INPUT_SEED, CPUOptions, batched_shape
from nasflow.timing import measure_with

if TYPE_CHECKING:
    import onnxruntime
    import torch

GraphOptimization = Literal["all", "extended", "basic", "disable"]

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


EXPORT_CACHE_ENTRIES = 8
EXPORT_CACHE_BYTES = 256 * 2**20


def model_content_key(model: "torch.nn.Module", shape: tuple[int, ...]) -> str:
    """Hash of what an ONNX export of `model` depends on: its class, structure, weights and the input shape."""
    import torch

    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}\n{shape}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class OnnxRuntimeOptions(CPUOptions):
    """CPU timing options plus onnxruntime's graph optimisation level."""

    graph_optimization: GraphOptimization = "all"


def _ort():
    """Import onnxruntime, turning its absence into a DeviceError that says how to fix it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise DeviceError(OnnxRuntimeCPU.MISSING) from exc
    return onnxruntime


class OnnxRuntimeCPU(DeviceBackend):
    """onnxruntime InferenceSession on the CPU provider, sequential, pinned intra-op threads."""

    name = "onnxruntime-cpu"
    description = "ONNX models on onnxruntime's CPU execution provider"
    Options = OnnxRuntimeOptions
    artifact_formats = ("onnx", "onnx-int8")  # QDQ files take float32 input like float32 ones
    MISSING = "onnxruntime is not installed: pip install onnxruntime"

    def __init__(self, options=None):
        super().__init__(options)
        # Exporting costs 3-10x a measurement; a model measured in several passes is exported once.
        self._exports: OrderedDict[str, bytes] = OrderedDict()

    @classmethod
    def unavailable_reason(cls, options=None) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return cls.MISSING
        return None

    def fingerprint(self) -> dict[str, Any]:
        ort = _ort()
        return base_fingerprint(
            "onnxruntime",
            ort.__version__,
            self.options.threads,
            graph_optimization=self.options.graph_optimization,
        )

    def measure_model(self, model: "torch.nn.Module", input_shape: tuple[int, ...]) -> Measurement:
        shape = batched_shape(input_shape, self.options.batch_size)
        data = self._exported(model, shape)
        stats = self._time(self._session(data), shape)
        return self._measurement(stats, {"input_shape": list(shape), "onnx_bytes": len(data)})

    def measure_artifact(self, path: str, fmt: str, input_shape: tuple[int, ...]) -> Measurement:
        if fmt not in self.artifact_formats:
            return super().measure_artifact(path, fmt, input_shape)
        if not Path(path).is_file():
            raise DeviceError(f"onnxruntime-cpu: no ONNX file at {path}")
        shape = batched_shape(input_shape, self.options.batch_size)
        stats = self._time(self._session(os.fspath(path)), shape)
        extra = {"input_shape": list(shape), "artifact": str(path), "sha256": sha256_file(path)}
        return self._measurement(stats, extra, fmt)

    def _exported(self, model: "torch.nn.Module", shape: tuple[int, ...]) -> bytes:
        """ONNX bytes of `model`, reused while its structure and weights are unchanged."""
        key = model_content_key(model, shape)
        if key in self._exports:
            self._exports.move_to_end(key)
            return self._exports[key]
        try:
            data = export_onnx_bytes(model, shape)
        except ExportError as exc:
            raise DeviceError(f"onnxruntime-cpu: {exc}") from exc
        self._exports[key] = data
        while len(self._exports) > EXPORT_CACHE_ENTRIES or (
            len(self._exports) > 1 and sum(map(len, self._exports.values())) > EXPORT_CACHE_BYTES
        ):
            self._exports.popitem(last=False)
        return data

    def _session(self, source: bytes | str) -> "onnxruntime.InferenceSession":
        """Session pinned to the configured threads, sequential, CPU provider only."""
        ort = _ort()
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = levels[self.options.graph_optimization]
        so.log_severity_level = 3  # errors only: warnings would interleave with progress output
        try:
            return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DeviceError(f"onnxruntime-cpu: cannot load the ONNX model: {exc}") from exc

    def _time(
        self, session: "onnxruntime.InferenceSession", shape: tuple[int, ...]
    ) -> LatencyStats:
        """Time `session.run` on one fixed random input of `shape`."""
        inputs = session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise DeviceError(f"onnxruntime-cpu: expected a model with one input, got {names}")
        inp = inputs[0]
        dtype = ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise DeviceError(f"onnxruntime-cpu: unsupported input type {inp.type} of {inp.name!r}")
        x = np.random.default_rng(INPUT_SEED).standard_normal(shape).astype(dtype)
        feed = {inp.name: x}
        try:
            return measure_with(lambda: session.run(None, feed), self.options)
        except Exception as exc:
            raise DeviceError(f"onnxruntime-cpu: inference on input {shape} failed: {exc}") from exc

    def _measurement(self, stats: LatencyStats, extra: dict[str, Any], fmt: str = "onnx") -> Measurement:
        return self.make_measurement(
            stats,
            runtime=f"onnxruntime {_ort().__version__}",
            artifact_format=fmt,
            threads=self.options.threads,
            batch_size=self.options.batch_size,
            extra=extra,
        )


@hookimpl
def nasflow_devices():
    return [OnnxRuntimeCPU]
