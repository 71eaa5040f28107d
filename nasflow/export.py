"""Export PyTorch models to ONNX and check the export against PyTorch with onnxruntime."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ExportError

if TYPE_CHECKING:
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17

# The TorchScript exporter keeps process-global state (opset, logging), so exports in one
# process run one at a time.
_EXPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class VerifyResult:
    """Largest absolute difference between PyTorch and onnxruntime outputs, and the verdict."""

    max_abs_err: float
    atol: float
    passed: bool


@contextlib.contextmanager
def eval_mode(model: "torch.nn.Module") -> Iterator[None]:
    """Put `model` in eval mode for the block and give it back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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


def write_atomically(target: Path, data: bytes, what: str) -> None:
    """Write `data` to `target` through a temporary file and a rename, so that a crash never leaves
    a truncated file behind. The file gets the user's umask like any other file they create
    (`tempfile.mkstemp` would make it private, 0600)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write {what} to {target}: {exc}") from exc


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so large artifacts fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_outputs(out: object) -> list[np.ndarray]:
    """Flatten a model's output (tensor, or tuple/list of tensors) to numpy arrays in order."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, (tuple, list)):
        return [a for item in out for a in _torch_outputs(item)]
    raise ExportError(f"cannot compare model output of type {type(out).__name__} with ONNX")


def _abs_err(expected: np.ndarray, actual: np.ndarray) -> float:
    """Max |expected - actual|; inf on shape mismatch or NaN in only one of the two."""
    if expected.shape != actual.shape:
        return float("inf")
    if expected.size == 0:
        return 0.0
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    both_nan = np.isnan(expected) & np.isnan(actual)
    diff = np.where(both_nan, 0.0, diff)
    return float("inf") if np.isnan(diff).any() else float(diff.max())


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


def verify_outputs(
    model: "torch.nn.Module",
    run: Callable[[np.ndarray], Sequence[np.ndarray]],
    input_shape: tuple[int, ...],
    atol: float = 1e-4,
    n_inputs: int = 4,
    seed: int = 0,
) -> VerifyResult:
    """Run `n_inputs` seeded random inputs through PyTorch and `run` (an artifact's runtime); compare outputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    with eval_mode(model), torch.no_grad():
        for _ in range(n_inputs):
            x = torch.randn(*input_shape, generator=gen)
            expected = _torch_outputs(model(x))
            actual = list(run(x.numpy()))
            if len(actual) != len(expected):
                worst = float("inf")
                continue
            for e, a in zip(expected, actual):
                worst = max(worst, _abs_err(e, np.asarray(a)))
    return VerifyResult(max_abs_err=worst, atol=atol, passed=worst <= atol)


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


def classify_accuracy(
    run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> float:
    """Share of `images` whose largest output of `run` (an artifact's runtime) is the label; batched."""
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = np.asarray(run(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)))
        correct += int((logits.reshape(len(logits), -1).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(len(labels), 1)


def onnx_accuracy(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Accuracy of the ONNX file itself on labelled images, run by onnxruntime (batch axis dynamic)."""
    session = _verify_session(path)
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return session.run(None, {input_name: x})[0]
        except Exception as exc:
            raise ExportError(f"onnxruntime failed to run {path}: {exc}") from exc

    return classify_accuracy(run, images, labels, batch_size)
