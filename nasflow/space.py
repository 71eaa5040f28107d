"""Search space: architecture records, their string grammar, the model builder and resource counting.

Architecture strings
--------------------
An architecture is written as layers joined by ``-``. Each layer is a kind followed by
``_``-separated fields; a field is a key immediately followed by its value::

    stem_c16_s1-ir_k3_e6_c24_s2-ir_k5_m40_c24_s1_se0.25_ahswish-skip_c24-head_c64

========  ===================================================================================
layer     fields
========  ===================================================================================
``stem``  ``c<int>`` output channels, ``s<int>`` stride. Exactly once, first.
          A 3x3 conv + BN + ReLU.
``ir``    Inverted residual block: ``k<int>`` odd depthwise kernel; either ``e<num>``
          expansion ratio (mid = max(1, round(in * e))) or ``m<int>`` explicit mid
          (expanded) channel count; ``c<int>`` output channels; ``s<int>`` stride;
          optional ``se<num>`` squeeze-excite ratio in [0, 1] (default 0 = none; reduces to
          max(1, int(in * se)) channels); optional ``a<name>`` activation, ``relu`` (default)
          or ``hswish``. Residual add when stride is 1 and in == out channels.
``skip``  ``c<int>`` channels: an identity layer, only valid where the input has ``c`` channels.
``head``  ``c<int>`` channels of the 1x1 conv + BN + ReLU before global average pooling and the
          linear classifier. Exactly once, last.
========  ===================================================================================

``<int>`` is a positive decimal integer; ``<num>`` is a decimal number without exponent
(``6``, ``2.5``, ``0.25``).

Canonical form (what ``format_arch`` writes and ``arch_hash`` hashes): fields in the order
``k, e|m, c, s, se, a``; defaults omitted (``se0``, ``arelu``); numbers without trailing zeros
(``e6`` not ``e6.0``). ``parse_arch`` also accepts fields in any order, explicit defaults and
non-canonical numbers, and ``format_arch(parse_arch(s)) == s`` for every canonical ``s``.
Error messages name the offending layer token and its position: the 0-based index of the layer
in the ``-``-separated list (the stem is position 0, block ``i`` is position ``i + 1``).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import SpaceConfig
from .errors import ArchError
from .plugin_api import Genome

ACTIVATIONS = ("relu", "hswish")
_KINDS = ("ir", "skip")

# ---------------------------------------------------------------- records


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ArchError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ArchError(f"{name} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ArchError(f"{name} must be a positive integer, got {value!r}")
    return number


def _finite_float(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ArchError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ArchError(f"{name} must be finite, got {value!r}")
    return number


@dataclass(frozen=True)
class Block:
    """One layer after the stem: an inverted residual ('ir') or an identity ('skip')."""

    kind: str
    kernel: int = 3
    expansion: float = 1.0
    mid: int | None = None
    out: int = 0
    stride: int = 1
    se: float = 0.0
    act: str = "relu"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ArchError(f"block kind must be one of {_KINDS}, got {self.kind!r}")
        set_ = object.__setattr__  # frozen: normalise once here so equal strings mean equal records
        set_(self, "out", _positive_int("channels", self.out))
        if self.kind == "skip":
            self._check_skip()
            return
        kernel = _positive_int("kernel", self.kernel)
        if kernel % 2 == 0:
            raise ArchError(f"kernel must be odd, got {kernel}")
        set_(self, "kernel", kernel)
        set_(self, "stride", _positive_int("stride", self.stride))
        self._normalise_width(set_)
        se = _finite_float("se ratio", self.se)
        if not 0.0 <= se <= 1.0:
            raise ArchError(f"se ratio must be in [0, 1], got {se}")
        set_(self, "se", se)
        if self.act not in ACTIVATIONS:
            raise ArchError(f"activation must be one of {ACTIVATIONS}, got {self.act!r}")

    def _normalise_width(self, set_) -> None:
        if self.mid is not None:
            set_(self, "mid", _positive_int("mid channels", self.mid))
            # An explicit mid overrides the ratio; pin the ratio so records compare like their strings.
            set_(self, "expansion", 1.0)
            return
        expansion = _finite_float("expansion", self.expansion)
        if expansion <= 0:
            raise ArchError(f"expansion must be positive, got {expansion}")
        set_(self, "expansion", expansion)

    def _check_skip(self) -> None:
        defaults = Block.__dataclass_fields__
        for name in ("kernel", "expansion", "mid", "stride", "se", "act"):
            if getattr(self, name) != defaults[name].default:
                raise ArchError(f"skip blocks carry only their channel count, got {name}={getattr(self, name)!r}")


@dataclass(frozen=True)
class Arch:
    """A whole network: stem, blocks in order, head."""

    stem: int
    stem_stride: int
    blocks: tuple[Block, ...] = field(default_factory=tuple)
    head: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "stem", _positive_int("stem channels", self.stem))
        object.__setattr__(self, "stem_stride", _positive_int("stem stride", self.stem_stride))
        object.__setattr__(self, "head", _positive_int("head channels", self.head))
        blocks = tuple(self.blocks)  # lists are accepted but the record must stay hashable
        for block in blocks:
            if not isinstance(block, Block):
                raise ArchError(f"arch blocks must be Block records, got {block!r}")
        object.__setattr__(self, "blocks", blocks)

    def __str__(self) -> str:
        return format_arch(self)


def mid_channels(block: Block, in_channels: int) -> int:
    """Expanded channel count of an 'ir' block fed `in_channels` channels."""
    if block.mid is not None:
        return block.mid
    return max(1, round(in_channels * block.expansion))


def se_channels(block: Block, in_channels: int) -> int:
    """Width of the squeeze-excite bottleneck (0 when the block has no SE)."""
    if block.se <= 0:
        return 0
    return max(1, int(in_channels * block.se))


# ---------------------------------------------------------------- string grammar

_FIELD = re.compile(r"^(se|[kemcsa])(.+)$")
_INT = re.compile(r"^\d+$")
_NUM = re.compile(r"^\d+(\.\d+)?$")
_ALLOWED = {
    "stem": {"c", "s"},
    "head": {"c"},
    "skip": {"c"},
    "ir": {"k", "e", "m", "c", "s", "se", "a"},
}
_REQUIRED = {"stem": ("c", "s"), "head": ("c",), "skip": ("c",), "ir": ("k", "c", "s")}


def _fmt_num(value: float) -> str:
    # Decimal of the shortest repr never uses an exponent, whose '-' would split the layer list.
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


_FIELD_NAMES = {"k": "kernel", "m": "mid channels", "c": "channels", "s": "stride", "e": "expansion", "se": "se ratio"}


def _parse_value(key: str, raw: str) -> object:
    """Convert and check one field at once, so a bad value is reported before missing fields."""
    if key == "a":
        if raw not in ACTIVATIONS:
            raise ArchError(f"activation must be one of {ACTIVATIONS}, got {raw!r}")
        return raw
    name = _FIELD_NAMES[key]
    if key in ("e", "se"):
        if not _NUM.match(raw):
            raise ArchError(f"field {key!r} needs a decimal number, got {raw!r}")
        value = float(raw)
        if key == "e" and value <= 0:
            raise ArchError(f"expansion must be positive, got {value}")
        if key == "se" and value > 1:
            raise ArchError(f"se ratio must be in [0, 1], got {value}")
        return value
    if not _INT.match(raw):
        raise ArchError(f"field {key!r} needs a positive integer, got {raw!r}")
    value = _positive_int(name, int(raw))
    if key == "k" and value % 2 == 0:
        raise ArchError(f"kernel must be odd, got {value}")
    return value


def _parse_fields(kind: str, parts: list[str]) -> dict[str, object]:
    fields: dict[str, object] = {}
    for part in parts:
        match = _FIELD.match(part)
        if not match:
            raise ArchError(f"unknown field {part!r}")
        key, raw = match.groups()
        if key not in _ALLOWED[kind]:
            raise ArchError(f"field {key!r} is not allowed in a {kind!r} layer")
        if key in fields:
            raise ArchError(f"field {key!r} given twice")
        fields[key] = _parse_value(key, raw)
    missing = [key for key in _REQUIRED[kind] if key not in fields]
    if missing:
        raise ArchError(f"missing field(s) {', '.join(missing)}")
    if kind == "ir" and ("e" in fields) == ("m" in fields):
        raise ArchError("give exactly one of e<expansion> or m<mid channels>")
    return fields


def _block_from_fields(kind: str, fields: dict[str, object]) -> Block:
    if kind == "skip":
        return Block("skip", out=fields["c"])  # type: ignore[arg-type]
    return Block(
        "ir",
        kernel=fields["k"],  # type: ignore[arg-type]
        expansion=fields.get("e", 1.0),  # type: ignore[arg-type]
        mid=fields.get("m"),  # type: ignore[arg-type]
        out=fields["c"],  # type: ignore[arg-type]
        stride=fields["s"],  # type: ignore[arg-type]
        se=fields.get("se", 0.0),  # type: ignore[arg-type]
        act=fields.get("a", "relu"),  # type: ignore[arg-type]
    )


def _parse_layer(token: str, position: int, last: int) -> tuple[str, dict[str, object]]:
    kind, *parts = token.split("_")
    if kind not in _ALLOWED:
        raise ArchError(f"unknown layer kind {kind!r} (expected stem, ir, skip or head)")
    if (kind == "stem") != (position == 0):
        raise ArchError("the stem must be the first layer, and only the first")
    if (kind == "head") != (position == last):
        raise ArchError("the head must be the last layer, and only the last")
    return kind, _parse_fields(kind, parts)


def parse_arch(text: str) -> Arch:
    """Parse an architecture string (see the module docstring); raises ArchError naming the bad token."""
    if not isinstance(text, str) or not text.strip():
        raise ArchError("architecture string is empty")
    tokens = text.strip().split("-")
    if len(tokens) < 2:
        raise ArchError(f"architecture {text!r} needs at least a stem and a head layer")
    layers = []
    for position, token in enumerate(tokens):
        try:
            kind, fields = _parse_layer(token, position, len(tokens) - 1)
            layers.append(fields if kind in ("stem", "head") else _block_from_fields(kind, fields))
        except ArchError as exc:
            raise ArchError(f"bad token {token!r} at position {position}: {exc}") from None
    stem, *blocks, head = layers
    return Arch(stem=stem["c"], stem_stride=stem["s"], blocks=tuple(blocks), head=head["c"])


def _format_block(block: Block) -> str:
    if block.kind == "skip":
        return f"skip_c{block.out}"
    width = f"m{block.mid}" if block.mid is not None else f"e{_fmt_num(block.expansion)}"
    parts = ["ir", f"k{block.kernel}", width, f"c{block.out}", f"s{block.stride}"]
    if block.se:
        parts.append(f"se{_fmt_num(block.se)}")
    if block.act != "relu":
        parts.append(f"a{block.act}")
    return "_".join(parts)


def format_arch(arch: Arch) -> str:
    """Canonical string of an architecture."""
    layers = [f"stem_c{arch.stem}_s{arch.stem_stride}"]
    layers += [_format_block(block) for block in arch.blocks]
    layers.append(f"head_c{arch.head}")
    return "-".join(layers)


def arch_hash(arch: Arch | str) -> str:
    """16 hex chars identifying an architecture (sha256 of its canonical string)."""
    canonical = format_arch(parse_arch(arch) if isinstance(arch, str) else arch)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def validate_arch(arch: Arch, in_channels: int) -> None:
    """Check what a lone Block cannot: skip blocks must see as many channels as they pass on."""
    _positive_int("input channels", in_channels)
    channels = arch.stem
    for index, block in enumerate(arch.blocks):
        if block.kind == "skip" and block.out != channels:
            raise ArchError(
                f"bad token {_format_block(block)!r} at position {index + 1}: "
                f"skip needs in == out channels, but its input has {channels}"
            )
        channels = block.out


# ---------------------------------------------------------------- model


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6, written with plain ops so it exports to any ONNX opset as Clip."""
    return F.relu6(x + 3.0) / 6.0


class HardSwish(nn.Module):
    """x * hard_sigmoid(x), kept out of nn.Hardswish so ONNX export needs no HardSwish op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * hard_sigmoid(x)


def _activation(name: str) -> nn.Module:
    return HardSwish() if name == "hswish" else nn.ReLU()


class SqueezeExcite(nn.Module):
    """Channel gating: global pool, 1x1 reduce, ReLU, 1x1 expand, hard-sigmoid."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.expand(F.relu(self.reduce(scale)))
        return x * hard_sigmoid(scale)


class InvertedResidual(nn.Module):
    """MobileNetV2-style block: optional 1x1 expand, depthwise kxk, optional SE, 1x1 project."""

    def __init__(self, block: Block, in_channels: int):
        super().__init__()
        mid = mid_channels(block, in_channels)
        self.in_channels, self.mid, self.out = in_channels, mid, block.out
        self.use_residual = block.stride == 1 and in_channels == block.out
        self.expand = nn.Conv2d(in_channels, mid, 1, bias=False) if mid != in_channels else None
        self.expand_bn = nn.BatchNorm2d(mid) if self.expand is not None else None
        self.dw = nn.Conv2d(mid, mid, block.kernel, block.stride, block.kernel // 2, groups=mid, bias=False)
        self.dw_bn = nn.BatchNorm2d(mid)
        reduced = se_channels(block, in_channels)
        self.se = SqueezeExcite(mid, reduced) if reduced else None
        self.project = nn.Conv2d(mid, block.out, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(block.out)
        self.act = _activation(block.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = self.act(self.expand_bn(self.expand(y)))
        y = self.act(self.dw_bn(self.dw(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project(y))
        return x + y if self.use_residual else y


class ArchNet(nn.Module):
    """The network an Arch describes; `blocks[i]` is the module of `arch.blocks[i]`."""

    def __init__(self, arch: Arch, in_channels: int, num_classes: int):
        super().__init__()
        validate_arch(arch, in_channels)
        self.arch, self.in_channels, self.num_classes = arch, in_channels, num_classes
        self.stem_conv = nn.Conv2d(in_channels, arch.stem, 3, arch.stem_stride, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(arch.stem)
        modules, channels = [], arch.stem
        for block in arch.blocks:
            modules.append(nn.Identity() if block.kind == "skip" else InvertedResidual(block, channels))
            channels = block.out
        self.blocks = nn.ModuleList(modules)
        self.head_conv = nn.Conv2d(channels, arch.head, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(arch.head)
        self.classifier = nn.Linear(arch.head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            x = block(x)
        x = F.relu(self.head_bn(self.head_conv(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def build_model(arch: Arch, in_channels: int, num_classes: int) -> ArchNet:
    """Freshly initialised model for `arch` (raises ArchError if the arch does not fit the input)."""
    _positive_int("num_classes", num_classes)
    return ArchNet(arch, in_channels, num_classes)


# ---------------------------------------------------------------- counting


@dataclass(frozen=True)
class BlockShape:
    """What one block sees: input channels and input/output spatial sizes (h, w)."""

    in_channels: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def _conv_out(size: tuple[int, int], kernel: int, stride: int) -> tuple[int, int]:
    pad = kernel // 2
    return tuple((n + 2 * pad - kernel) // stride + 1 for n in size)  # type: ignore[return-value]


def block_shapes(arch: Arch, in_channels: int, image_size: int | Sequence[int]) -> list[BlockShape]:
    """Shape seen by every block, in order (image_size may be an int or (h, w))."""
    size = _conv_out(_size(image_size), 3, arch.stem_stride)
    channels, shapes = arch.stem, []
    for block in arch.blocks:
        out_size = size if block.kind == "skip" else _conv_out(size, block.kernel, block.stride)
        shapes.append(BlockShape(channels, size, out_size))
        channels, size = block.out, out_size
    return shapes


def _block_macs(block: Block, shape: BlockShape) -> int:
    if block.kind == "skip":
        return 0
    cin, mid = shape.in_channels, mid_channels(block, shape.in_channels)
    in_pixels = shape.in_size[0] * shape.in_size[1]
    out_pixels = shape.out_size[0] * shape.out_size[1]
    macs = in_pixels * cin * mid if mid != cin else 0
    macs += out_pixels * mid * block.kernel * block.kernel
    macs += 2 * mid * se_channels(block, cin)  # SE convs run on the pooled 1x1 map
    return macs + out_pixels * mid * block.out


def count_macs(arch: Arch, in_channels: int, num_classes: int, image_size: int | Sequence[int]) -> int:
    """Multiply-accumulates of all conv and linear layers for one image (biases, BN, adds excluded)."""
    height, width = _conv_out(_size(image_size), 3, arch.stem_stride)
    macs = height * width * arch.stem * in_channels * 9
    shapes = block_shapes(arch, in_channels, image_size)
    macs += sum(_block_macs(block, shape) for block, shape in zip(arch.blocks, shapes))
    if shapes:
        height, width = shapes[-1].out_size
    last = arch.blocks[-1].out if arch.blocks else arch.stem
    return macs + height * width * last * arch.head + arch.head * num_classes


def _block_params(block: Block, cin: int) -> int:
    if block.kind == "skip":
        return 0
    mid, reduced = mid_channels(block, cin), se_channels(block, cin)
    params = (cin * mid + 2 * mid) if mid != cin else 0
    params += mid * block.kernel * block.kernel + 2 * mid
    if reduced:
        params += mid * reduced + reduced + reduced * mid + mid
    return params + mid * block.out + 2 * block.out


def count_arch_params(arch: Arch, in_channels: int, num_classes: int) -> int:
    """Analytic parameter count of build_model(arch, ...) without building it."""
    params = in_channels * arch.stem * 9 + 2 * arch.stem
    channels = arch.stem
    for block in arch.blocks:
        params += _block_params(block, channels)
        channels = block.out
    return params + channels * arch.head + 2 * arch.head + arch.head * num_classes + num_classes


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- layerwise space


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
                raise ArchError(f"block {_format_block(block)!r} is not a choice of layer {layer}")
            genome.append(choices.index(block))
        return tuple(genome)
