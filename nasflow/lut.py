"""Per-operator latency lookup tables (FBNet-style), measured on a device and kept in the registry.

A layer-wise space has few distinct operators: the stem, every block choice at every layer
position (its input shape is fixed: spatial size by the strides before it, input channels by the
previous stage's width, since a skip keeps the channel count), and the head (1x1 conv + BN + ReLU,
global pooling, classifier). Each is timed once on its own with the device's `measure_model`;
an architecture's LUT latency is the sum of the entries of its operators (skip layers add none).

Keys
----
``op_key`` is the canonical block token followed by ``@<input channels>``::

    stem_c16_s1@3          3x3 stem conv + BN + ReLU fed 3 channels
    ir_k5_e3_c24_s2@16     inverted residual fed 16 channels
    head_c64_n10@24        head conv + BN + ReLU + pool + linear to 10 classes, fed 24 channels
    null@3                 an identity model on the network's input: the runtime's fixed cost
                           of one call, which every other entry also contains once

The ``null`` entry is not an operator of any architecture (`arch_ops` never lists it); it lets a
predictor take the per-call overhead out of each entry and count it once per model.

A table maps ``(op_key, input_shape)`` to the median in milliseconds, where ``input_shape`` is the
registry's text form ``"1x16x8x8"`` (batch first, the batch the device times with).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeviceError, NasflowError
from .fingerprint import fingerprint_hash
from .space import (
    Arch,
    ArchNet,
    Block,
    InvertedResidual,
    LayerwiseSpace,
    block_shapes,
    format_arch,
    mid_channels,
    se_channels,
)

if TYPE_CHECKING:
    from .plugin_api import DeviceBackend, Measurement
    from .registry import Registry

LutKey = tuple[str, str]
"""(op_key, input shape as ``"1x16x8x8"``)."""

Progress = Callable[[int, int], None]


def shape_str(shape: Sequence[int]) -> str:
    """Registry text form of a shape: ``(1, 16, 8, 8)`` -> ``"1x16x8x8"``."""
    return "x".join(str(int(n)) for n in shape)


def block_token(block: Block) -> str:
    """Canonical architecture-string token of one block (``ir_k3_e6_c24_s2``, ``skip_c24``)."""
    return format_arch(Arch(stem=1, stem_stride=1, blocks=(block,), head=1)).split("-")[1]


def op_key(block: Block, in_channels: int) -> str:
    """Canonical LUT key of a block fed `in_channels` channels, e.g. ``ir_k5_e3_c24_s2@16``."""
    return f"{block_token(block)}@{int(in_channels)}"


def stem_key(stem: int, stem_stride: int, in_channels: int) -> str:
    return f"stem_c{stem}_s{stem_stride}@{in_channels}"


def head_key(head: int, num_classes: int, in_channels: int) -> str:
    return f"head_c{head}_n{num_classes}@{in_channels}"


# ---------------------------------------------------------------- operator modules


class StemOp(nn.Module):
    """The stem of ArchNet on its own: conv + BN + ReLU."""

    def __init__(self, net: ArchNet):
        super().__init__()
        self.stem_conv, self.stem_bn = net.stem_conv, net.stem_bn

    def forward(self, x):
        return F.relu(self.stem_bn(self.stem_conv(x)))


class HeadOp(nn.Module):
    """The head of ArchNet on its own: 1x1 conv + BN + ReLU, global average pool, classifier."""

    def __init__(self, net: ArchNet):
        super().__init__()
        self.head_conv, self.head_bn, self.classifier = net.head_conv, net.head_bn, net.classifier

    def forward(self, x):
        x = F.relu(self.head_bn(self.head_conv(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _stem_module(stem: int, stem_stride: int, head: int, in_channels: int, num_classes: int) -> nn.Module:
    net = ArchNet(Arch(stem=stem, stem_stride=stem_stride, blocks=(), head=head), in_channels, num_classes)
    return StemOp(net)


def _head_module(head: int, channels: int, num_classes: int) -> nn.Module:
    # An ArchNet with no blocks whose stem has `channels` outputs gives a head fed `channels`.
    net = ArchNet(Arch(stem=channels, stem_stride=1, blocks=(), head=head), channels, num_classes)
    return HeadOp(net)


@dataclass(frozen=True)
class LutOp:
    """One distinct operator of a space at one input shape (batch first)."""

    key: str
    input_shape: tuple[int, ...]
    kind: str  # "stem", "ir", "head" or "null"
    family: str  # "stem", "head", "null", "ir_expand" (has the 1x1 expansion conv) or "ir_dw" (no expansion)
    macs: int  # multiply-accumulates for one input
    activations: int  # elements of the tensors it reads and writes, intermediates included, one input
    builder: Callable[[], nn.Module] = field(repr=False, compare=False)

    @property
    def shape(self) -> str:
        """Input shape as the registry writes it (``"1x16x8x8"``)."""
        return shape_str(self.input_shape)

    @property
    def lut_key(self) -> LutKey:
        return (self.key, self.shape)

    def module(self) -> nn.Module:
        """A freshly initialised module computing just this operator."""
        return self.builder()


def _stem_op(arch: Arch, in_channels: int, num_classes: int, size: tuple[int, int], out_size, batch: int) -> LutOp:
    h, w = size
    oh, ow = out_size
    return LutOp(
        key=stem_key(arch.stem, arch.stem_stride, in_channels),
        input_shape=(batch, in_channels, h, w),
        kind="stem",
        family="stem",
        macs=oh * ow * arch.stem * in_channels * 9,
        activations=h * w * in_channels + oh * ow * arch.stem,
        builder=lambda: _stem_module(arch.stem, arch.stem_stride, arch.head, in_channels, num_classes),
    )


def _block_op(block: Block, cin: int, size: tuple[int, int], out_size: tuple[int, int], batch: int) -> LutOp:
    mid = mid_channels(block, cin)
    pin, pout = size[0] * size[1], out_size[0] * out_size[1]
    expand = mid != cin
    macs = pin * cin * mid if expand else 0
    macs += pout * mid * block.kernel * block.kernel + 2 * mid * se_channels(block, cin) + pout * mid * block.out
    activations = pin * cin + (pin * mid if expand else 0) + pout * mid + pout * block.out
    return LutOp(
        key=op_key(block, cin),
        input_shape=(batch, cin, *size),
        kind="ir",
        family="ir_expand" if expand else "ir_dw",
        macs=macs,
        activations=activations,
        builder=lambda b=block, c=cin: InvertedResidual(b, c),
    )


def _head_op(arch: Arch, channels: int, num_classes: int, size: tuple[int, int], batch: int) -> LutOp:
    pixels = size[0] * size[1]
    return LutOp(
        key=head_key(arch.head, num_classes, channels),
        input_shape=(batch, channels, *size),
        kind="head",
        family="head",
        macs=pixels * channels * arch.head + arch.head * num_classes,
        activations=pixels * (channels + arch.head) + arch.head + num_classes,
        builder=lambda hd=arch.head, c=channels: _head_module(hd, c, num_classes),
    )


def null_key(in_channels: int) -> str:
    return f"null@{in_channels}"


def null_op(in_channels: int, image_size, batch_size: int = 1) -> LutOp:
    """The identity model on the network's input: what one call costs the runtime by itself."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(n) for n in image_size)
    return LutOp(
        key=null_key(in_channels),
        input_shape=(batch_size, in_channels, *size),
        kind="null",
        family="null",
        macs=0,
        activations=0,
        builder=nn.Identity,
    )


def _stem_sizes(arch: Arch, image_size) -> tuple[tuple[int, int], tuple[int, int]]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(n) for n in image_size)
    out = tuple((n - 1) // arch.stem_stride + 1 for n in size)  # 3x3 conv, padding 1
    return size, out  # type: ignore[return-value]


def arch_op_details(
    arch: Arch, in_channels: int, num_classes: int, image_size, batch_size: int = 1
) -> list[LutOp]:
    """The operators an architecture executes, in order (skip layers contribute nothing)."""
    size, stem_out = _stem_sizes(arch, image_size)
    ops = [_stem_op(arch, in_channels, num_classes, size, stem_out, batch_size)]
    shapes = block_shapes(arch, in_channels, image_size)
    for block, shape in zip(arch.blocks, shapes):
        if block.kind != "skip":
            ops.append(_block_op(block, shape.in_channels, shape.in_size, shape.out_size, batch_size))
    last = arch.blocks[-1].out if arch.blocks else arch.stem
    last_size = shapes[-1].out_size if shapes else stem_out
    ops.append(_head_op(arch, last, num_classes, last_size, batch_size))
    return ops


def arch_ops(arch: Arch, in_channels: int, num_classes: int, image_size, batch_size: int = 1) -> list[LutKey]:
    """LUT keys ``(op_key, "1x16x8x8")`` of an architecture's operators, in order."""
    return [op.lut_key for op in arch_op_details(arch, in_channels, num_classes, image_size, batch_size)]


def lut_entries(
    space: LayerwiseSpace, in_channels: int, num_classes: int, image_size, batch_size: int = 1
) -> list[LutOp]:
    """Every distinct (operator, input shape) any architecture of `space` can execute.

    Spatial sizes depend only on strides (odd kernels, 'same' padding) and a layer's input
    channels only on the previous stage's width, so each layer position has one input shape.
    The list starts with the `null` entry (the runtime's per-call cost, see the module docs).
    """
    reference = space.to_arch((0,) * space.num_layers)  # choice 0 is never a skip
    size, stem_out = _stem_sizes(reference, image_size)
    ops: dict[LutKey, LutOp] = {}

    def add(op: LutOp) -> None:
        ops.setdefault(op.lut_key, op)

    add(null_op(in_channels, image_size, batch_size))
    add(_stem_op(reference, in_channels, num_classes, size, stem_out, batch_size))
    shapes = block_shapes(reference, in_channels, image_size)
    for choices, shape in zip(space.choices, shapes):
        for block in choices:
            if block.kind == "skip":
                continue
            out_size = tuple((n - 1) // block.stride + 1 for n in shape.in_size)
            add(_block_op(block, shape.in_channels, shape.in_size, out_size, batch_size))  # type: ignore[arg-type]
    last = reference.blocks[-1].out if reference.blocks else reference.stem
    last_size = shapes[-1].out_size if shapes else stem_out
    add(_head_op(reference, last, num_classes, last_size, batch_size))
    return list(ops.values())


# ---------------------------------------------------------------- measuring and storing


def device_batch_size(device: "DeviceBackend") -> int:
    """Batch size the device times with (its `batch_size` option, else 1)."""
    return int(getattr(device.options, "batch_size", 1) or 1)


def device_fingerprint_hash(device: "DeviceBackend") -> str:
    return fingerprint_hash(device.fingerprint())


def fastest_of_passes(
    device: "DeviceBackend",
    jobs: Sequence[tuple[nn.Module, tuple[int, ...]]],
    passes: int = 1,
    progress: Progress | None = None,
    describe_error: Callable[[int, NasflowError], NasflowError] | None = None,
) -> list["Measurement"]:
    """Measure every (model, input shape) `passes` times, interleaved; keep each one's fastest median.

    On a shared machine one measurement can fall entirely inside a slow phase of the host (see
    nasflow.timing); passes spread over the whole batch make it unlikely that all of them do.
    The device's `prepare` runs first (litert converts every model up front, in parallel).
    A failure propagates, rewritten by `describe_error(index, exc)` when given.
    """
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    device.prepare(jobs)
    best: list[Measurement | None] = [None] * len(jobs)
    total = passes * len(jobs)
    if progress is not None:
        progress(0, total)
    for p in range(passes):
        for i, (model, shape) in enumerate(jobs):
            try:
                m = device.measure_model(model, shape)
            except NasflowError as exc:
                if describe_error is None:
                    raise
                raise describe_error(i, exc) from exc
            current = best[i]
            if current is None or m.stats.median_ms < current.stats.median_ms:
                best[i] = m
            if progress is not None:
                progress(p * len(jobs) + i + 1, total)
    return [m for m in best if m is not None]


def measure_ops(
    device: "DeviceBackend", ops: Sequence[LutOp], progress: Progress | None = None, passes: int = 1
) -> list[dict[str, Any]]:
    """Time each operator on `device` (fastest of `passes`); registry `lut` rows, one per operator, in order."""

    def describe(index: int, exc: NasflowError) -> NasflowError:
        op = ops[index]
        return DeviceError(f"{device.name}: timing LUT operator {op.key} ({op.shape}) failed: {exc}")

    jobs = [(op.module(), op.input_shape) for op in ops]
    measurements = fastest_of_passes(device, jobs, passes, progress, describe_error=describe)
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
    space: LayerwiseSpace,
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
    space: LayerwiseSpace,
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
