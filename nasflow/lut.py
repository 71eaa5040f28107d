"""Per-operator latency lookup tables (FBNet-style), measured on a device and kept in the registry.

A layer-wise space has few distinct operators: the stem, every block choice at every layer
position (its input shape is fixed: spatial size by the strides before it, input channels by the
previous stage's width, since a skip keeps the channel count), and the head (optional 1x1 conv,
global pooling, optional fc, classifier). Each is timed once on its own with the device's
`measure_model`; an architecture's LUT latency is the sum of the entries of its operators (skip
layers add none). Which operator a block is, and its key, is the block kind's business
(`nasflow.arch.operators`, `Block.lut_key`).

Keys
----
``op_key`` is the canonical layer token followed by ``@<input channels>``::

    stem_c16_s1@3          3x3 stem conv + BN + act fed 3 channels
    ir_k5_e3_c24_s2@16     inverted residual fed 16 channels
    head_c64_n10@24        head conv + BN + act + pool + linear to 10 classes, fed 24 channels
    null@3                 an identity model on the network's input: the runtime's fixed cost
                           of one call, which every other entry also contains once

The ``null`` entry is not an operator of any architecture (`arch_ops` never lists it); it lets a
predictor take the per-call overhead out of each entry and count it once per model.

A table maps ``(op_key, input_shape)`` to the median in milliseconds, where ``input_shape`` is the
registry's text form ``"1x16x8x8"`` (batch first, the batch the device times with).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .arch import Block
from .arch.operators import (
    LutKey,
    Operator,
    arch_lut_keys,
    arch_operators,
    head_key,
    null_key,
    null_operator,
    shape_str,
    stem_key,
)
from .errors import DeviceError, NasflowError
from .fingerprint import fingerprint_hash

if TYPE_CHECKING:
    from torch import nn

    from .plugin_api import DeviceBackend, Measurement
    from .registry import Registry
    from .plugin_api import SearchSpace

LutOp = Operator
"""One distinct operator of a space at one input shape (batch first); see `nasflow.arch.operators`."""

Progress = Callable[[int, int], None]

__all__ = [
    "AGREEMENT", "LutKey", "LutOp", "PassResults", "arch_op_details", "confirmed", "measure_passes", "arch_ops", "block_token", "build_lut", "device_batch_size",
    "device_fingerprint_hash", "fastest_of_passes", "head_key", "load_or_build_lut", "lut_entries",
    "measure_ops", "null_key", "null_op", "op_key", "shape_str", "stem_key", "stored_lut",
]


def block_token(block: Block) -> str:
    """Canonical architecture-string token of one block (``ir_k3_e6_c24_s2``, ``skip_c24``)."""
    return block.token()


def op_key(block: Block, in_channels: int) -> str:
    """Canonical LUT key of a block fed `in_channels` channels, e.g. ``ir_k5_e3_c24_s2@16``."""
    key = block.lut_key(in_channels)
    if key is None:
        raise NasflowError(f"block {block.token()!r} executes nothing and has no LUT key")
    return key


def null_op(in_channels: int, image_size, batch_size: int = 1) -> LutOp:
    """The identity model on the network's input: what one call costs the runtime by itself."""
    return null_operator(in_channels, image_size, batch_size)


def arch_op_details(arch, in_channels: int, num_classes: int, image_size, batch_size: int = 1) -> list[LutOp]:
    """The operators an architecture executes, in order (skip layers contribute nothing)."""
    return arch_operators(arch, in_channels, num_classes, image_size, batch_size)


def arch_ops(arch, in_channels: int, num_classes: int, image_size, batch_size: int = 1) -> list[LutKey]:
    """LUT keys ``(op_key, "1x16x8x8")`` of an architecture's operators, in order."""
    return arch_lut_keys(arch, in_channels, num_classes, image_size, batch_size)


def lut_entries(
    space: "SearchSpace", in_channels: int, num_classes: int, image_size, batch_size: int = 1
) -> list[LutOp]:
    """Every distinct (operator, input shape) any architecture of `space` can execute, the `null`
    entry (the runtime's per-call cost, see the module docs) first: the space's `lut_ops`."""
    from .plugin_api import Geometry

    return space.lut_ops(Geometry(in_channels, num_classes, image_size, batch_size))


# ---------------------------------------------------------------- measuring and storing


def device_batch_size(device: "DeviceBackend") -> int:
    """Batch size the device times with (its `batch_size` option, else 1)."""
    return int(getattr(device.options, "batch_size", 1) or 1)


def device_fingerprint_hash(device: "DeviceBackend") -> str:
    return fingerprint_hash(device.fingerprint())


AGREEMENT = 0.05
"""Passes of one job confirm each other when the second-fastest median is within 5 % of the fastest."""


@dataclass
class PassResults:
    """Every pass of a batch of jobs: the kept (fastest) measurement of each and what backs it."""

    best: list["Measurement"]
    passes_ms: list[list[float]]  # per job, the median of every pass, in the order taken
    unconfirmed: list[int]  # jobs whose two fastest passes still disagree (see `confirmed`)
    extra_passes: int  # passes measured beyond the first `passes`, over the disagreeing jobs


def confirmed(medians_ms: Sequence[float], tolerance: float = AGREEMENT) -> bool:
    """Whether the two fastest of several pass medians agree within `tolerance` (False for one pass).

    The fastest pass is kept; a second, independent pass within `tolerance` of it says that it
    was not a lucky outlier and that the machine ran at that speed at least twice.
    """
    if len(medians_ms) < 2:
        return False
    first, second = sorted(medians_ms)[:2]
    return second <= first * (1.0 + tolerance)


def measure_passes(
    device: "DeviceBackend",
    jobs: Sequence[tuple["nn.Module", tuple[int, ...]]],
    passes: int = 1,
    progress: Progress | None = None,
    describe_error: Callable[[int, NasflowError], NasflowError] | None = None,
    retries: int = 0,
    tolerance: float = AGREEMENT,
) -> PassResults:
    """Measure every (model, input shape) `passes` times, interleaved; keep each one's fastest median.

    On a shared machine one measurement can fall entirely inside a slow phase of the host (see
    nasflow.timing); passes spread over the whole batch make it unlikely that all of them do.
    Then, up to `retries` times, the jobs whose two fastest passes disagree by more than
    `tolerance` get one more pass each, interleaved among themselves, until they agree.
    The device's `prepare` runs first (litert converts every model up front, in parallel).
    A failure propagates, rewritten by `describe_error(index, exc)` when given.
    """
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    if retries < 0:
        raise ValueError(f"retries must be at least 0, got {retries}")
    device.prepare(jobs)
    best: list[Measurement | None] = [None] * len(jobs)
    medians: list[list[float]] = [[] for _ in jobs]
    total, done = passes * len(jobs), 0
    if progress is not None:
        progress(0, total)

    def one_pass(indexes: Sequence[int]) -> None:
        nonlocal done
        for i in indexes:
            model, shape = jobs[i]
            try:
                m = device.measure_model(model, shape)
            except NasflowError as exc:
                if describe_error is None:
                    raise
                raise describe_error(i, exc) from exc
            medians[i].append(float(m.stats.median_ms))
            current = best[i]
            if current is None or m.stats.median_ms < current.stats.median_ms:
                best[i] = m
            done += 1
            if progress is not None and done < total:  # the end is reported once, after any retries
                progress(done, total)

    for _ in range(passes):
        one_pass(range(len(jobs)))
    extra = 0
    while passes > 1 and extra < retries:
        open_ = [i for i in range(len(jobs)) if not confirmed(medians[i], tolerance)]
        if not open_:
            break
        total += len(open_)
        one_pass(open_)
        extra += 1
    if progress is not None:
        progress(done, total)
    unconfirmed = [i for i in range(len(jobs)) if passes > 1 and not confirmed(medians[i], tolerance)]
    return PassResults([m for m in best if m is not None], medians, unconfirmed, extra)


def fastest_of_passes(
    device: "DeviceBackend",
    jobs: Sequence[tuple["nn.Module", tuple[int, ...]]],
    passes: int = 1,
    progress: Progress | None = None,
    describe_error: Callable[[int, NasflowError], NasflowError] | None = None,
    retries: int = 0,
) -> list["Measurement"]:
    """The fastest measurement of each job over `passes` interleaved passes (see `measure_passes`)."""
    return measure_passes(device, jobs, passes, progress, describe_error, retries).best


def measure_ops(
    device: "DeviceBackend", ops: Sequence[LutOp], progress: Progress | None = None, passes: int = 1
) -> list[dict[str, Any]]:
    """Time each operator on `device` (fastest of `passes`); registry `lut` rows, one per operator, in order."""

    def describe(index: int, exc: NasflowError) -> NasflowError:
        op = ops[index]
        return DeviceError(f"{device.name}: timing LUT operator {op.key} ({op.shape}) failed: {exc}")

    jobs = [(op.module(), op.input_shape) for op in ops]
    # Operators whose passes disagree get up to `passes` more: a LUT entry is the base of every prediction.
    measurements = fastest_of_passes(device, jobs, passes, progress, describe_error=describe, retries=passes)
    return [
        {
            "device": device.name,
            "fingerprint_hash": fingerprint_hash(m.fingerprint),
            "op_key": op.key,
            "input_shape": op.shape,
            "median_ms": float(m.stats.median_ms),
            "p90_ms": float(m.stats.p90_ms),
            "runs": int(m.stats.runs),
            "source": "measured",
            "fingerprint": m.fingerprint,
        }
        for op, m in zip(ops, measurements)
    ]


def build_lut(
    device: "DeviceBackend",
    space: "SearchSpace",
    in_channels: int,
    num_classes: int,
    image_size,
    progress: Progress | None = None,
    passes: int = 1,
) -> list[dict[str, Any]]:
    """Measure every operator of the space on the device (fastest of `passes`); registry `lut` rows."""
    ops = lut_entries(space, in_channels, num_classes, image_size, device_batch_size(device))
    return measure_ops(device, ops, progress, passes)


def stored_lut(registry: "Registry", device_name: str, fp_hash: str) -> dict[LutKey, float]:
    """Every LUT entry the registry holds for one device fingerprint."""
    _, rows = registry.query(
        "SELECT op_key, input_shape, median_ms FROM lut WHERE device = ? AND fingerprint_hash = ?",
        [device_name, fp_hash],
    )
    return {(key, shape): float(ms) for key, shape, ms in rows}


def load_or_build_lut(
    registry: "Registry",
    device: "DeviceBackend",
    space: "SearchSpace",
    in_channels: int,
    num_classes: int,
    image_size,
    refresh: bool = False,
    progress: Progress | None = None,
    passes: int = 1,
) -> tuple[dict[LutKey, float], bool]:
    """The space's LUT for the device's current fingerprint: reused from the registry when complete.

    Missing operators (all of them with `refresh`) are measured and stored; returns the table
    (``(op_key, input_shape) -> median_ms`` for every operator of the space) and whether anything
    was measured.
    """
    ops = lut_entries(space, in_channels, num_classes, image_size, device_batch_size(device))
    stored = {} if refresh else stored_lut(registry, device.name, device_fingerprint_hash(device))
    missing = [op for op in ops if op.lut_key not in stored]
    if missing:
        rows = measure_ops(device, missing, progress, passes)
        registry.add_lut(rows, replace=refresh)
        stored.update({(r["op_key"], r["input_shape"]): r["median_ms"] for r in rows})
    elif progress is not None:
        progress(len(ops), len(ops))
    return {op.lut_key: stored[op.lut_key] for op in ops}, bool(missing)
