"""Architecture records and their canonical string form: parse, format, hash, validate (no torch).

An architecture is written as layers joined by ``-``; each layer is a kind followed by
``_``-separated fields, a field being a key immediately followed by its value::

    stem_c16_s1-ir_k3_e6_c24_s2-ir_k5_m40_c24_s1_se0.25_ahswish-skip_c24-head_c64

``stem`` comes first and ``head`` last, exactly once each; every layer between is a block of a
kind in :data:`nasflow.arch.kinds.KINDS` (``ir``, ``fir``, ``ds``, ``conv``, ``skip``). The
README's "Architecture strings" section lists every field.

Canonical form (what ``format_arch`` writes and ``arch_hash`` hashes): each layer's fields in its
kind's order, defaults omitted, numbers without trailing zeros. ``parse_arch`` also accepts any
field order, explicit defaults and non-canonical numbers, and ``format_arch(parse_arch(s)) == s``
for every canonical ``s``. Error messages name the offending layer token and its position: the
0-based index of the layer in the ``-``-separated list (the stem is position 0, block ``i`` is
position ``i + 1``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..errors import ArchError
from .block import Block
from .fields import activation, format_token, optional_positive_int, parse_fields, positive_int
from .kinds import KINDS, ConvBlock

STEM_KERNEL = 3


@dataclass(frozen=True)
class Arch:
    """A whole network: a 3x3 stem conv, blocks in order, and a head.

    The head is an optional 1x1 conv to ``head`` channels + BN + act, global average pooling,
    an optional fully connected layer to ``head_fc`` + act (MobileNetV3's 1280-wide one), then
    the linear classifier. ``head=None`` pools straight after the last block (MobileNetV1).
    """

    stem: int
    stem_stride: int
    blocks: tuple[Block, ...] = field(default_factory=tuple)
    head: int | None = 64
    stem_act: str = "relu"
    head_act: str = "relu"
    head_fc: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "stem", positive_int("stem channels", self.stem))
        set_(self, "stem_stride", positive_int("stem stride", self.stem_stride))
        set_(self, "head", optional_positive_int("head channels", self.head))
        set_(self, "head_fc", optional_positive_int("head fc channels", self.head_fc))
        set_(self, "stem_act", activation(self.stem_act))
        set_(self, "head_act", activation(self.head_act))
        if self.head is None and self.head_fc is None and self.head_act != "relu":
            # It would act on nothing, and two strings would name one network.
            raise ArchError("a head without c<channels> or f<fc channels> has no activation to set")
        blocks = tuple(self.blocks)  # lists are accepted but the record must stay hashable
        for block in blocks:
            if not isinstance(block, Block):
                raise ArchError(f"arch blocks must be Block records, got {block!r}")
        set_(self, "blocks", blocks)

    def __str__(self) -> str:
        return format_arch(self)

    @property
    def stem_block(self) -> ConvBlock:
        """The stem as the conv block it computes (3x3 conv + BN + act)."""
        return ConvBlock(kernel=STEM_KERNEL, out=self.stem, stride=self.stem_stride, act=self.stem_act)

    @property
    def last_channels(self) -> int:
        """Channels the head receives."""
        return self.blocks[-1].out if self.blocks else self.stem

    @property
    def features(self) -> int:
        """Width of the vector the classifier reads."""
        return self.head_fc or self.head or self.last_channels

    def stem_token(self) -> str:
        fields: list[tuple[str, object]] = [("c", self.stem), ("s", self.stem_stride)]
        if self.stem_act != "relu":
            fields.append(("a", self.stem_act))
        return format_token("stem", fields)

    def head_token(self) -> str:
        fields: list[tuple[str, object]] = []
        if self.head is not None:
            fields.append(("c", self.head))
        if self.head_fc is not None:
            fields.append(("f", self.head_fc))
        if self.head_act != "relu":
            fields.append(("a", self.head_act))
        return format_token("head", fields)


_STEM = {"allowed": ("c", "s", "a"), "required": ("c", "s")}
_HEAD = {"allowed": ("c", "f", "a"), "required": ()}


def _expected_kinds() -> str:
    return f"expected stem, head or a block kind: {', '.join(KINDS)}"


def _parse_block(kind: str, parts: list[str]) -> Block:
    cls = KINDS[kind]
    fields = parse_fields(kind, parts, cls.ALLOWED, cls.REQUIRED, cls.ONE_OF)
    return cls.from_fields(fields)


def _parse_layer(token: str, position: int, last: int) -> object:
    kind, *parts = token.split("_")
    if kind not in KINDS and kind not in ("stem", "head"):
        raise ArchError(f"unknown layer kind {kind!r} ({_expected_kinds()})")
    if (kind == "stem") != (position == 0):
        raise ArchError("the stem must be the first layer, and only the first")
    if (kind == "head") != (position == last):
        raise ArchError("the head must be the last layer, and only the last")
    if kind == "stem":
        return parse_fields("stem", parts, _STEM["allowed"], _STEM["required"])
    if kind == "head":
        return parse_fields("head", parts, _HEAD["allowed"], _HEAD["required"])
    return _parse_block(kind, parts)


def parse_arch(text: str) -> Arch:
    """Parse an architecture string (see the module docstring); raises ArchError naming the bad token."""
    if not isinstance(text, str) or not text.strip():
        raise ArchError("architecture string is empty")
    tokens = text.strip().split("-")
    if len(tokens) < 2:
        raise ArchError(f"architecture {text!r} needs at least a stem and a head layer")
    layers: list[object] = []
    for position, token in enumerate(tokens):
        try:
            layers.append(_parse_layer(token, position, len(tokens) - 1))
        except ArchError as exc:
            raise ArchError(f"bad token {token!r} at position {position}: {exc}") from None
    stem, *blocks, head = layers
    try:
        return Arch(
            stem=stem["c"],  # type: ignore[index]
            stem_stride=stem["s"],  # type: ignore[index]
            stem_act=stem.get("a", "relu"),  # type: ignore[attr-defined]
            blocks=tuple(blocks),  # type: ignore[arg-type]
            head=head.get("c"),  # type: ignore[attr-defined]
            head_fc=head.get("f"),  # type: ignore[attr-defined]
            head_act=head.get("a", "relu"),  # type: ignore[attr-defined]
        )
    except ArchError as exc:
        raise ArchError(f"bad token {tokens[-1]!r} at position {len(tokens) - 1}: {exc}") from None


def format_block(block: Block) -> str:
    """Canonical token of one block (``ir_k3_e6_c24_s2``, ``skip_c24``)."""
    return block.token()


def format_arch(arch: Arch) -> str:
    """Canonical string of an architecture."""
    return "-".join([arch.stem_token(), *(block.token() for block in arch.blocks), arch.head_token()])


def arch_hash(arch: Arch | str) -> str:
    """16 hex chars identifying an architecture (sha256 of its canonical string)."""
    canonical = format_arch(parse_arch(arch) if isinstance(arch, str) else arch)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def validate_arch(arch: Arch, in_channels: int) -> None:
    """Check what a lone Block cannot: that each block accepts the channels its predecessor gives it."""
    positive_int("input channels", in_channels)
    channels = arch.stem
    for index, block in enumerate(arch.blocks):
        try:
            block.check_input(channels)
        except ArchError as exc:
            raise ArchError(f"bad token {block.token()!r} at position {index + 1}: {exc}") from None
        channels = block.out
