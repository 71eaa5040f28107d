"""Train and evaluate a classifier on a Dataset, on the CPU or a CUDA GPU (deterministic per seed on the CPU)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import Dataset
from .train_device import amp_dtype, resolve_device

STOP = threading.Event()
"""Set when the run is interrupted: every training in this process stops at its next batch."""


class TrainingStopped(Exception):
    """Training gave up because the run was interrupted (see `STOP`)."""


@contextmanager
def stop_training_on_interrupt() -> Iterator[None]:
    """Wrap the wait for training workers: Ctrl-C or SIGTERM reaches only the waiting thread, and
    without this the run would end only after every training in flight had finished (minutes)."""
    STOP.clear()
    try:
        yield
    except BaseException:
        STOP.set()
        raise

_PAD = 2  # pixels of padding for the random-crop augmentation


@dataclass
class TrainResult:
    val_accuracy: float  # 0..1
    val_loss: float
    train_loss: float  # mean cross-entropy over the last epoch (regulariser excluded)
    epochs: int  # epochs completed; fewer than asked when the loss diverged
    seconds: float


def train_model(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    epochs: int | None = None,
    subset: float = 1.0,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> TrainResult:
    """Train `model` in place, then evaluate it (in float32) on the validation split.

    `device` is an `execution.device` value or a torch device (None: wherever the model is); the
    model is moved there and stays there. `amp` autocasts the forward pass on CUDA.
    """
    if not 0 < subset <= 1:
        raise ValueError(f"subset must be in (0, 1], got {subset}")
    total_epochs = config.epochs if epochs is None else epochs
    if total_epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {total_epochs}")
    start = time.perf_counter()
    target = _model_device(model) if device is None else _as_device(device)
    model.to(target)
    keep = _subset_indices(dataset.train_y, subset, config.seed)
    was_training = model.training
    # Shuffling and augmentation use a local generator. The global RNG is left alone on purpose:
    # training tasks share it across threads, so seeding it here would race with model init.
    done, train_loss = _fit(model, dataset, keep, config, total_epochs, extra_loss, progress, amp_dtype(target, amp))
    model.train(was_training)
    val_accuracy, val_loss = evaluate(model, dataset)
    return TrainResult(val_accuracy, val_loss, train_loss, done, time.perf_counter() - start)


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256, split: str = "val") -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the validation (or test) split; the model's mode is restored."""
    device = _model_device(model)
    labels = dataset.labels_of(split)
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        with torch.no_grad():
            for i in range(0, len(labels), batch_size):
                part = slice(i, i + batch_size)
                logits = model(to_device(dataset.batch(split, part), device))
                target = to_device(labels[part], device)
                loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
                correct += int((logits.argmax(1) == target).sum())
    finally:
        model.train(was_training)
    n = max(len(labels), 1)
    return correct / n, loss_sum / n


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch as a tensor on `device`: through pinned memory with a non-blocking copy on CUDA."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as CPU tensors, so a checkpoint loads on every device."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _fit(model, dataset: Dataset, keep: np.ndarray, config: TrainConfig, epochs: int, extra_loss, progress, dtype):
    """The training loop proper; returns (epochs completed, last epoch's mean loss)."""
    device = _model_device(model)
    gen = torch.Generator().manual_seed(config.seed)
    labels = dataset.train_y
    n = len(keep)
    # Drop the ragged last batch: a batch of one breaks BatchNorm; samples reshuffle every epoch.
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch
    total_steps = steps_per_epoch * epochs
    optimizer = _optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    model.train()
    step, epoch_loss = 0, float("nan")
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).numpy()
        losses = []
        for b in range(steps_per_epoch):
            if STOP.is_set():
                raise TrainingStopped("the run was interrupted")
            # Rows are gathered and normalised per batch: the split itself stays compact on the host.
            positions = keep[order[b * batch : (b + 1) * batch]]
            xb = to_device(dataset.batch("train", positions), device)
            yb = to_device(labels[positions], device)
            if config.augment:
                xb = _augment(xb, gen)
            _set_lr(optimizer, _lr_at(config, step, total_steps))
            losses.append(_step(model, optimizer, xb, yb, config, extra_loss, dtype, scaler))
            step += 1
        # One device sync per epoch, not per step, so the GPU is not left idle waiting for Python.
        epoch_loss = float(torch.stack(losses).double().mean())
        if progress is not None:
            progress(epoch + 1, epochs, epoch_loss)
        if not math.isfinite(epoch_loss):
            return epoch + 1, epoch_loss  # diverged: more epochs would only burn time
    return epochs, epoch_loss


def _step(model, optimizer, xb, yb, config: TrainConfig, extra_loss, dtype, scaler) -> torch.Tensor:
    """One optimiser step; returns the batch's data loss, detached (still on the device)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(xb.device.type, dtype=dtype, enabled=dtype is not None):
        data_loss = F.cross_entropy(model(xb), yb, label_smoothing=config.label_smoothing)
        loss = data_loss + extra_loss(model) if extra_loss is not None else data_loss
    if scaler is not None:  # fp16 gradients underflow without loss scaling; bf16 needs none
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return data_loss.detach().float()


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # BN scales/shifts and biases are 1-D; decaying them only hurts accuracy.
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    nesterov = config.momentum > 0  # torch rejects nesterov without momentum
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=nesterov)


def _lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    if config.schedule == "constant" or total_steps <= 1:
        return config.lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * step / total_steps))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by _PAD pixels, then random horizontal flip, per sample."""
    b, _, h, w = xb.shape
    padded = F.pad(xb, (_PAD, _PAD, _PAD, _PAD))
    dy = torch.randint(0, 2 * _PAD + 1, (b, 1), generator=gen).to(xb.device)
    dx = torch.randint(0, 2 * _PAD + 1, (b, 1), generator=gen).to(xb.device)
    rows = dy + torch.arange(h, device=xb.device)  # (b, h)
    cols = dx + torch.arange(w, device=xb.device)  # (b, w)
    batch_idx = torch.arange(b, device=xb.device)[:, None, None]
    # Advanced indexing yields (b, h, w, c); move channels back to dim 1.
    cropped = padded.permute(0, 2, 3, 1)[batch_idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=gen) < 0.5).to(xb.device)
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped).contiguous()


def _subset_indices(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A deterministic, per-class share of the training split (every class keeps at least one)."""
    if share >= 1:
        return np.arange(len(labels))
    rng = np.random.default_rng([2, seed % 2**63])
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picked.append(rng.permutation(idx)[: max(1, round(len(idx) * share))])
    return np.sort(np.concatenate(picked))


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
