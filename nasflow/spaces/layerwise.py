"""The layer-wise space: one searchable layer per layer of each stage, every block choice the same per layer."""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..arch import Arch, Block, format_arch, parse_arch
from ..config import SpaceConfig
from ..errors import ArchError
from ..plugin_api import Genome


@dataclass(frozen=True)
class _Slot:
    out: int
    stride: int
    first_of_stage: bool


class LayerwiseSpace:
    """One searchable layer per layer of each stage; a genome picks one Block per layer."""

    def __init__(self, config: SpaceConfig):
        self.config = config
        slots = [
            _Slot(stage.channels, stage.stride if i == 0 else 1, i == 0)
            for stage in config.stages
            for i in range(stage.layers)
        ]
        self.choices: list[list[Block]] = [self._slot_choices(slot) for slot in slots]
        self.num_layers = len(self.choices)

    def _slot_choices(self, slot: _Slot) -> list[Block]:
        cfg = self.config
        # dict.fromkeys drops repeated config values: duplicates would make distinct genomes equal.
        choices = dict.fromkeys(
            Block("ir", kernel=k, expansion=e, out=slot.out, stride=slot.stride, se=se)
            for k in cfg.kernels
            for e in cfg.expansions
            for se in cfg.se_ratios
        )
        if cfg.allow_skip and not slot.first_of_stage:
            choices[Block("skip", out=slot.out)] = None
        return list(choices)

    def size(self) -> int:
        """Number of distinct genomes."""
        return math.prod(len(choices) for choices in self.choices)

    def sample(self, rng: random.Random) -> Genome:
        return tuple(rng.randrange(len(choices)) for choices in self.choices)

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """Re-sample one layer that has an alternative to a different choice."""
        self.validate_genome(genome)
        genome = tuple(genome)
        open_layers = [i for i, choices in enumerate(self.choices) if len(choices) > 1]
        if not open_layers:
            return genome
        layer = rng.choice(open_layers)
        new = rng.randrange(len(self.choices[layer]) - 1)
        new += new >= genome[layer]  # skips the current choice while staying uniform over the rest
        return genome[:layer] + (new,) + genome[layer + 1 :]

    def validate_genome(self, genome: Sequence[int]) -> None:
        if len(genome) != self.num_layers:
            raise ArchError(f"genome has {len(genome)} entries, the space has {self.num_layers} layers")
        for layer, (index, choices) in enumerate(zip(genome, self.choices)):
            # numbers.Integral also admits numpy integers that strategies may produce.
            if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < len(choices):
                raise ArchError(f"genome entry {index!r} for layer {layer} is not in 0..{len(choices) - 1}")

    def to_arch(self, genome: Sequence[int]) -> Arch:
        self.validate_genome(genome)
        blocks = tuple(choices[int(index)] for index, choices in zip(genome, self.choices))
        cfg = self.config
        return Arch(stem=cfg.stem_channels, stem_stride=cfg.stem_stride, blocks=blocks, head=cfg.head_channels)

    def from_arch(self, arch: Arch | str) -> Genome:
        """Genome of an arch of this space; ArchError if the arch is not in it."""
        if isinstance(arch, str):
            arch = parse_arch(arch)
        cfg = self.config
        if (arch.stem, arch.stem_stride, arch.head) != (cfg.stem_channels, cfg.stem_stride, cfg.head_channels):
            raise ArchError(f"arch {format_arch(arch)!r} has a stem or head that differs from the space")
        if len(arch.blocks) != self.num_layers:
            raise ArchError(f"arch has {len(arch.blocks)} blocks, the space has {self.num_layers} layers")
        genome = []
        for layer, (block, choices) in enumerate(zip(arch.blocks, self.choices)):
            if block not in choices:
                raise ArchError(f"block {block.token()!r} is not a choice of layer {layer}")
            genome.append(choices.index(block))
        return tuple(genome)
