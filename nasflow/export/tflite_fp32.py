"""LiteRT (TFLite) float32 artifacts: the interpreter found here, litert-torch conversion, checks.

Devices that run .tflite files (litert, android, edgetpu) import the runtime and the converter
from here; this module never imports a device. See :mod:`nasflow.plugins.devices.litert` for how
to install the two packages and why they are installed in two steps.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasflow.errors import DeviceError
from nasflow.export.common import VerifyResult, classify_accuracy, eval_mode, verify_outputs

if TYPE_CHECKING:
    import torch

INPUT_SEED = 0
INTERPRETER_HINT = "pip install 'nasflow[litert]'"
CONVERTER_HINT = (
    "pip install 'litert-torch==0.10.*' && pip install -U 'typing-extensions>=4.15' (a separate step: "
    "litert-torch pins typing-extensions<4.13, prefect needs >=4.15; see nasflow.plugins.devices.litert)"
)
CONVERTER_MISSING = f"litert-torch is not installed, so PyTorch models cannot be converted to .tflite: {CONVERTER_HINT}"

_CONVERT_LOCK = threading.Lock()  # torch.export and the MLIR converter keep process-global state


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- interpreter


@dataclass(frozen=True)
class _Runtime:
    """The LiteRT interpreter found here: its class, op-resolver enum, package and version."""

    interpreter: Any
    op_resolver: Any  # OpResolverType enum, or None where the package lacks it
    package: str
    version: str


@functools.lru_cache(maxsize=1)
def _find_runtime() -> tuple[_Runtime | None, str | None]:
    """(runtime, None), or (None, why no interpreter can be used here)."""
    try:
        from ai_edge_litert import interpreter as mod

        return _Runtime(mod.Interpreter, getattr(mod, "OpResolverType", None), "ai-edge-litert",
                        _dist_version("ai-edge-litert") or "?"), None
    except ImportError:
        pass
    problem = ""
    version = _dist_version("tflite-runtime")
    if version is not None:
        try:  # tflite-runtime 2.14 is built against NumPy 1 and fails under NumPy 2
            from tflite_runtime import interpreter as mod

            return _Runtime(mod.Interpreter, getattr(mod, "OpResolverType", None), "tflite-runtime", version), None
        except Exception as exc:  # ImportError, AttributeError ('_ARRAY_API not found'), ...
            problem = f" (tflite-runtime {version} is installed but does not import: {str(exc).strip() or type(exc).__name__})"
    return None, f"no LiteRT interpreter: ai-edge-litert is not installed{problem}: {INTERPRETER_HINT}"


def _runtime() -> _Runtime:
    runtime, problem = _find_runtime()
    if runtime is None:
        raise DeviceError(f"litert: {problem}")
    return runtime


def converter_available() -> bool:
    """Whether litert-torch is installed (checked without importing it: the import is slow)."""
    return importlib.util.find_spec("litert_torch") is not None


# ---------------------------------------------------------------- conversion


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Hide litert-torch's progress lines, import chatter and deprecation warnings."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # the converter's C++ INFO lines
    loggers = [logging.getLogger(name) for name in ("torchao", "torch", "absl", "jax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _import_converter():
    if not converter_available():
        raise DeviceError(f"litert: {CONVERTER_MISSING}")
    with _quiet_converter():
        try:
            import litert_torch
        except Exception as exc:
            raise DeviceError(f"litert: litert-torch is installed but does not import: {exc}") from exc
    return litert_torch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def converting(model: "torch.nn.Module", shape: tuple[int, ...], path: Path, what: str) -> Iterator[Path]:
    """One conversion: converter lock, quiet logs, model in eval mode; yields a temporary path to write.

    The temporary file becomes `path` only when the block succeeds (so a cache never holds a
    partial file); any failure becomes a DeviceError naming the model, the input and `what`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with _CONVERT_LOCK, _quiet_converter(), eval_mode(model):
            yield tmp
        os.replace(tmp, path)
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(
            f"litert: cannot convert {type(model).__name__} on input {shape} to {what}: {_first_line(exc)}"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def convert_to_tflite(model: "torch.nn.Module", input_shape: tuple[int, ...], path: str | os.PathLike) -> Path:
    """Convert `model` (traced on a random input of `input_shape`, batch first) to a .tflite at `path`.

    Always converts (no cache) and keeps the model's weights; the file appears atomically.
    Raises DeviceError when litert-torch is missing or the conversion fails.
    """
    import torch

    litert_torch = _import_converter()
    shape = tuple(int(n) for n in input_shape)
    sample = torch.randn(*shape, generator=torch.Generator().manual_seed(INPUT_SEED))
    with converting(model, shape, Path(path), ".tflite") as tmp:
        edge = litert_torch.convert(model.eval(), (sample,))
        edge.export(str(tmp))
    return Path(path)


def verify_tflite(
    model: "torch.nn.Module",
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    atol: float = 1e-4,
    n_inputs: int = 4,
    seed: int = 0,
) -> VerifyResult:
    """Run seeded random inputs through PyTorch and the .tflite on LiteRT (1 thread); compare outputs."""
    rt = _runtime()
    kwargs: dict[str, Any] = {"model_path": os.fspath(path), "num_threads": 1}
    try:
        interp = rt.interpreter(**kwargs)
        interp.allocate_tensors()
    except Exception as exc:
        raise DeviceError(f"litert: cannot load {path}: {_first_line(exc)}") from exc
    (detail,) = interp.get_input_details()
    outputs = interp.get_output_details()

    def run(x: np.ndarray) -> list[np.ndarray]:
        try:
            interp.set_tensor(detail["index"], x.reshape(detail["shape"]).astype(detail["dtype"]))
            interp.invoke()
        except Exception as exc:
            raise DeviceError(f"litert: running {path} failed: {_first_line(exc)}") from exc
        return [interp.get_tensor(o["index"]) for o in outputs]

    return verify_outputs(model, run, input_shape, atol, n_inputs, seed)




def tflite_runner(path: str | os.PathLike, channel_last: bool = False) -> "Callable[[np.ndarray], np.ndarray]":
    """Batched logits of the .tflite at `path` on the LiteRT interpreter (1 thread).

    Callers pass NCHW batches; `channel_last` says the file takes NHWC (they are transposed).

    The converter fixes the batch axis at 1; resizing it works for most models, and where the
    outputs do not follow, images go through one at a time. Integer models get their inputs
    quantized and their outputs dequantized with the tensors' own scale and zero point, so a
    caller always passes and receives float32.
    """
    try:
        interp = _runtime().interpreter(model_path=os.fspath(path), num_threads=1)
        (detail,) = interp.get_input_details()
        out_detail = interp.get_output_details()[0]
        shape = [int(n) for n in detail["shape"]]
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(f"litert: cannot load {path}: {_first_line(exc)}") from exc
    state: dict[str, Any] = {"allocated": None, "batched": True}

    def allocate(n: int) -> None:
        if state["allocated"] != n:
            state["allocated"] = None  # unknown until the resize has succeeded
            interp.resize_tensor_input(detail["index"], [n, *shape[1:]])
            interp.allocate_tensors()
            state["allocated"] = n

    def invoke(x: np.ndarray) -> np.ndarray:
        if channel_last:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        allocate(len(x))
        interp.set_tensor(detail["index"], quantize(x, detail))
        interp.invoke()
        return dequantize(interp.get_tensor(out_detail["index"]), out_detail)

    def run(x: np.ndarray) -> np.ndarray:
        try:
            if state["batched"] and len(x) > 1:
                try:
                    out = invoke(x)
                    if len(out) == len(x):
                        return out
                except Exception:
                    pass
                state["batched"] = False  # the graph keeps batch 1 inside: single images from now on
            return np.concatenate([invoke(image[None]).reshape(1, -1) for image in x])
        except Exception as exc:
            raise DeviceError(f"litert: running {path} failed: {_first_line(exc)}") from exc

    return run


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """`x` (float) as the input tensor wants it: quantized with its scale/zero point when it is integer."""
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor as float32, dequantized with its scale/zero point when it is integer."""
    if np.issubdtype(np.dtype(detail["dtype"]), np.floating):
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def tflite_accuracy(
    path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, batch_size: int = 256, channel_last: bool = False
) -> float:
    """Accuracy of the .tflite file itself on labelled (NCHW) images, run by the LiteRT interpreter."""
    return classify_accuracy(tflite_runner(path, channel_last), images, labels, batch_size)
