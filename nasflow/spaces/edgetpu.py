"""`edgetpu` space: a layer-wise space filtered through a device's operator support, as
MobileNetEdgeTPU was searched (fused and plain inverted residuals, ReLU, no squeeze-excite).

The base is the `layerwise` space (its options, with Edge TPU defaults); every candidate block
of every layer is asked of the target device (`DeviceBackend.op_support`) and kept only at the
levels `keep` names. What the device supports is the device's to say: this module holds no list
of operators (the Edge TPU's is `nasflow.edgetpu.OP_SUPPORT`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, field_validator

from ..arch import Arch, Block, parse_arch
from ..arch.fields import format_token
from ..errors import ArchError
from ..hookspecs import hookimpl
from ..plugin_api import DeviceBackend, Genome, OpSupport
from .layerwise import LayerwiseOptions, LayerwiseSpace, Slot

KEPT_LEVELS = ("supported", "slow")
"""Levels a user may keep; `unsupported` blocks are always dropped."""


class EdgeTPUSpaceOptions(LayerwiseOptions):
    """The layer-wise space's options with MobileNetEdgeTPU's block choices, plus the filter."""

    kinds: list[Literal["ir", "fir"]] = Field(default_factory=lambda: ["fir", "ir"], min_length=1)
    expansions: list[float] = Field(default_factory=lambda: [3.0, 6.0, 8.0], min_length=1)
    device: str = Field("edgetpu-model", description="the device whose op_support filters the blocks")
    device_options: dict[str, Any] = Field(default_factory=dict, description="that device's options")
    keep: list[Literal[KEPT_LEVELS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["supported"], min_length=1,
        description="support levels kept: supported, and slow if listed; unsupported blocks are always dropped",
    )

    @field_validator("keep")
    @classmethod
    def _keeps_supported(cls, keep: list[str]) -> list[str]:
        if "supported" not in keep:
            raise ValueError("must include 'supported' (add 'slow' to keep slow blocks as well)")
        return keep


@dataclass(frozen=True)
class Dropped:
    """A candidate block the device filter removed from a layer, and the device's verdict."""

    layer: int
    block: Block
    support: OpSupport


def block_label(block: Block) -> str:
    """A block's token without its width and stride: what is the same choice in every layer."""
    return format_token(block.kind, [(k, v) for k, v in block.fields() if k not in ("c", "s")])


def _layers_text(layers: Sequence[int], total: int) -> str:
    if len(layers) == total:
        return f"all {total} layers" if total > 1 else "the only layer"
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(map(str, layers))


class EdgeTPUSpace(LayerwiseSpace):
    """The `layerwise` space with each layer's candidates filtered by a device's `op_support`.

    Defaults (MobileNetEdgeTPU's candidates, Gupta and Akin 2020, and EfficientNet-EdgeTPU's):
    kinds `fir` and `ir`, ReLU, kernels 3 and 5, expansions 3, 6 and 8, no squeeze-excite, over the
    layer-wise skeleton; device `edgetpu-model`; `keep: [supported]`. On the Edge TPU mapping that
    drops `ir` with a 5x5 depthwise kernel (slow) and, where the base offers them, squeeze-excite,
    swish and hard-swish blocks (unsupported: they and every later operator run on the host CPU).
    `notes()` says what was dropped, where and why; `problems()` names the layers the filter
    leaves without a candidate. Layer shapes do not depend on the genome, so it has a supernet
    form, as `layerwise` does.
    """

    name = "edgetpu"
    description = "layer-wise fir / ir blocks filtered by a device's operator support (MobileNetEdgeTPU-style)"
    Options = EdgeTPUSpaceOptions

    def __init__(self, options: EdgeTPUSpaceOptions | None = None, geometry=None):
        self.dropped: list[Dropped] = []  # filled while the layer-wise constructor builds the choices
        super().__init__(options, geometry)

    @cached_property
    def device(self) -> DeviceBackend:
        """The device plugin named by `device`, with its options validated (PluginError otherwise);
        only asked about blocks, so it need not be usable on this machine."""
        from ..plugins import get_plugins

        return get_plugins().create("device", self.options.device, self.options.device_options)  # type: ignore[return-value]

    def _slot_choices(self, slot: Slot) -> list[Block]:
        kept = []
        for block in super()._slot_choices(slot):
            support = self.device.op_support(block, slot.in_channels)
            if support.level in self.options.keep:
                kept.append(block)
            else:
                self.dropped.append(Dropped(slot.layer, block, support))
        return kept

    def _reference(self) -> Arch:
        """Each layer's first base choice: the shapes, also where the filter left a layer empty."""
        return self._skeleton([LayerwiseSpace._slot_choices(self, slot)[0] for slot in self.slots])

    def from_arch(self, arch: Arch | str) -> Genome:
        """As `layerwise`, and a block the filter dropped is named with the device's reason."""
        if isinstance(arch, str):
            arch = parse_arch(arch)
        for gone in self.dropped:
            if gone.layer < len(arch.blocks) and arch.blocks[gone.layer] == gone.block:
                raise ArchError(
                    f"block {gone.block.token()!r} of layer {gone.layer} was dropped for device "
                    f"{self.options.device!r} ({gone.support.level}): {gone.support.reason}"
                )
        return super().from_arch(arch)

    # --- what validation says

    def _groups(self, layers: set[int] | None = None) -> dict[tuple[str, str], dict[str, list[int]]]:
        """(level, reason) -> block label -> the layers it was dropped from (all layers, or `layers`)."""
        groups: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for gone in self.dropped:
            if layers is None or gone.layer in layers:
                groups[(gone.support.level, gone.support.reason)][block_label(gone.block)].append(gone.layer)
        return groups

    def notes(self) -> list[str]:
        cfg = self.options
        base = sum(len(LayerwiseSpace._slot_choices(self, slot)) for slot in self.slots)
        kept = sum(len(choices) for choices in self.choices)
        notes = [f"device {cfg.device!r} filter (keep: {', '.join(cfg.keep)}): {kept} of {base} candidate blocks "
                 f"kept over {self.num_layers} layers"]
        for (level, reason), labels in self._groups().items():
            where: dict[tuple[int, ...], list[str]] = defaultdict(list)
            for label, layers in labels.items():
                where[tuple(layers)].append(label)
            for layers, names in where.items():
                notes.append(f"dropped {', '.join(names)} in {_layers_text(layers, self.num_layers)} ({level}): {reason}")
        return notes

    def problems(self) -> list[str]:
        empty = [slot.layer for slot, choices in zip(self.slots, self.choices) if not choices]
        if not empty:
            return []
        cfg = self.options
        groups = self._groups(set(empty))
        verdicts = "; ".join(f"{', '.join(labels)} {level}: {reason}" for (level, reason), labels in groups.items())
        fix = "offer blocks the device supports (kinds, kernels, expansions, se_ratios, activations)"
        if any(level == "slow" for level, _ in groups):
            fix += " or keep slow ones (keep: [supported, slow])"
        return [
            f"the filter for device {cfg.device!r} (keep: {', '.join(cfg.keep)}) leaves "
            f"{_layers_text(empty, self.num_layers)} with no candidate block ({verdicts}); {fix}"
        ]


@hookimpl
def nasflow_search_spaces():
    return [EdgeTPUSpace]
