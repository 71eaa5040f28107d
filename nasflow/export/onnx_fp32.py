"""ONNX float32: export PyTorch models with the TorchScript exporter, check and evaluate them with onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nasflow.errors import ExportError
from nasflow.export.common import VerifyResult, classify_accuracy, eval_mode, verify_outputs, write_atomically

if TYPE_CHECKING:
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17

# The TorchScript exporter keeps process-global state (opset, logging), so exports in one
# process run one at a time.
_EXPORT_LOCK = threading.Lock()




def _no_log(*_args: object) -> None:
    """Stand-in for torch's ONNX C++ logger while exporting."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's warnings and its graph dumps; they are noise to our users."""
    import torch

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    # torch 2.13's setup_onnx_logging tests the function object, not its result, so ONNX logging
    # is always on during export and a failed export dumps the whole graph to stderr.
    onnx_log = torch._C._jit_onnx_log
    torch._C._jit_onnx_log = _no_log
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch._C._jit_onnx_log = onnx_log
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    """The exporter appends a whole TorchScript graph to its errors; keep the useful part."""
    text = str(exc).split("Torch IR graph at exception")[0].strip()
    return " ".join(text.split()) or type(exc).__name__


def export_onnx_bytes(
    model: "torch.nn.Module", input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET
) -> bytes:
    """Serialised ONNX model of `model` traced on an input of `input_shape` (batch axis dynamic)."""
    import onnx
    import torch

    buf = io.BytesIO()
    dummy = torch.randn(*input_shape)
    try:
        with _EXPORT_LOCK, eval_mode(model), torch.no_grad(), _quiet():
            # dynamo=False: the TorchScript exporter is fast and needs no onnxscript.
            torch.onnx.export(
                model,
                (dummy,),
                buf,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as exc:
        raise ExportError(
            f"ONNX export of {type(model).__name__} failed: {_first_line(exc)}"
        ) from exc
    data = buf.getvalue()
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:
        name = type(model).__name__
        raise ExportError(f"exported ONNX model of {name} is invalid: {exc}") from exc
    return data


def export_onnx(
    model: "torch.nn.Module",
    input_shape: tuple[int, ...],
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export `model` to an ONNX file at `path` (written atomically); returns the path."""
    data = export_onnx_bytes(model, input_shape, opset)
    write_atomically(Path(path), data, "ONNX model")
    return Path(path)


def _verify_session(path_or_bytes: bytes | str | os.PathLike):
    """Single-threaded onnxruntime session; verification is about numbers, not speed."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the ONNX model: {exc}") from exc


def verify_onnx(
    model: "torch.nn.Module",
    path_or_bytes: bytes | str | os.PathLike,
    input_shape: tuple[int, ...],
    atol: float = 1e-4,
    n_inputs: int = 4,
    seed: int = 0,
) -> VerifyResult:
    """Run `n_inputs` seeded random inputs through PyTorch and onnxruntime; compare outputs."""
    session = _verify_session(path_or_bytes)
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> list[np.ndarray]:
        try:
            return session.run(None, {input_name: x})
        except Exception as exc:
            raise ExportError(f"onnxruntime failed to run the ONNX model: {exc}") from exc

    return verify_outputs(model, run, input_shape, atol, n_inputs, seed)


def onnx_runner(path: str | os.PathLike):
    """A function running the ONNX file on a batch with onnxruntime (first output); ExportError on failure."""
    session = _verify_session(path)
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return session.run(None, {input_name: x})[0]
        except Exception as exc:
            raise ExportError(f"onnxruntime failed to run {path}: {exc}") from exc

    return run


def onnx_accuracy(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Accuracy of the ONNX file itself on labelled images, run by onnxruntime (batch axis dynamic)."""
    return classify_accuracy(onnx_runner(path), images, labels, batch_size)
