"""`mnasnet` space: MnasNet's factorized hierarchical search space (Tan et al. 2019, arXiv:1807.11626,
section 4 and Figure 4).

The network is a fixed skeleton of stages (by default MnasNet-A1's: a 32-channel stem, seven
stages, a 1280-channel head); each stage makes its own choices and all its layers share them.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field

from ..arch import Arch, Block, BlockShape, format_arch, parse_arch
from ..arch.block import Size, same_out
from ..arch.fields import format_number
from ..arch.grammar import STEM_KERNEL
from ..arch.operators import Operator, block_operator, head_operator, null_operator, stem_operator
from ..arch.zoo import make_divisible, small_input_strides, zoo_arch
from ..errors import ArchError
from ..hookspecs import hookimpl
from ..plugin_api import Decision, Geometry, Genome, PluginOptions, SearchSpace
from ._operators import OperatorSet

MIN_FINAL_SIDE = 4
"""`strides: auto` keeps the skeleton's strides when they leave the last stage at least this many
pixels a side, and takes the `cifar` strides otherwise: the CIFAR-style variants end a 32x32 input
at 4x4 (see nasflow.arch.zoo), the ImageNet skeleton ends 224x224 at 7x7."""

WHAT = ("kind", "kernel", "expansion", "se", "skip", "layers", "width")
"""A stage's decisions, in genome order; decision `stage3.kernel` is stage 3's kernel."""

EXPANDING = ("ir", "fir")
"""Kinds with an expansion ratio; `conv` and `ds` ignore the expansion decision."""

WITH_SE = ("ir", "fir", "ds")
"""Kinds with squeeze-excite; `conv` ignores the SE decision (the grammar's conv has none)."""


class StageOptions(PluginOptions):
    channels: int = Field(gt=0)
    layers: int = Field(gt=0, le=16)
    stride: Literal[1, 2] = 1


def _a1() -> Arch:
    return zoo_arch("mnasnet_a1")


def _a1_stages() -> list[StageOptions]:
    """MnasNet-A1's seven stages from the zoo (Figure 7(a)): consecutive blocks of equal width."""
    stages = []
    for channels, group in itertools.groupby(_a1().blocks, key=lambda b: b.out):
        blocks = list(group)
        stages.append(StageOptions(channels=channels, layers=len(blocks), stride=blocks[0].stride))
    return stages


class MnasNetOptions(PluginOptions):
    stem_channels: int = Field(default_factory=lambda: _a1().stem, gt=0)
    stem_stride: Literal[1, 2] = Field(default_factory=lambda: _a1().stem_stride)
    stages: list[StageOptions] = Field(default_factory=_a1_stages, min_length=1)
    head_channels: int = Field(default_factory=lambda: _a1().head, gt=0)
    strides: Literal["auto", "skeleton", "cifar"] = Field(
        "auto",
        description="skeleton: the stem's and stages' strides as written; cifar: the first two stride-2 "
        "layers at stride 1; auto: skeleton when it leaves the last stage >= 4x4, else cifar",
    )
    kinds: list[Literal["conv", "ds", "ir", "fir"]] = Field(default_factory=lambda: ["conv", "ds", "ir"], min_length=1)
    kernels: list[Literal[3, 5, 7]] = Field(default_factory=lambda: [3, 5], min_length=1)
    expansions: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [1.0, 3.0, 6.0], min_length=1)
    se_ratios: list[Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=lambda: [0.0, 0.25], min_length=1)
    skips: list[Literal["identity", "none"]] = Field(default_factory=lambda: ["identity", "none"], min_length=1)
    layer_deltas: list[Annotated[int, Field(ge=-16, le=16)]] = Field(default_factory=lambda: [-1, 0, 1], min_length=1)
    width_factors: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [0.75, 1.0, 1.25], min_length=1)
    width_divisor: int = Field(8, gt=0, description="stage widths are rounded to a multiple of this")


@dataclass(frozen=True)
class _Stage:
    """One stage at the space's geometry: where it sits, and its layer-count and width choices."""

    number: int  # 1-based, as decisions and messages name it
    stride: int
    in_size: Size
    out_size: Size
    layers: tuple[int, ...]
    widths: tuple[int, ...]


@dataclass(frozen=True)
class _Choice:
    """A stage's block choice as the architecture sees it: the record of its later layers (stride 1,
    in == out) and the genome indices of the first genome that names it."""

    later: Block
    indices: dict  # decision name ('kind', ...) -> index


def scaled_width(channels: int, factor: float, divisor: int) -> int:
    """MnasNet's ``round_filters``: channels x factor to a multiple of `divisor`, at least `divisor`."""
    return make_divisible(channels * factor, divisor)


def leaves_no_channels(channels: int, factor: float) -> bool:
    """Whether a factor scales a stage to under half a channel: `round_filters` would raise it to its
    divisor silently, so `problems()` names it instead."""
    return round(channels * factor) < 1


class MnasNetSpace(SearchSpace):
    """MnasNet's factorized hierarchical space: a fixed skeleton of stages, and per stage one choice
    of block kind (`conv`, `ds`, `ir`), kernel (3, 5), expansion (1, 3, 6; `ir` only), SE ratio
    (0, 0.25; not `conv`), skip (identity residual or none), layer count (the skeleton's -1 / 0 / +1,
    at least 1) and width (0.75 / 1.0 / 1.25 of the skeleton's channels, rounded to a multiple of 8);
    all layers of a stage share its choice, as in the paper.

    Skeleton. MnasNet-A1's (Figure 7(a), read from `zoo:mnasnet_a1`): stem 32 channels stride 2;
    stages (channels, layers, stride) (16, 1, 1), (24, 2, 2), (40, 3, 2), (80, 4, 2), (112, 2, 1),
    (160, 3, 2), (320, 1, 1); head 1280. The first layer of a stage carries its stride. Strides
    (option `strides`): `skeleton` as written (32x reduction), `cifar` with the first two stride-2
    layers (the stem included) at stride 1 as the zoo's `_cifar` variants (8x), `auto` (default):
    `skeleton` when it leaves the last stage at least 4x4 (inputs of 128 px and more), else `cifar`.

    Decisions, 7 per stage: ``stageN.kind``, ``.kernel``, ``.expansion``, ``.se``, ``.skip``,
    ``.layers``, ``.width`` (N = 1..7). The layer and width choices are labelled by the layer count
    and channel count they give; counts that coincide (16 x 0.75 and 16 x 1.0 both round to 16) are
    one choice. Skip "identity" adds the input where a layer keeps stride 1 and width (a stage's
    later layers, its first when the previous stage has its width): the default of `ir`, token
    ``r1`` on `ds` / `conv`; "none" leaves it out (token ``r0`` on `ir`).

    Size. Several genomes name one architecture (the expansion of a `conv` / `ds` stage, the SE of
    a `conv` stage, the skip of a stage where no layer can add its input, two stages of identical
    blocks meeting at a stride-1 boundary of equal width), so `size()` counts distinct
    architectures, exactly (see `_count`). With the default options: 28,920,784,535,654,400 (2.9e16)
    at 224x224 (skeleton strides), 30,259,709,745,638,400 (3.0e16) at 32x32 and at 8x8 (cifar
    strides); the genomes number 9.5e18 (`tests/test_space_mnasnet.py` checks these).

    `from_arch` gives the canonical genome: index 0 for a decision the architecture ignores, and,
    where two stages' layers could be split differently, the earlier stage taking the most layers.
    No supernet form: the layer and width decisions change the shapes of the layers.
    """

    name = "mnasnet"
    description = "MnasNet's factorized hierarchical space: per stage kind x kernel x expansion x SE x skip x layers x width"
    Options = MnasNetOptions

    def __init__(self, options: MnasNetOptions | None = None, geometry: Geometry | None = None):
        super().__init__(options, geometry)
        cfg = self.options
        self.kinds = tuple(dict.fromkeys(cfg.kinds))
        self.kernels = tuple(dict.fromkeys(cfg.kernels))
        self.expansions = tuple(dict.fromkeys(float(e) for e in cfg.expansions))
        self.se_ratios = tuple(dict.fromkeys(float(r) for r in cfg.se_ratios))
        self.skips = tuple(dict.fromkeys(cfg.skips))
        self.stride_rule, strides = self._strides()
        self.stem_stride, self.stage_strides = strides[0], tuple(strides[1:])
        self.stages = self._stages(self.geometry.image_size)
        self._first_cache: dict[tuple[int, int], dict[Block, list[_Choice]]] = {}
        self.decisions = tuple(
            Decision(f"stage{stage.number}.{what}", labels)
            for stage in self.stages
            for what, labels in zip(WHAT, self._labels(stage))
        )

    # --- the skeleton at this geometry

    def _strides(self) -> tuple[str, list[int]]:
        """The rule `strides` resolves to here, and the stem's then each stage's stride."""
        cfg = self.options
        written = [cfg.stem_stride, *(s.stride for s in cfg.stages)]
        rule = cfg.strides
        if rule == "auto":
            rule = "skeleton" if min(self._final_size(written)) >= MIN_FINAL_SIDE else "cifar"
        return rule, written if rule == "skeleton" else small_input_strides(written)

    def _final_size(self, strides: Sequence[int]) -> Size:
        size = same_out(self.geometry.image_size, STEM_KERNEL, strides[0])
        for stride in strides[1:]:
            size = same_out(size, 3, stride)  # any odd kernel: 'same' padding gives ceil(n / stride)
        return size

    def _stages(self, image_size: Size) -> tuple[_Stage, ...]:
        """The stages, with the sizes they see at `image_size` (the strides are the space's)."""
        cfg = self.options
        size = same_out(image_size, STEM_KERNEL, self.stem_stride)
        stages = []
        for number, (stage, stride) in enumerate(zip(cfg.stages, self.stage_strides), start=1):
            out_size = same_out(size, 3, stride)
            layers = tuple(dict.fromkeys(max(1, stage.layers + d) for d in cfg.layer_deltas))
            widths = tuple(dict.fromkeys(scaled_width(stage.channels, f, cfg.width_divisor) for f in cfg.width_factors))
            stages.append(_Stage(number, stride, size, out_size, layers, widths))
            size = out_size
        return tuple(stages)

    def _labels(self, stage: _Stage) -> tuple[tuple[str, ...], ...]:
        return (
            self.kinds,
            tuple(str(k) for k in self.kernels),
            tuple(format_number(e) for e in self.expansions),
            tuple(format_number(r) for r in self.se_ratios),
            self.skips,
            tuple(str(n) for n in stage.layers),
            tuple(str(w) for w in stage.widths),
        )

    # --- blocks

    def _block(self, kind: str, kernel: int, expansion: float, se: float, skip: str, width: int,
               stride: int, in_channels: int) -> Block:
        """One layer of a stage; the decisions its kind or its shape ignore are left out, so
        genomes differing only there give the same record."""
        fields: dict[str, object] = {"kernel": kernel, "out": width, "stride": stride}
        if kind in EXPANDING:
            fields["expansion"] = expansion
        if kind in WITH_SE:
            fields["se"] = se
        if stride == 1 and in_channels == width:  # only here can the layer add its input
            fields["shortcut"] = skip == "identity"
        return Block(kind, **fields)

    def _first(self, stage: _Stage, later: Block, in_channels: int) -> Block:
        """A stage's first layer: its later layers' block at the stage's stride, fed `in_channels`."""
        fields = {"kind": later.kind, "kernel": later.kernel, "expansion": getattr(later, "expansion", 1.0),
                  "se": getattr(later, "se", 0.0), "skip": "identity" if later.shortcut else "none",
                  "width": later.out}
        return self._block(**fields, stride=stage.stride, in_channels=in_channels)

    @cached_property
    def _choices(self) -> tuple[tuple[_Choice, ...], ...]:
        """Per stage, its distinct block choices, in genome order."""
        out = []
        for stage in self.stages:
            seen: dict[Block, _Choice] = {}
            product = itertools.product(
                enumerate(self.kinds), enumerate(self.kernels), enumerate(self.expansions),
                enumerate(self.se_ratios), enumerate(self.skips), enumerate(stage.widths),
            )
            for (ki, kind), (ni, k), (ei, e), (si, se), (pi, skip), (wi, width) in product:
                later = self._block(kind, k, e, se, skip, width, 1, width)
                seen.setdefault(later, _Choice(later, {"kind": ki, "kernel": ni, "expansion": ei, "se": si,
                                                       "skip": pi, "width": wi}))
            out.append(tuple(seen.values()))
        return tuple(out)

    def _skeleton(self, blocks: Sequence[Block]) -> Arch:
        cfg = self.options
        return Arch(stem=cfg.stem_channels, stem_stride=self.stem_stride, blocks=tuple(blocks), head=cfg.head_channels)

    # --- genomes

    def _stage_genes(self, genome: Genome, index: int) -> dict[str, int]:
        start = index * len(WHAT)
        return dict(zip(WHAT, genome[start : start + len(WHAT)]))

    def to_arch(self, genome: Sequence[int]) -> Arch:
        genome = self.validate_genome(genome)
        blocks: list[Block] = []
        channels = self.options.stem_channels
        for index, stage in enumerate(self.stages):
            g = self._stage_genes(genome, index)
            width = stage.widths[g["width"]]
            chosen = (self.kinds[g["kind"]], self.kernels[g["kernel"]], self.expansions[g["expansion"]],
                      self.se_ratios[g["se"]], self.skips[g["skip"]], width)
            for layer in range(stage.layers[g["layers"]]):
                stride = stage.stride if layer == 0 else 1
                blocks.append(self._block(*chosen, stride=stride, in_channels=channels))
                channels = width
        return self._skeleton(blocks)

    def from_arch(self, arch: Arch | str) -> Genome:
        """The canonical genome of an architecture of this space (see the class docs); ArchError
        saying where the architecture leaves the space."""
        if isinstance(arch, str):
            arch = parse_arch(arch)
        if self._skeleton(arch.blocks) != arch:
            raise ArchError(f"arch {format_arch(arch)!r} has a stem or head that differs from the space's")
        found = self._split(arch.blocks, 0, 0, self.options.stem_channels)
        if found is None:
            raise ArchError(f"arch {format_arch(arch)!r} is not in the space: its blocks do not split into "
                            f"the {len(self.stages)} stages' choices")
        return tuple(found)

    def _split(self, blocks: Sequence[Block], index: int, at: int, channels: int) -> list[int] | None:
        """Genome entries of stages `index`.. for blocks[at:], fed `channels`; None if there are none.

        Layer counts are tried from the largest, so the earliest stage takes the most layers."""
        if index == len(self.stages):
            return [] if at == len(blocks) else None
        if at == len(blocks):
            return None
        stage = self.stages[index]
        candidates = self._firsts(index, channels).get(blocks[at], ())
        for count in sorted(stage.layers, reverse=True):
            if at + count > len(blocks):
                continue
            for choice in candidates:
                if any(b != choice.later for b in blocks[at + 1 : at + count]):
                    continue
                rest = self._split(blocks, index + 1, at + count, choice.later.out)
                if rest is not None:
                    return self._canonical(index, choice, count, channels) + rest
        return None

    def _firsts(self, index: int, channels: int) -> dict[Block, list[_Choice]]:
        """Stage `index`'s first layer fed `channels` -> the choices giving it, in genome order."""
        key = (index, channels)
        if key not in self._first_cache:
            table: dict[Block, list[_Choice]] = defaultdict(list)
            for choice in self._choices[index]:
                table[self._first(self.stages[index], choice.later, channels)].append(choice)
            self._first_cache[key] = dict(table)
        return self._first_cache[key]

    def _canonical(self, index: int, choice: _Choice, count: int, channels: int) -> list[int]:
        stage = self.stages[index]
        genes = dict(choice.indices, layers=stage.layers.index(count))
        later = choice.later
        can_add = count > 1 or (stage.stride == 1 and channels == later.out)
        if not can_add:
            genes["skip"] = 0
        return [genes[what] for what in WHAT]

    def size(self) -> int:
        """Number of distinct architectures (see the class docs)."""
        return self._size

    @cached_property
    def _size(self) -> int:
        return _count(self)

    # --- latency tables and validation

    def lut_ops(self, geometry: Geometry | None = None) -> list[Operator]:
        """Each stage's first layer for every choice and every width the previous stage can end
        with, its later layers (stride 1, its own width) where a stage can have more than one, the
        head for every width of the last stage, the stem, and the `null` entry."""
        g = geometry or self.geometry
        stages = self._stages(g.image_size)
        reference = self._skeleton([])
        ops = OperatorSet()
        ops.add(null_operator(g.in_channels, g.image_size, g.batch_size))
        ops.add(stem_operator(reference, g.in_channels, g.image_size, g.batch_size))
        widths_before = [self.options.stem_channels]
        for stage, choices in zip(stages, self._choices):
            for choice in choices:
                for channels in widths_before:
                    first = self._first(stage, choice.later, channels)
                    ops.add(block_operator(first, BlockShape(channels, stage.in_size, stage.out_size), g.batch_size))
                if max(stage.layers) > 1:
                    shape = BlockShape(choice.later.out, stage.out_size, stage.out_size)
                    ops.add(block_operator(choice.later, shape, g.batch_size))
            widths_before = list(stage.widths)
        for channels in widths_before:
            ops.add(head_operator(reference, channels, g.num_classes, stages[-1].out_size, g.batch_size))
        return ops.operators()

    def problems(self) -> list[str]:
        problems = []
        h, w = self.geometry.image_size
        layers = [("the stem", self.stem_stride, (h, w))] + [
            (f"stage {s.number}", s.stride, s.in_size) for s in self.stages
        ]
        for where, stride, size in layers:
            if min(size) < stride:
                problems.append(
                    f"the skeleton does not fit the {h}x{w} input: {where} has stride {stride} but gets a "
                    f"{size[0]}x{size[1]} map, below one pixel after it ({self.stride_rule} strides); "
                    "use fewer stride-2 stages (`strides: cifar`, stride 1 in `stages`) or a larger input"
                )
                break
        cfg = self.options
        for factor in dict.fromkeys(cfg.width_factors):
            empty = [f"stage {n} ({s.channels} x {format_number(factor)} = {format_number(s.channels * factor)})"
                     for n, s in enumerate(cfg.stages, start=1) if leaves_no_channels(s.channels, factor)]
            if empty:
                problems.append(
                    f"width factor {format_number(factor)} leaves {', '.join(empty)} with no channels "
                    f"(rounding to a multiple of {cfg.width_divisor} would make them {cfg.width_divisor}, not what "
                    "the factor asks); use a larger factor"
                )
        return problems

    def notes(self) -> list[str]:
        if self.options.strides != "auto":
            return []
        h, w = self.geometry.image_size
        cfg = self.options
        final = self._final_size([cfg.stem_stride, *(s.stride for s in cfg.stages)])
        side = f"{MIN_FINAL_SIDE}x{MIN_FINAL_SIDE}"
        if self.stride_rule == "skeleton":
            return [f"strides: auto kept the skeleton's strides for the {h}x{w} input (the last stage is "
                    f"{final[0]}x{final[1]}, at least {side})"]
        return [f"strides: auto took the cifar strides (the first two stride-2 layers at stride 1) for the "
                f"{h}x{w} input: the skeleton's would leave the last stage {final[0]}x{final[1]}, under {side}"]

    def supernet(self) -> None:
        """None: the layer-count and width decisions change the shapes the layers see."""
        return None


# ---------------------------------------------------------------- counting distinct architectures


def _count(space: MnasNetSpace) -> int:
    """The number of distinct block sequences the space's genomes give (stem and head are fixed).

    Genomes of distinct stage choices can still name one sequence (a stage whose layers cannot add
    their input, two identical stages meeting at a stride-1 boundary of equal width), so the
    sequences are counted as the words of an automaton: a state is (stage, choice, layers read),
    a word's letters are blocks, and the word count of the determinised automaton (sets of states
    reached by the same prefix) counts each sequence once.
    """
    stages, choices = space.stages, space._choices
    ids: dict[Block, int] = {}

    def letter(block: Block) -> int:
        return ids.setdefault(block, len(ids))

    later = [[letter(c.later) for c in stage_choices] for stage_choices in choices]
    first: dict[tuple[int, int, int], int] = {}  # (stage, choice, in channels) -> letter

    def first_letter(index: int, choice: int, channels: int) -> int:
        key = (index, choice, channels)
        if key not in first:
            first[key] = letter(space._first(stages[index], choices[index][choice].later, channels))
        return first[key]

    def entering(index: int, channels: int) -> list[tuple[int, tuple[int, int, int]]]:
        return [(first_letter(index, c, channels), (index, c, 1)) for c in range(len(choices[index]))]

    def moves(state: tuple[int, int, int]) -> list[tuple[int, tuple[int, int, int]]]:
        index, choice, read = state
        stage = stages[index]
        out = []
        if read < max(stage.layers):
            out.append((later[index][choice], (index, choice, read + 1)))
        if read in stage.layers and index + 1 < len(stages):
            out += entering(index + 1, choices[index][choice].later.out)
        return out

    def accepts(state: tuple[int, int, int]) -> bool:
        index, _, read = state
        return index == len(stages) - 1 and read in stages[index].layers

    memo: dict[frozenset, int] = {}

    def words(states: frozenset) -> int:
        if states not in memo:
            step: dict[int, set] = defaultdict(set)
            for state in states:
                for symbol, target in moves(state):
                    step[symbol].add(target)
            memo[states] = any(accepts(s) for s in states) + sum(words(frozenset(t)) for t in step.values())
        return memo[states]

    start: dict[int, set] = defaultdict(set)
    for symbol, target in entering(0, space.options.stem_channels):
        start[symbol].add(target)
    return sum(words(frozenset(t)) for t in start.values())


@hookimpl
def nasflow_search_spaces():
    return [MnasNetSpace]
