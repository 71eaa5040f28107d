"""Channel groups: the channels of an architecture that live or die together (MorphNet's unit of pruning).

Two sorts:

- inner groups, named by the block kinds (`Block.prunable`): the expanded (mid) channels of an
  ``ir`` block with an expand conv and of a ``fir`` block, gated by one BatchNorm of the block;
  the head's 1x1 conv channels are one more;
- shared widths (``residual_widths``): a feature map's channels from the layer that produces
  them (the stem or a block) through every block that adds to them (identity shortcuts) or
  passes them on (``skip``), up to the block or head that reads them. Residual adds tie them, so
  they shrink together; each contributing layer's output BatchNorm is a gate, and so is the
  BatchNorm after a reader's depthwise conv on them; a channel is alive while any of its gates
  is (the largest |gamma|, as MorphNet groups added tensors).

A width is never given a value that would change the network's structure: a block turning
residual (its input reaching its output width), an ``ir`` block losing its expand conv (its mid
width reaching its input width). Those values are each group's `avoid`. Blocks reading a shared
width have the widths that follow their input (``e``, ``se``) written out, so only the shared
channels change. Grouped convs tie widths to their groups: a shared width touching one is fixed.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...arch import Arch
from ...errors import ArchError

if TYPE_CHECKING:
    import torch
    from torch import nn

SHARED = "out"
"""`ChannelGroup.field` of a shared width."""


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that live or die together: inside one block (index), the head (None), or a shared width."""

    block: int | None  # inner: the block; shared: the producing block, None for the stem
    width: int
    can_vanish: bool  # residual blocks may turn into skip layers
    field: str = "head"  # inner: the record field that sets the width; SHARED for a shared width
    gate: str = "head_bn"  # the BatchNorm gating the channels (the producer's, for a shared width)
    avoid: tuple[int, ...] = ()  # widths the group must not take (they would change the structure)
    members: tuple[int, ...] = ()  # shared: the blocks whose output is these channels, the producer first
    gates: tuple[str, ...] = ()  # shared: module paths of every BatchNorm writing the channels

    @property
    def shared(self) -> bool:
        return self.field == SHARED

    @property
    def name(self) -> str:
        if self.shared:
            return "stem" if self.block is None else f"blocks.{self.block}.out"
        if self.block is None:
            return "head"
        return f"blocks.{self.block}" if self.field == "mid" else f"blocks.{self.block}.{self.field}"


def block_inputs(arch: Arch) -> list[int]:
    """The input channels of every block."""
    inputs, channels = [], arch.stem
    for block in arch.blocks:
        inputs.append(channels)
        channels = block.out
    return inputs


def channel_groups(arch: Arch, residual_widths: bool = True) -> list[ChannelGroup]:
    """Prunable groups of an arch: the inner ones, blocks in order, then the head conv; then the shared widths."""
    return list(_groups(arch, residual_widths))


@functools.lru_cache(maxsize=256)  # the budget bisection asks for the same architecture's groups at every probe
def _groups(arch: Arch, residual_widths: bool) -> tuple[ChannelGroup, ...]:
    groups, inputs = [], block_inputs(arch)
    for index, (block, channels) in enumerate(zip(arch.blocks, inputs)):
        for g in block.prunable(channels):
            groups.append(ChannelGroup(index, g.width, g.can_vanish, g.field, g.gate, g.avoid))
    if arch.head is not None:
        groups.append(ChannelGroup(None, arch.head, False))
    if residual_widths:
        groups += _shared_widths(arch, inputs)
    return tuple(groups)


def _shared_widths(arch: Arch, inputs: list[int], only: int | None | str = "all") -> list[ChannelGroup]:
    """The shared groups (`only`: just the one written by that producer, None for the stem's)."""
    groups: list[ChannelGroup] = []
    producer: int | None = None  # None: the stem
    members: list[int] = []
    runs = []
    for index, (block, channels) in enumerate(zip(arch.blocks, inputs)):
        if block.passes_input(channels):
            members.append(index)
            continue
        runs.append((producer, members, index))
        producer, members = index, [index]
    runs.append((producer, members, None))
    for producer, members, reader in runs:
        if only == "all" or only == producer:
            groups += _shared_group(arch, producer, members, reader)
    return groups


def shared_group(arch: Arch, group: ChannelGroup) -> ChannelGroup:
    """`group`'s shared width as it stands in `arch` (whose other widths may have changed), avoid included."""
    for found in _shared_widths(arch, block_inputs(arch), only=group.block):
        return found
    raise KeyError(group.name)


def _shared_group(arch: Arch, producer: int | None, members: list[int], reader: int | None) -> list[ChannelGroup]:
    """The group of one shared width, or none where a grouped conv (or a layer without an output BN) fixes it."""
    touching = members + ([reader] if reader is not None else [])
    if not all(arch.blocks[i].resizable_io() for i in touching):
        return []
    width = arch.stem if producer is None else arch.blocks[producer].out
    gates = [] if producer is not None else ["stem_bn"]
    for i in members:
        gate = arch.blocks[i].output_gate
        if gate is None and i == producer:
            return []
        if gate is not None:
            gates.append(f"blocks.{i}.{gate}")
    for i in touching:
        if i != producer:  # depthwise layers of the readers carry the same channels
            gates += [f"blocks.{i}.{g}" for g in arch.blocks[i].input_gates(width)]
    first = ChannelGroup(producer, width, False, SHARED, gates[0].rsplit(".", 1)[-1], (), tuple(members), tuple(gates))
    return [dataclasses.replace(first, avoid=_structural_widths(arch, first))]


def _structure(arch: Arch) -> tuple:
    """What resizing must keep: every block's kind, residual add, inner groups and pass-through."""
    return tuple(
        (block.kind, block.residual(cin), block.passes_input(cin), tuple(g.field for g in block.prunable(cin)))
        for block, cin in zip(arch.blocks, block_inputs(arch))
    )


def _structural_widths(arch: Arch, group: ChannelGroup) -> tuple[int, ...]:
    """Widths of a shared group that would change the structure (only widths already in the arch can)."""
    widths = {arch.stem, *(b.out for b in arch.blocks), *(arch.head or 0,)}
    for block, cin in zip(arch.blocks, block_inputs(arch)):
        widths.update(g.width for g in block.prunable(cin))
    reference, avoid = _structure(arch), []
    for width in sorted(widths - {group.width, 0}):
        try:
            changed = _structure(with_width(arch, group, width)) != reference
        except ArchError:
            changed = True
        if changed:
            avoid.append(width)
    return tuple(avoid)


def with_width(arch: Arch, group: ChannelGroup, width: int) -> Arch:
    """`arch` with the group at `width` (readers of a shared width keep their own inner widths)."""
    if not group.shared:
        if group.block is None:
            return dataclasses.replace(arch, head=width)
        blocks = list(arch.blocks)
        blocks[group.block] = blocks[group.block].with_width(group.field, width)
        return dataclasses.replace(arch, blocks=tuple(blocks))
    blocks, inputs = list(arch.blocks), block_inputs(arch)
    last = group.members[-1] if group.members else -1
    readers = [i for i in group.members if i != group.block] + ([last + 1] if last + 1 < len(blocks) else [])
    for i in readers:
        blocks[i] = blocks[i].pinned(inputs[i])
    for i in group.members:
        blocks[i] = dataclasses.replace(blocks[i], out=width)
    stem = width if group.block is None else arch.stem
    return dataclasses.replace(arch, stem=stem, blocks=tuple(blocks))


def gate(model: "nn.Module", group: ChannelGroup) -> "nn.BatchNorm2d":
    """The BatchNorm gating the group (a shared width's producer's)."""
    if group.shared:
        return model.get_submodule(group.gates[0])
    return model.head_bn if group.block is None else getattr(model.blocks[group.block], group.gate)


def gate_scales(model: "nn.Module", group: ChannelGroup) -> "torch.Tensor":
    """|gamma| of each channel (differentiable): a shared width's channel takes its largest gate's."""
    import torch

    if not group.shared:
        return gate(model, group).weight.abs()
    return torch.stack([model.get_submodule(path).weight.abs() for path in group.gates]).amax(0)
