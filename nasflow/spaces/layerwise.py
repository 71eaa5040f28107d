"""`layerwise` space: one searchable layer per layer of each stage, the same block choices per layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from ..arch import ACTIVATIONS, Arch, Block, BlockShape, block_shapes, format_arch, parse_arch
from ..arch.counting import head_size
from ..arch.operators import Operator, block_operator, head_operator, null_operator, stem_operator
from ..errors import ArchError
from ..hookspecs import hookimpl
from ..plugin_api import Decision, Geometry, Genome, PluginOptions, SearchSpace, Supernet, SupernetLayer
from ._operators import OperatorSet


class StageOptions(PluginOptions):
    channels: int = Field(gt=0)
    layers: int = Field(gt=0, le=16)
    stride: Literal[1, 2] = 1


class LayerwiseOptions(PluginOptions):
    stem_channels: int = Field(16, gt=0)
    stem_stride: Literal[1, 2] = 1
    stages: list[StageOptions] = Field(
        default_factory=lambda: [
            StageOptions(channels=16, layers=1, stride=1),
            StageOptions(channels=24, layers=2, stride=2),
            StageOptions(channels=32, layers=2, stride=2),
        ],
        min_length=1,
    )
    kinds: list[Literal["ir", "fir"]] = Field(
        default_factory=lambda: ["ir"], min_length=1, description="block kinds: inverted residual, fused inverted residual"
    )
    kernels: list[Literal[3, 5, 7]] = Field(default_factory=lambda: [3, 5], min_length=1)
    expansions: list[float] = Field(default_factory=lambda: [1.0, 3.0, 6.0], min_length=1)
    allow_skip: bool = Field(True, description="layers after the first of a stage may be skipped (identity)")
    se_ratios: list[float] = Field(default_factory=lambda: [0.0], min_length=1, description="squeeze-excite choices")
    activations: list[Literal[ACTIVATIONS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["relu"], min_length=1, description="activation choices of a block"
    )
    head_channels: int = Field(64, gt=0)


@dataclass(frozen=True)
class Slot:
    """One searchable layer: its position, the channels it is fed, and the shape its choices share."""

    layer: int
    in_channels: int
    out: int
    stride: int
    first_of_stage: bool


class LayerwiseSpace(SearchSpace):
    """One searchable layer per layer of each stage; a genome picks one block per layer.

    Every layer offers every (kind, kernel, expansion, SE, activation) block, kinds `ir` and `fir`,
    and layers after a stage's first may also be skipped. A layer's input shape never depends on
    the genome (a stage's first layer sets its width and stride and cannot be skipped), which
    gives the space a supernet form.
    """

    name = "layerwise"
    description = "per layer: kind x kernel x expansion x SE x activation (ir / fir), or skip (FBNet-style layer-wise)"
    Options = LayerwiseOptions

    def __init__(self, options: LayerwiseOptions | None = None, geometry: Geometry | None = None):
        super().__init__(options, geometry)
        cfg = self.options
        shapes = [(stage.channels, stage.stride if i == 0 else 1, i == 0) for stage in cfg.stages for i in range(stage.layers)]
        fed = [cfg.stem_channels] + [out for out, _, _ in shapes[:-1]]
        self.slots = tuple(Slot(n, cin, *shape) for n, (cin, shape) in enumerate(zip(fed, shapes)))
        self.choices: list[list[Block]] = [self._slot_choices(slot) for slot in self.slots]
        self.num_layers = len(self.choices)
        self.decisions = tuple(
            Decision(f"layer{i}", tuple(b.token() for b in choices)) for i, choices in enumerate(self.choices)
        )

    def _slot_choices(self, slot: Slot) -> list[Block]:
        """The layer's candidate blocks, in genome order (kind outermost, activation innermost)."""
        cfg = self.options
        # dict.fromkeys drops repeated config values: duplicates would make distinct genomes equal.
        choices = dict.fromkeys(
            Block(kind, kernel=k, expansion=e, out=slot.out, stride=slot.stride, se=se, act=act)
            for kind in cfg.kinds
            for k in cfg.kernels
            for e in cfg.expansions
            for se in cfg.se_ratios
            for act in cfg.activations
        )
        if cfg.allow_skip and not slot.first_of_stage:
            choices[Block("skip", out=slot.out)] = None
        return list(choices)

    def _skeleton(self, blocks: Sequence[Block]) -> Arch:
        cfg = self.options
        return Arch(stem=cfg.stem_channels, stem_stride=cfg.stem_stride, blocks=tuple(blocks), head=cfg.head_channels)

    def _reference(self) -> Arch:
        """An architecture with every layer's shape: each layer's first choice (never a skip)."""
        return self.to_arch((0,) * self.num_layers)

    def to_arch(self, genome: Sequence[int]) -> Arch:
        genome = self.validate_genome(genome)
        return self._skeleton([choices[i] for i, choices in zip(genome, self.choices)])

    def from_arch(self, arch: Arch | str) -> Genome:
        """Genome of an arch of this space; ArchError if the arch is not in it."""
        if isinstance(arch, str):
            arch = parse_arch(arch)
        if self._skeleton(arch.blocks) != arch:
            raise ArchError(f"arch {format_arch(arch)!r} has a stem or head that differs from the space")
        if len(arch.blocks) != self.num_layers:
            raise ArchError(f"arch has {len(arch.blocks)} blocks, the space has {self.num_layers} layers")
        genome = []
        for layer, (block, choices) in enumerate(zip(arch.blocks, self.choices)):
            if block not in choices:
                raise ArchError(f"block {block.token()!r} is not a choice of layer {layer}")
            genome.append(choices.index(block))
        return tuple(genome)

    def lut_ops(self, geometry: Geometry | None = None) -> list[Operator]:
        """Every layer position has one input shape (see the class docs), so the operators are each
        layer's choices at that shape, plus the stem, the head and the `null` entry."""
        g = geometry or self.geometry
        reference = self._reference()
        ops = OperatorSet()
        ops.add(null_operator(g.in_channels, g.image_size, g.batch_size))
        ops.add(stem_operator(reference, g.in_channels, g.image_size, g.batch_size))
        for choices, shape in zip(self.choices, block_shapes(reference, g.in_channels, g.image_size)):
            for block in choices:
                ops.add(block_operator(block, BlockShape(shape.in_channels, shape.in_size, block.out_size(shape.in_size)), g.batch_size))
        # Every genome's last layer keeps the reference's width and stride, so the head sees one shape.
        size = head_size(reference, g.in_channels, g.image_size)
        ops.add(head_operator(reference, reference.last_channels, g.num_classes, size, g.batch_size))
        return ops.operators()

    def cheapest_genome(self) -> Genome:
        """The cheapest choice per layer by the block's own MACs (layer shapes do not depend on the genome)."""
        g = self.geometry
        shapes = block_shapes(self._reference(), g.in_channels, g.image_size)
        genome = []
        for choices, shape in zip(self.choices, shapes):
            costs = [(b.macs(BlockShape(shape.in_channels, shape.in_size, b.out_size(shape.in_size))), j) for j, b in enumerate(choices)]
            genome.append(min(costs)[1])
        return tuple(genome)

    def supernet(self) -> Supernet:
        skeleton = self._reference()
        layers = tuple(SupernetLayer(i, i, tuple(choices)) for i, choices in enumerate(self.choices))
        return Supernet(skeleton, layers)


@hookimpl
def nasflow_search_spaces():
    return [LayerwiseSpace]
