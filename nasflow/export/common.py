"""What every exporter shares: atomic writes, file hashes, eval mode, and comparing an artifact with PyTorch."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nasflow.errors import ExportError

if TYPE_CHECKING:
    import torch


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



def classify_accuracy(
    run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> float:
    """Share of `images` whose largest output of `run` (an artifact's runtime) is the label; batched."""
    correct = 0
    for i in range(0, len(labels), batch_size):
        logits = np.asarray(run(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)))
        correct += int((logits.reshape(len(logits), -1).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(len(labels), 1)


