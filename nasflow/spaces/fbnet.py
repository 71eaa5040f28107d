"""`fbnet` space: FBNet's layer-wise search space (Wu et al. 2019, arXiv:1812.03443, section 3.2,
Table 1 and Table 2).

A fixed macro-architecture (stem, stages of searchable layers, head) and one decision per layer
choosing among FBNet's nine candidate blocks. Every layer's input shape is fixed whatever the
genome, so the space has a supernet form, as the paper trains it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ..arch import Arch, Block, BlockShape, format_arch, parse_arch
from ..arch.block import Size, same_out
from ..arch.grammar import STEM_KERNEL
from ..arch.operators import Operator, block_operator, head_operator, null_operator, stem_operator
from ..arch.zoo import small_input_strides
from ..errors import ArchError
from ..hookspecs import hookimpl
from ..plugin_api import Decision, Geometry, Genome, PluginOptions, SearchSpace, Supernet, SupernetLayer
from ._operators import OperatorSet

SKIP = "skip"

CANDIDATES: dict[str, dict[str, object] | None] = {
    "k3_e1": {"kernel": 3, "expansion": 1.0},
    "k3_e1_g2": {"kernel": 3, "expansion": 1.0, "groups": 2},
    "k3_e3": {"kernel": 3, "expansion": 3.0},
    "k3_e6": {"kernel": 3, "expansion": 6.0},
    "k5_e1": {"kernel": 5, "expansion": 1.0},
    "k5_e1_g2": {"kernel": 5, "expansion": 1.0, "groups": 2},
    "k5_e3": {"kernel": 5, "expansion": 3.0},
    "k5_e6": {"kernel": 5, "expansion": 6.0},
    SKIP: None,
}
"""FBNet's candidate blocks (Table 2), in the paper's order, as `ir` fields: kernel, expansion and
groups of the 1x1 convs (``g2``: grouped, with a channel shuffle); `skip` is the identity."""

GROUPED = 2
"""The groups of the `_g2` candidates: they need layer widths divisible by it."""


@dataclass(frozen=True)
class Macro:
    """A macro-architecture: the stem, per stage (channels, layers, stride of its first layer), the head."""

    stem_channels: int
    stem_stride: int
    channels: tuple[int, ...]
    layers: tuple[int, ...]
    strides: tuple[int, ...]
    head_channels: int


IMAGENET = Macro(
    stem_channels=16,
    stem_stride=2,
    channels=(16, 24, 32, 64, 112, 184, 352),
    layers=(1, 4, 4, 4, 4, 4, 1),
    strides=(1, 2, 2, 2, 1, 2, 1),
    head_channels=1984,
)
"""FBNet's ImageNet macro-architecture (Table 1): 22 searchable layers, 224x224 ends at 7x7."""


def _cifar(macro: Macro) -> Macro:
    """The macro with its first two stride-2 layers (the stem included) at stride 1, as the zoo's
    `_cifar` variants: a 32x32 input ends at 4x4."""
    stem, *strides = small_input_strides([macro.stem_stride, *macro.strides])
    return Macro(macro.stem_channels, stem, macro.channels, macro.layers, tuple(strides), macro.head_channels)


PRESETS = {"imagenet": IMAGENET, "cifar": _cifar(IMAGENET)}

MIN_FINAL_SIDE = 4
"""Below this many pixels a side at the last stage, `notes()` suggests the `cifar` preset (the
CIFAR-style variants end 32x32 at 4x4)."""


class FBNetOptions(PluginOptions):
    preset: Literal["imagenet", "cifar"] = Field(
        "imagenet", description="macro-architecture defaults: FBNet's Table 1, or it with the stem and stage 2 at stride 1"
    )
    stem_channels: int | None = Field(None, gt=0, description="default: the preset's (16)")
    stem_stride: Literal[1, 2] | None = Field(None, description="default: the preset's (imagenet 2, cifar 1)")
    channels: list[Annotated[int, Field(gt=0)]] | None = Field(None, min_length=1, description="per stage")
    layers: list[Annotated[int, Field(gt=0, le=16)]] | None = Field(None, min_length=1, description="per stage")
    strides: list[Literal[1, 2]] | None = Field(None, min_length=1, description="per stage, of its first layer")
    head_channels: int | None = Field(None, gt=0, description="default: the preset's (1984)")
    candidates: list[str] = Field(default_factory=lambda: list(CANDIDATES), min_length=1)

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in CANDIDATES:
                raise ValueError(f"unknown candidate {name!r}; allowed: {', '.join(CANDIDATES)}")
        return value

    @model_validator(mode="after")
    def _stage_lists_agree(self) -> FBNetOptions:
        preset = PRESETS[self.preset]
        lengths = {key: len(getattr(self, key) if getattr(self, key) is not None else getattr(preset, key))
                   for key in ("channels", "layers", "strides")}
        if len(set(lengths.values())) > 1:
            given = [k for k in lengths if getattr(self, k) is not None]
            said = ", ".join(f"{k} {lengths[k]}" + ("" if k in given else f" (the {self.preset} preset's)") for k in lengths)
            raise ValueError(f"channels, layers and strides must list the same number of stages, got {said}; "
                             "give all three to change the number of stages")
        return self

    def macro(self) -> Macro:
        """The preset with the options' overrides."""
        preset = PRESETS[self.preset]

        def pick(key: str):
            value = getattr(self, key)
            return getattr(preset, key) if value is None else (tuple(value) if isinstance(value, list) else value)

        return Macro(*(pick(key) for key in ("stem_channels", "stem_stride", "channels", "layers", "strides", "head_channels")))


@dataclass(frozen=True)
class _Layer:
    """One searchable layer at the space's geometry: where it sits and the shape it maps."""

    index: int  # 0-based, as the decision `layer<index>` names it
    stage: int  # 1-based
    in_channels: int
    out: int
    stride: int
    in_size: Size
    out_size: Size

    @property
    def keeps_shape(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out


def candidate_block(name: str, out: int, stride: int) -> Block:
    """The block of one of FBNet's candidates at a layer's width and stride."""
    fields = CANDIDATES[name]
    return Block("skip", out=out) if fields is None else Block("ir", out=out, stride=stride, **fields)


class FBNetSpace(SearchSpace):
    """FBNet's layer-wise space: a fixed macro-architecture, and per searchable layer one of the nine
    candidate blocks ``k3_e1``, ``k3_e1_g2``, ``k3_e3``, ``k3_e6``, ``k5_e1``, ``k5_e1_g2``,
    ``k5_e3``, ``k5_e6``, ``skip`` (an `ir` block of kernel k and expansion e; ``g2``: both 1x1
    convs in 2 groups with a channel shuffle between them).

    Macro-architecture (option `preset`). `imagenet`, FBNet's Table 1: stem 16 channels stride 2;
    stages (channels, layers, stride of the first layer) (16, 1, 1), (24, 4, 2), (32, 4, 2),
    (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1): 22 searchable layers; head 1984. `cifar`:
    the same with the first two stride-2 layers (the stem and stage 2) at stride 1, the zoo's
    `_cifar` rule. Options `stem_channels`, `stem_stride`, `channels`, `layers`, `strides`,
    `head_channels` replace the preset's values.

    Decisions: ``layer0`` .. ``layer<N-1>``, one per searchable layer, labelled with the candidate
    names, in the order above (subset: option `candidates`). A layer offers `skip` only where it
    keeps its input's shape (stride 1 and the previous layer's width): the identity cannot change
    either, so the first layer of a stage that strides or widens has no `skip` (with the default
    macro: layer1, layer5, layer9, layer13, layer17, layer21; `notes()` names them). The ``_g2`` candidates are offered
    only where the layer's input and output widths are even. Because no choice changes a layer's
    output shape, every layer has one input shape and the space has a supernet form.

    Size. `size()` counts genomes: 9^16 x 8^6 = 4.9e20 with the defaults. Every genome is a
    distinct architecture string (skip layers keep their place as `skip_c<width>` tokens), but
    genomes that differ only in which layers of a stage are skipped can compute the same network.
    `from_arch` also takes architectures whose skip layers are left out (as `zoo:fbnet_c`):
    blocks fill the layers in order and the layers left over are skipped, the last ones of their
    stage first.
    """

    name = "fbnet"
    description = "FBNet's layer-wise space: a fixed macro-architecture, per layer one of nine candidate blocks"
    Options = FBNetOptions

    def __init__(self, options: FBNetOptions | None = None, geometry: Geometry | None = None):
        super().__init__(options, geometry)
        self.macro = self.options.macro()
        chosen = set(self.options.candidates)
        self.candidates = tuple(name for name in CANDIDATES if name in chosen)
        self.layers = self._layers(self.geometry.image_size)
        self.labels = tuple(self._allowed(layer) for layer in self.layers)
        self.choices = tuple(
            tuple(candidate_block(name, layer.out, layer.stride) for name in labels)
            for layer, labels in zip(self.layers, self.labels)
        )
        self.num_layers = len(self.layers)
        self.decisions = tuple(Decision(f"layer{layer.index}", labels) for layer, labels in zip(self.layers, self.labels))

    # --- the macro-architecture at a geometry

    def _layers(self, image_size: Size) -> tuple[_Layer, ...]:
        m = self.macro
        size = same_out(image_size, STEM_KERNEL, m.stem_stride)
        channels = m.stem_channels
        layers = []
        for stage, (width, count, stride) in enumerate(zip(m.channels, m.layers, m.strides), start=1):
            for i in range(count):
                s = stride if i == 0 else 1
                out_size = same_out(size, 3, s)  # any odd kernel: 'same' padding gives ceil(n / stride)
                layers.append(_Layer(len(layers), stage, channels, width, s, size, out_size))
                size, channels = out_size, width
        return tuple(layers)

    def _allowed(self, layer: _Layer) -> tuple[str, ...]:
        """The candidates a layer offers: skip only where it keeps the shape, g2 only on even widths."""
        return tuple(
            name for name in self.candidates
            if (name != SKIP or layer.keeps_shape) and (not _grouped(name) or _divides(layer))
        )

    def _skeleton(self, blocks: Sequence[Block]) -> Arch:
        m = self.macro
        return Arch(stem=m.stem_channels, stem_stride=m.stem_stride, blocks=tuple(blocks), head=m.head_channels)

    # --- genomes

    def to_arch(self, genome: Sequence[int]) -> Arch:
        genome = self.validate_genome(genome)
        return self._skeleton([choices[i] for i, choices in zip(genome, self.choices)])

    def from_arch(self, arch: Arch | str) -> Genome:
        """The genome of an architecture of the space, its skip layers written or left out (see the
        class docs); ArchError saying where it leaves the space."""
        if isinstance(arch, str):
            arch = parse_arch(arch)
        if self._skeleton(arch.blocks) != arch:
            raise ArchError(f"arch {format_arch(arch)!r} has a stem or head that differs from the space's")
        blocks = arch.blocks
        memo: dict[tuple[int, int], list[int] | None] = {}
        farthest = (0, 0)  # (block, -layer): the furthest block reached, at the first layer tried, for the message

        def fill(layer: int, at: int) -> list[int] | None:
            if layer == self.num_layers:
                return [] if at == len(blocks) else None
            key = (layer, at)
            if key in memo:
                return memo[key]
            nonlocal farthest
            farthest = max(farthest, (at, -layer))
            choices = self.choices[layer]
            found = None
            if at < len(blocks) and blocks[at] in choices:  # a written block first: skips go last
                rest = fill(layer + 1, at + 1)
                if rest is not None:
                    found = [choices.index(blocks[at])] + rest
            if found is None and SKIP in self.labels[layer]:
                rest = fill(layer + 1, at)
                if rest is not None:
                    found = [self.labels[layer].index(SKIP)] + rest
            memo[key] = found
            return found

        genome = fill(0, 0)
        if genome is None:
            at, layer = farthest[0], -farthest[1]
            if at < len(blocks):
                where = f"block {at + 1} ({blocks[at].token()}) is no candidate of layer{layer} ({', '.join(self.labels[layer])})"
            else:
                where = f"its {len(blocks)} blocks end before layer{layer}, which cannot be skipped"
            raise ArchError(f"arch is not in the space ({self.num_layers} layers): {where}")
        return tuple(genome)

    # --- latency tables and validation

    def lut_ops(self, geometry: Geometry | None = None) -> list[Operator]:
        """Every layer has one input shape (see the class docs): each layer's candidates at that
        shape, the stem, the head, and the `null` entry."""
        g = geometry or self.geometry
        skeleton = self._skeleton([])
        ops = OperatorSet()
        ops.add(null_operator(g.in_channels, g.image_size, g.batch_size))
        ops.add(stem_operator(skeleton, g.in_channels, g.image_size, g.batch_size))
        layers = self._layers(g.image_size)
        for layer, choices in zip(layers, self.choices):
            for block in choices:
                ops.add(block_operator(block, BlockShape(layer.in_channels, layer.in_size, layer.out_size), g.batch_size))
        # Every stage has a layer (the options say so), and the last one's shape is fixed too.
        ops.add(head_operator(skeleton, layers[-1].out, g.num_classes, layers[-1].out_size, g.batch_size))
        return ops.operators()

    def cheapest_genome(self) -> Genome:
        """The cheapest candidate per layer by its own MACs (layer shapes do not depend on the genome)."""
        genome = []
        for layer, choices in zip(self.layers, self.choices):
            shape = BlockShape(layer.in_channels, layer.in_size, layer.out_size)
            genome.append(min((b.macs(shape), j) for j, b in enumerate(choices))[1])
        return tuple(genome)

    def problems(self) -> list[str]:
        problems = []
        h, w = self.geometry.image_size
        strided = [("the stem", self.macro.stem_stride, (h, w))] + [
            (f"layer{layer.index} (stage {layer.stage})", layer.stride, layer.in_size) for layer in self.layers
        ]
        for where, stride, size in strided:
            if min(size) < stride:
                problems.append(
                    f"the macro-architecture does not fit the {h}x{w} input: {where} has stride {stride} but gets "
                    f"a {size[0]}x{size[1]} map, below one pixel after it ({self.options.preset} preset); use "
                    "`preset: cifar`, fewer stride-2 stages (`strides`) or a larger input"
                )
                break
        empty = [layer for layer, labels in zip(self.layers, self.labels) if not labels]
        if empty:
            names = ", ".join(f"layer{layer.index} ({layer.in_channels} -> {layer.out} channels, stride {layer.stride})" for layer in empty)
            problems.append(
                f"{names} {'has' if len(empty) == 1 else 'have'} no candidate: of `candidates` "
                f"({', '.join(self.candidates)}), skip needs stride 1 and equal widths and the _g2 blocks "
                f"widths divisible by {GROUPED}; add a k*_e* candidate"
            )
        return problems

    def notes(self) -> list[str]:
        notes = []
        if SKIP in self.candidates:
            fixed = [f"layer{layer.index}" for layer in self.layers if not layer.keeps_shape]
            if fixed:
                notes.append(f"skip is left out of {', '.join(fixed)}: a stage's first layer there strides or "
                             "changes the width, which an identity cannot")
        grouped = [name for name in self.candidates if _grouped(name)]
        odd = [f"layer{layer.index}" for layer in self.layers if not _divides(layer)]
        if grouped and odd:
            notes.append(f"{', '.join(grouped)} left out of {', '.join(odd)}: their input or output width is "
                         f"not divisible by {GROUPED}")
        if self.layers and min(self.layers[-1].out_size) < MIN_FINAL_SIDE and self.options.preset == "imagenet":
            h, w = self.geometry.image_size
            final = self.layers[-1].out_size
            notes.append(f"the imagenet preset leaves the last stage {final[0]}x{final[1]} at the {h}x{w} input; "
                         "`preset: cifar` keeps more of it")
        return notes

    def supernet(self) -> Supernet:
        """Per layer, its candidates at its fixed shape; the skeleton holds each layer's first candidate."""
        skeleton = self.to_arch((0,) * self.num_layers)
        return Supernet(skeleton, tuple(SupernetLayer(i, i, choices) for i, choices in enumerate(self.choices)))



def _grouped(name: str) -> bool:
    fields = CANDIDATES[name]
    return fields is not None and fields.get("groups", 1) != 1


def _divides(layer: _Layer) -> bool:
    return layer.in_channels % GROUPED == 0 and layer.out % GROUPED == 0


@hookimpl
def nasflow_search_spaces():
    return [FBNetSpace]
