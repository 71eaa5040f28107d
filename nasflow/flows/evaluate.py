"""Candidate work shared by the stages: training tasks (fanned out) and device measurement (serial)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE

from ..config import DatasetConfig, TrainConfig
from ..data import load_dataset
from ..errors import DeviceError, NasflowError
from ..plugin_api import DeviceBackend, Measurement
from ..plugins import get_plugins
from ..progress import ProgressChannel, reporter
from ..space import Arch, arch_hash, build_model, count_arch_params, count_macs, format_arch, parse_arch, validate_arch
from ..train import stop_training_on_interrupt
from ..train_device import resolve_device


def threads_per_task(workers: int) -> int:
    """Intra-op threads for one training task so that `workers` concurrent tasks share the cores."""
    return max(1, (os.cpu_count() or 1) // workers)


def describe_error(exc: BaseException) -> str:
    """One line for the registry's `error` column: our own errors as they are, others with their type."""
    if isinstance(exc, NasflowError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


_INIT_LOCK = threading.Lock()


def model_for(arch: Arch, dataset_cfg: DatasetConfig, seed: int = 0) -> torch.nn.Module:
    """Build `arch` with weights initialised from `seed` and the architecture alone.

    Initialisation draws from torch's global generator, which threads share: the lock and the
    forked RNG make the weights independent of which worker built the model, and when.
    """
    data = load_dataset(dataset_cfg)
    arch_seed = int(hashlib.sha256(f"{seed}/{format_arch(arch)}".encode()).hexdigest()[:8], 16)
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(arch_seed)
        return build_model(arch, data.in_channels, data.num_classes)


def arch_costs(arch: Arch, dataset_cfg: DatasetConfig) -> dict[str, int]:
    """Parameters and MACs of `arch` on the dataset, counted analytically (no model is built)."""
    data = load_dataset(dataset_cfg)
    validate_arch(arch, data.in_channels)  # the same ArchError build_model would raise
    return {
        "params": count_arch_params(arch, data.in_channels, data.num_classes),
        "macs": count_macs(arch, data.in_channels, data.num_classes, data.image_size),
    }


def train_one(
    arch: str,
    dataset_cfg: DatasetConfig,
    train_cfg: TrainConfig,
    epochs: int,
    subset: float,
    checkpoint: str | None = None,
    test: bool = False,
    progress: ProgressChannel | None = None,
    device: str = "auto",
    amp: bool = False,
) -> dict[str, Any]:
    """Train one architecture (proxy or full) on `device` (an `execution.device` value, resolved
    here, in the worker) and return its validation metrics (and test accuracy with `test`:
    proxies never look at the test split); the checkpoint holds CPU tensors; never raises.

    With `progress`, each finished epoch advances that stage; `epochs_reported` in the result
    says how many advances reached it (0 in another process: the stage catches up on the result).
    """
    from ..train import cpu_state_dict, evaluate, train_model

    start = time.perf_counter()
    reported = 0

    def on_epoch(done: int, total: int, loss: float) -> None:
        nonlocal reported
        if progress is not None and progress.advance(1, f"{arch_hash(arch)[:8]} epoch {done}/{total}, loss {loss:.3g}"):
            reported += 1

    try:
        data = load_dataset(dataset_cfg)
        target = resolve_device(device)
        model = model_for(parse_arch(arch), dataset_cfg, train_cfg.seed)
        result = train_model(
            model, data, train_cfg, epochs=epochs, subset=subset, progress=on_epoch, device=target, amp=amp
        )
        test_accuracy = evaluate(model, data, split="test")[0] if test else None
        if checkpoint:
            Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
            torch.save(cpu_state_dict(model), checkpoint)
    except Exception as exc:  # one bad candidate must not stop the search
        return {"arch": arch, "error": describe_error(exc), "train_seconds": time.perf_counter() - start,
                "epochs_reported": reported}
    return {
        "arch": arch,
        "error": None,
        "epochs_reported": reported,
        "accuracy": result.val_accuracy,
        "test_accuracy": test_accuracy,
        "val_loss": result.val_loss,
        "train_epochs": result.epochs,
        "train_seconds": result.seconds,
        "train_device": str(target),
    }


@task(name="train-candidates", cache_policy=NO_CACHE, persist_result=False)
def train_candidates(
    archs: list[str],
    dataset_cfg: DatasetConfig,
    train_cfg: TrainConfig,
    epochs: int,
    subset: float,
    threads: int,
    checkpoints: list[str | None] | None = None,
    test: bool = False,
    progress: ProgressChannel | None = None,
    device: str = "auto",
    amp: bool = False,
) -> list[dict[str, Any]]:
    """Train a chunk of architectures one after another on one worker; results in input order."""
    torch.set_num_threads(threads)
    checkpoints = checkpoints or [None] * len(archs)
    return [
        train_one(a, dataset_cfg, train_cfg, epochs, subset, c, test, progress, device, amp)
        for a, c in zip(archs, checkpoints)
    ]


def train_in_parallel(
    archs: list[str],
    dataset_cfg: DatasetConfig,
    train_cfg: TrainConfig,
    epochs: int,
    subset: float,
    workers: int,
    checkpoints: list[str | None] | None = None,
    test: bool = False,
    progress: ProgressChannel | None = None,
    device: str = "auto",
    amp: bool = False,
) -> list[dict[str, Any]]:
    """Fan `archs` out over the flow's task runner as one task per worker, not per candidate.

    A Prefect task run costs milliseconds of orchestration (API calls, state changes); chunking
    keeps that per-batch, so cheap candidates are not dominated by it. Results keep input order.
    `progress` is advanced once per finished epoch (see `train_one`).
    `device` travels as the spec's string: each worker resolves it (a process or Dask worker
    may see other GPUs than the flow's process).
    """
    if not archs:
        return []
    checkpoints = checkpoints or [None] * len(archs)
    chunks = [list(range(i, len(archs), workers)) for i in range(min(workers, len(archs)))]
    futures = train_candidates.map(
        [[archs[i] for i in chunk] for chunk in chunks],
        unmapped(dataset_cfg),
        unmapped(train_cfg),
        unmapped(epochs),
        unmapped(subset),
        unmapped(threads_per_task(workers)),
        [[checkpoints[i] for i in chunk] for chunk in chunks],
        unmapped(test),
        unmapped(progress),
        unmapped(device),
        unmapped(amp),
    )
    results: list[dict[str, Any]] = [{}] * len(archs)
    with stop_training_on_interrupt():
        for chunk, future in zip(chunks, futures):
            for index, result in zip(chunk, future.result()):
                results[index] = result
    return results


def make_devices(device_cfgs) -> dict[str, DeviceBackend]:
    plugins = get_plugins()
    return {cfg.name: plugins.create("device", cfg.name, cfg.options) for cfg in device_cfgs}


def timing_passes(device: DeviceBackend) -> int:
    """How many separate measurements `device` takes of each model (its `passes` option; 1 without)."""
    return int(getattr(device.options, "passes", 1))


def fastest_on_each_device(
    devices: dict[str, DeviceBackend], measure: Callable[[DeviceBackend], Measurement]
) -> tuple[list[Measurement], dict[str, str]]:
    """Measure on every device `passes` times, round-robin over the devices; per device the fastest.

    A slow phase of a shared machine can last longer than one measurement; measurements spread
    over time and interleaved with the other devices' fall in different phases, and the fastest
    median is the uncontended one (the rule the LUT follows with `profile.passes`). The kept
    measurement lists every pass's median in `extra["passes_ms"]`. A device that fails is
    dropped, with its reason in the returned {device: reason}; the others go on.
    """
    passes = {name: timing_passes(device) for name, device in devices.items()}
    medians: dict[str, list[float]] = {}
    best: dict[str, Measurement] = {}
    failures: dict[str, str] = {}
    for index in range(max(passes.values(), default=0)):
        for name, device in devices.items():
            if index >= passes[name] or name in failures:
                continue
            try:
                m = measure(device)
            except Exception as exc:
                failures[name] = describe_error(exc)
                best.pop(name, None)  # a device that fails part-way has no number to trust
                continue
            medians.setdefault(name, []).append(m.stats.median_ms)
            if name not in best or m.stats.median_ms < best[name].stats.median_ms:
                best[name] = m
    kept = [
        replace(best[name], extra={**best[name].extra, "passes_ms": medians[name]})
        for name in devices if name in best
    ]
    return kept, failures


def measure_everywhere(
    devices: dict[str, DeviceBackend], model: torch.nn.Module, input_shape: tuple[int, ...]
) -> tuple[list[Measurement], dict[str, str]]:
    """Time `model` on every device, one measurement at a time, so no two timings share the cores;
    each device's `passes` measurements interleaved with the other devices', the fastest kept.

    Returns the measurements taken and {device: reason} of the devices that failed; one device
    failing does not stop the others.
    """
    return fastest_on_each_device(devices, lambda device: device.measure_model(model, input_shape))


def measure_artifact_everywhere(
    devices: dict[str, DeviceBackend], path: str, fmt: str, input_shape: tuple[int, ...]
) -> tuple[list[Measurement], dict[str, str]]:
    """Time a deployed file on every device that runs its format, by the rules of `measure_everywhere`;
    returns the measurements and {device: reason} of the devices that failed."""
    runs = {name: device for name, device in devices.items() if fmt in device.artifact_formats}
    return fastest_on_each_device(runs, lambda device: device.measure_artifact(path, fmt, input_shape))


def prepare_everywhere(
    devices: dict[str, DeviceBackend], jobs: list[tuple[torch.nn.Module, tuple[int, ...]]]
) -> None:
    """Let every device get ready for a batch before it is timed (litert converts it in parallel).

    A device whose `prepare` fails is only reported: its models are then handled one by one by
    `measure_model`, which records each model's own failure.
    """
    if not jobs:
        return
    for name, device in devices.items():
        try:
            device.prepare(jobs)
        except Exception as exc:  # a third-party device's bug must not fail the batch
            reporter().message(f"{name}: preparing {len(jobs)} models failed ({describe_error(exc)}); measuring one by one")


def latency_on(measurements: list[Measurement], device: str) -> float | None:
    for m in measurements:
        if m.device == device:
            return m.stats.median_ms
    return None
