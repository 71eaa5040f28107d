"""Published networks as architecture strings (`zoo:NAME[@WIDTH]`), checked against their papers' counts.

Names
-----
``zoo:mobilenet_v2`` is the network as published for 224x224 ImageNet. ``@W`` scales its widths
where the paper defines a width multiplier (``zoo:mobilenet_v2@0.5``: every channel count times
0.5, rounded to a multiple of 8 as the paper's reference code does). A ``_cifar`` suffix
(``zoo:mobilenet_v2_cifar@0.5``) gives the CIFAR-style variant for 32x32 inputs: the first two
stride-2 layers (the stem included) get stride 1, so a 32x32 input ends at 4x4 where 224x224
ends at 7x7; channels and blocks are unchanged.

Every entry lists where the grammar could not express the paper's network exactly; the counts
nasflow computes are within 3 % of the published MACs and parameters at 224x224 and 1,000
classes (``tests/test_zoo.py``; the README's zoo table).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..errors import ArchError
from .block import Block
from .fields import format_number
from .grammar import Arch, parse_arch
from .kinds import DSBlock, IRBlock

PREFIX = "zoo:"
CIFAR = "_cifar"


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10 % below it (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class ZooModel:
    """One published network: how to build it, what its paper says it costs, and where we differ."""

    name: str
    title: str
    source: str
    macs_m: float  # published multiply-adds, millions (224x224, 1000 classes)
    params_m: float  # published parameters, millions
    build: Callable[[float], Arch]
    width_multiplier: bool
    differences: tuple[str, ...]

    def arch(self, width: float = 1.0, cifar: bool = False) -> Arch:
        if width != 1.0 and not self.width_multiplier:
            scalable = ", ".join(m.name for m in ZOO.values() if m.width_multiplier)
            raise ArchError(f"zoo model {self.name!r} has no width multiplier (models that have one: {scalable})")
        arch = self.build(width)
        return cifar_variant(arch) if cifar else arch


def _stage(make: Callable[[int], Block], repeats: int, stride: int) -> list[Block]:
    return [make(stride if i == 0 else 1) for i in range(repeats)]


# ---------------------------------------------------------------- the networks


def _mobilenet_v1(width: float) -> Arch:
    # (output channels, stride) of the 13 depthwise-separable layers, Table 1 of the paper.
    layers = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    blocks = [DSBlock(kernel=3, out=c, stride=s) for c, s in layers]
    return Arch(stem=32, stem_stride=2, blocks=tuple(blocks), head=None)


def _mobilenet_v2(width: float) -> Arch:
    # (expansion t, channels c, repeats n, stride s), Table 2 of the paper.
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    blocks: list[Block] = []
    for t, c, n, s in table:
        out = make_divisible(c * width)
        blocks += _stage(lambda st, t=t, out=out: IRBlock(kernel=3, expansion=t, out=out, stride=st, act="relu6"), n, s)
    head = make_divisible(1280 * max(1.0, width))  # the last conv only ever widens
    return Arch(stem=make_divisible(32 * width), stem_stride=2, blocks=tuple(blocks), head=head,
                stem_act="relu6", head_act="relu6")


def _mnasnet_a1(width: float) -> Arch:
    # Figure 7(a) of the paper: (block, repeats, stride).
    def mb(k: int, e: int, c: int, se: float = 0.0):
        return lambda st: IRBlock(kernel=k, expansion=e, out=c, stride=st, se=se)

    stages = [
        (mb(3, 1, 16), 1, 1),  # SepConv: depthwise 3x3 + linear 1x1 = an ir block without expansion
        (mb(3, 6, 24), 2, 2),
        (mb(5, 3, 40, 0.25), 3, 2),
        (mb(3, 6, 80), 4, 2),
        (mb(3, 6, 112, 0.25), 2, 1),
        (mb(5, 6, 160, 0.25), 3, 2),
        (mb(3, 6, 320), 1, 1),
    ]
    blocks = [b for make, n, s in stages for b in _stage(make, n, s)]
    return Arch(stem=32, stem_stride=2, blocks=tuple(blocks), head=1280)


def _v3_blocks(rows: list[tuple[int, int, int, bool, str, int]]) -> tuple[Block, ...]:
    # (kernel, expanded width, out, SE, activation, stride): Tables 1 and 2 of the paper. The SE
    # bottleneck is a quarter of the expanded width, rounded to a multiple of 8.
    return tuple(
        IRBlock(kernel=k, mid=exp, out=out, stride=s, act=act, squeeze=make_divisible(exp / 4) if se else None)
        for k, exp, out, se, act, s in rows
    )


def _mobilenet_v3_large(width: float) -> Arch:
    RE, HS = "relu", "hswish"
    rows = [
        (3, 16, 16, False, RE, 1), (3, 64, 24, False, RE, 2), (3, 72, 24, False, RE, 1),
        (5, 72, 40, True, RE, 2), (5, 120, 40, True, RE, 1), (5, 120, 40, True, RE, 1),
        (3, 240, 80, False, HS, 2), (3, 200, 80, False, HS, 1), (3, 184, 80, False, HS, 1), (3, 184, 80, False, HS, 1),
        (3, 480, 112, True, HS, 1), (3, 672, 112, True, HS, 1),
        (5, 672, 160, True, HS, 2), (5, 960, 160, True, HS, 1), (5, 960, 160, True, HS, 1),
    ]
    return Arch(stem=16, stem_stride=2, stem_act=HS, blocks=_v3_blocks(rows), head=960, head_fc=1280, head_act=HS)


def _mobilenet_v3_small(width: float) -> Arch:
    RE, HS = "relu", "hswish"
    rows = [
        (3, 16, 16, True, RE, 2), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1),
        (5, 96, 40, True, HS, 2), (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1),
        (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1),
        (5, 288, 96, True, HS, 2), (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1),
    ]
    return Arch(stem=16, stem_stride=2, stem_act=HS, blocks=_v3_blocks(rows), head=576, head_fc=1024, head_act=HS)


def _fbnet_c(width: float) -> Arch:
    # FBNet's macro-architecture (Table 1) with FBNet-C's block per layer (Figure 4); skip layers dropped.
    def ir(k: int, e: int, c: int):
        return lambda st: IRBlock(kernel=k, expansion=e, out=c, stride=st)

    stages = [
        [(ir(3, 1, 16), 1, 1)],
        [(ir(3, 6, 24), 1, 2), (ir(3, 1, 24), 2, 1)],
        [(ir(5, 6, 32), 1, 2), (ir(5, 3, 32), 1, 1), (ir(5, 6, 32), 1, 1), (ir(3, 6, 32), 1, 1)],
        [(ir(5, 6, 64), 1, 2), (ir(5, 3, 64), 1, 1), (ir(5, 6, 64), 2, 1)],
        [(ir(5, 6, 112), 3, 1), (ir(5, 3, 112), 1, 1)],
        [(ir(5, 6, 184), 4, 2)],
        [(ir(3, 6, 352), 1, 1)],
    ]
    blocks = [b for stage in stages for make, n, s in stage for b in _stage(make, n, s)]
    return Arch(stem=16, stem_stride=2, blocks=tuple(blocks), head=1984)


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            "mobilenet_v1", "MobileNetV1 1.0", "Howard et al. 2017, arXiv:1704.04861, Table 1 and 8",
            569, 4.2, _mobilenet_v1, False,
            ("none: 13 `ds` layers and no head conv, pooling follows the last one",),
        ),
        ZooModel(
            "mobilenet_v2", "MobileNetV2 1.0", "Sandler et al. 2018, arXiv:1801.04381, Table 2 and 4",
            300, 3.4, _mobilenet_v2, True,
            ("none (ReLU6 throughout; the first block has no expansion conv, as in the paper); with BN's scale "
             "and shift the model has 3.50 M, 3.1 % over the paper's BN-free 3.4 M (TensorFlow's checkpoint table: 3.47 M)",),
        ),
        ZooModel(
            "mnasnet_a1", "MnasNet-A1", "Tan et al. 2019, arXiv:1807.11626, Figure 7 and Table 1",
            312, 3.9, _mnasnet_a1, False,
            ("squeeze-excite gates with a sigmoid in the paper, a hard-sigmoid here (same counts)",
             "SepConv is written `ir_k3_e1` (depthwise + linear 1x1, exactly what it computes)"),
        ),
        ZooModel(
            "mobilenet_v3_large", "MobileNetV3-Large 1.0", "Howard et al. 2019, arXiv:1905.02244, Table 1 and 3",
            219, 5.4, _mobilenet_v3_large, False,
            ("none in structure (SE width `sq` = a quarter of the expanded width rounded to 8; head `c960_f1280`); "
             "dropout before the classifier is not modelled (no parameters or MACs)",),
        ),
        ZooModel(
            "mobilenet_v3_small", "MobileNetV3-Small 1.0", "Howard et al. 2019, arXiv:1905.02244, Table 2 and 3",
            56, 2.5, _mobilenet_v3_small, False,
            ("Table 2 marks squeeze-excite on the last 1x1 conv (576); the reference implementations have none "
             "there and neither has this head",),
        ),
        ZooModel(
            "fbnet_c", "FBNet-C", "Wu et al. 2019, arXiv:1812.03443, Table 1 and Figure 4",
            375, 5.5, _fbnet_c, False,
            ("FBNet's blocks keep their 1x1 expansion conv at e1 (3 blocks here); nasflow's `ir` drops it when "
             "mid == in: 6.8 M fewer MACs and 1.4 k fewer parameters",
             "the block of each layer follows timm's reading of Figure 4 (`fbnetc_100`); skip layers are left out"),
        ),
    )
}
"""Zoo models by name."""


def zoo_names() -> list[str]:
    return list(ZOO)


def small_input_strides(strides: Sequence[int]) -> list[int]:
    """`strides` (stem first) with the first two above 1 set to 1: the CIFAR-style variants' rule,
    so a 32x32 input ends at 4x4 where a network built for 224x224 ends at 7x7."""
    left, out = 2, []
    for stride in strides:
        if left and stride > 1:
            stride, left = 1, left - 1
        out.append(stride)
    return out


def cifar_variant(arch: Arch) -> Arch:
    """`arch` with its first two stride-2 layers (the stem included) at stride 1 (32x32 inputs)."""
    strides = small_input_strides([arch.stem_stride, *(getattr(b, "stride", 1) for b in arch.blocks)])
    blocks = tuple(
        replace(block, stride=stride) if getattr(block, "stride", 1) != stride else block  # type: ignore[type-var]
        for block, stride in zip(arch.blocks, strides[1:])
    )
    return replace(arch, stem_stride=strides[0], blocks=blocks)


def _split_name(text: str) -> tuple[ZooModel, float, bool]:
    name, _, width_text = text.partition("@")
    base, cifar = (name[: -len(CIFAR)], True) if name.endswith(CIFAR) else (name, False)
    if base not in ZOO:
        raise ArchError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)} (each also as NAME{CIFAR})")
    width = 1.0
    if width_text:
        try:
            width = float(width_text)
        except ValueError:
            width = float("nan")
        if not width > 0 or width == float("inf"):
            raise ArchError(f"zoo width multiplier must be a positive number, got {width_text!r} in {text!r}")
    return ZOO[base], width, cifar


def zoo_arch(name: str) -> Arch:
    """The architecture of a zoo name (``mobilenet_v2@0.5``, ``mobilenet_v2_cifar``; the ``zoo:`` prefix is optional)."""
    text = name.strip()
    if text.startswith(PREFIX):
        text = text[len(PREFIX):]
    model, width, cifar = _split_name(text)
    return model.arch(width, cifar)


def canonical_zoo_name(name: str) -> str:
    """``zoo:mobilenet_v2@0.50`` -> ``zoo:mobilenet_v2@0.5``; the width is left out at 1."""
    text = name.strip()
    text = text[len(PREFIX):] if text.startswith(PREFIX) else text
    model, width, cifar = _split_name(text)
    suffix = "" if width == 1.0 else f"@{format_number(width)}"
    return f"{PREFIX}{model.name}{CIFAR if cifar else ''}{suffix}"


def resolve_arch(text: str) -> Arch:
    """An architecture from a spec or the command line: ``zoo:NAME[@WIDTH]`` or an architecture string."""
    if isinstance(text, str) and text.strip().startswith(PREFIX):
        return zoo_arch(text)
    return parse_arch(text)
