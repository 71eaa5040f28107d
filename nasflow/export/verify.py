"""Verifying an artifact: its outputs against PyTorch's on held-out inputs, its own accuracy on the test split.

Float32 formats must reproduce PyTorch's outputs (largest absolute difference and cosine
difference within `deploy.atol`). Quantized formats cannot, by design; they are judged by what
a user loses: the artifact's test accuracy next to the float32 model's, failing when the drop
exceeds `deploy.max_accuracy_drop`. Both kinds record every number, so a failed artifact shows
how far it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from nasflow.export.common import eval_mode
from nasflow.plugin_api import ArtifactCheck, CheckInputs

if TYPE_CHECKING:
    import torch

BATCH = 256


def torch_logits(model: "torch.nn.Module", images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """The PyTorch model's float32 logits of `images`, batched, in eval mode."""
    import torch

    parts = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32))
            parts.append(model(x).detach().cpu().numpy().reshape(len(x), -1))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def run_logits(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """An artifact's float32 logits of `images`, batched through its runtime."""
    parts = [
        np.asarray(run(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)), np.float64).reshape(
            min(batch_size, len(images) - i), -1
        )
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def differences(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(Largest |expected - actual|, largest 1 - cosine similarity of one input's two outputs); inf when
    the shapes differ or a value is not finite."""
    if expected.shape != actual.shape:
        return float("inf"), float("inf")
    if expected.size == 0:
        return 0.0, 0.0
    e, a = expected.astype(np.float64), actual.astype(np.float64)
    if not (np.isfinite(e).all() and np.isfinite(a).all()):
        return float("inf"), float("inf")
    max_abs = float(np.abs(e - a).max())
    norms = np.linalg.norm(e, axis=1) * np.linalg.norm(a, axis=1)
    dots = (e * a).sum(axis=1)
    # two all-zero outputs are the same output; one zero and one not are as far apart as can be
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where((e == a).all(axis=1), 1.0, 0.0))
    return max_abs, float(max(0.0, (1.0 - cosine).max()))


def check_artifact(
    model: "torch.nn.Module", run: Callable[[np.ndarray], np.ndarray], inputs: CheckInputs, quantized: bool
) -> ArtifactCheck:
    """Every number of the check, and the verdict of the format's kind (see the module docstring)."""
    max_abs, cosine = differences(torch_logits(model, inputs.held_out), run_logits(run, inputs.held_out))
    reference = torch_logits(model, inputs.test_images)
    produced = run_logits(run, inputs.test_images)
    labels = np.asarray(inputs.test_labels)
    n = max(len(labels), 1)
    ref_top1, art_top1 = reference.argmax(1), produced.argmax(1)
    reference_accuracy = float((ref_top1 == labels).sum() / n)
    accuracy = float((art_top1 == labels).sum() / n)
    agreement = float((ref_top1 == art_top1).sum() / n)
    if quantized:
        drop = reference_accuracy - accuracy
        failure = (
            f"test accuracy {accuracy:.4f} is {drop * 100:.2f} points below the float32 model's {reference_accuracy:.4f} "
            f"(> deploy.max_accuracy_drop {inputs.max_accuracy_drop:g})"
            if drop > inputs.max_accuracy_drop
            else None
        )
    else:
        failure = (
            f"output differs from PyTorch by {max_abs:.3g} (cosine difference {cosine:.3g}; > atol {inputs.atol:g})"
            if max_abs > inputs.atol or cosine > inputs.atol
            else None
        )
    return ArtifactCheck(
        max_abs_err=max_abs, cosine_diff=cosine, tolerance=inputs.atol, accuracy=accuracy,
        reference_accuracy=reference_accuracy, top1_agreement=agreement,
        max_accuracy_drop=inputs.max_accuracy_drop, passed=failure is None, failure=failure,
    )
