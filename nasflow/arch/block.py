"""The protocol every block kind implements, and the records it hands to counting, LUTs and pruning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields as dataclass_fields
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ArchError
from .fields import format_token

if TYPE_CHECKING:  # torch and the Edge TPU estimator are imported only where a kind needs them
    from torch import nn

    from ..edgetpu import Net

Size = tuple[int, int]


def same_out(size: Size, kernel: int, stride: int) -> Size:
    """Output size of a kxk window with 'same' padding (k // 2, odd k): ceil(n / stride)."""
    pad = kernel // 2
    return tuple((n + 2 * pad - kernel) // stride + 1 for n in size)  # type: ignore[return-value]


@dataclass(frozen=True)
class BlockShape:
    """What one block sees: input channels and input/output spatial sizes (h, w)."""

    in_channels: int
    in_size: Size
    out_size: Size

    @property
    def in_pixels(self) -> int:
        return self.in_size[0] * self.in_size[1]

    @property
    def out_pixels(self) -> int:
        return self.out_size[0] * self.out_size[1]


@dataclass(frozen=True)
class PrunableGroup:
    """Channels inside one block that can shrink together (MorphNet's unit of pruning).

    ``field`` is the record field that sets the group's width (``"mid"``); ``gate`` the
    attribute of the block's module holding the BatchNorm whose scale gates exactly these
    channels; ``avoid`` widths the group must not take (an ``ir`` block whose mid width equals
    its input width loses its expansion conv); ``can_vanish`` says the block may become an
    identity when every channel dies (only a residual block computes ``x + 0``).
    """

    field: str
    width: int
    gate: str
    can_vanish: bool
    avoid: tuple[int, ...] = ()


class _BlockType(type):
    """Lets ``Block("ir", kernel=3, ...)`` build the record of the named kind, as before kinds were classes."""

    def __call__(cls, *args: Any, **kwargs: Any):
        if cls is not Block:
            return super().__call__(*args, **kwargs)
        from .kinds import kind_class  # noqa: PLC0415 (the table imports this module)

        if args:
            kind, args = args[0], args[1:]
        else:
            kind = kwargs.pop("kind", None)
        record = kind_class(kind)
        known = {f.name for f in dataclass_fields(record)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ArchError(f"{kind!r} blocks have no field {unknown[0]!r} (their fields: {', '.join(sorted(known))})")
        return record(*args, **kwargs)


class Block(metaclass=_BlockType):
    """One layer after the stem. Each kind is a frozen dataclass subclass registered in `kinds.KINDS`.

    A kind owns everything that depends on what the block computes: its fields and token, its
    output shape, MACs and parameters, its LUT operator, its torch module, its Edge TPU
    operators and its prunable channel groups. Every kind has ``out`` (output channels).
    """

    kind: ClassVar[str]
    ALLOWED: ClassVar[tuple[str, ...]]  # field keys of its token
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    ONE_OF: ClassVar[tuple[tuple[tuple[str, ...], bool], ...]] = ()
    out: int

    # --- string form

    @classmethod
    def from_fields(cls, fields: dict[str, object]) -> Block:
        """The record of parsed token fields (keys as written: ``k``, ``e``, ...)."""
        raise NotImplementedError

    def fields(self) -> list[tuple[str, object]]:
        """Canonical (key, value) pairs of the token, in order, defaults left out."""
        raise NotImplementedError

    def token(self) -> str:
        return format_token(self.kind, self.fields())

    # --- shapes and cost

    def check_input(self, in_channels: int) -> None:
        """ArchError (without position) if the block cannot take `in_channels` channels."""

    def out_size(self, size: Size) -> Size:
        return size

    def residual(self, in_channels: int) -> bool:
        """Whether the block adds its input to its output (an identity shortcut) when fed `in_channels`."""
        return False

    def macs(self, shape: BlockShape) -> int:
        """Multiply-accumulates of its conv and linear layers for one image (BN, adds excluded)."""
        return 0

    def params(self, in_channels: int) -> int:
        """Parameters of `module(in_channels)` (BN scale and shift included, running stats not)."""
        return 0

    def norm_params(self, in_channels: int) -> int:
        """The part of `params` that is BatchNorm scale and shift (papers leave it out of their counts)."""
        return 0

    def activations(self, shape: BlockShape) -> int:
        """Elements of the tensors it reads and writes, intermediates included, one image."""
        return 0

    # --- latency tables

    def lut_key(self, in_channels: int) -> str | None:
        """Its operator in a latency LUT (token ``@`` input channels); None when it executes nothing."""
        return f"{self.token()}@{int(in_channels)}"

    def lut_family(self, in_channels: int) -> str:
        """``"dense"`` when a regular or expansion conv dominates its cost, ``"depthwise"`` otherwise.

        The calibrated latency predictor scales the LUT entries of the two families separately.
        """
        return "dense"

    # --- models

    def module(self, in_channels: int) -> nn.Module:
        """A freshly initialised torch module computing the block (torch is imported here, not above)."""
        raise NotImplementedError

    def edgetpu(self, net: Net, prefix: str) -> None:
        """Append its operators, as the Edge TPU estimator sees them, to `net` (whose shape is its input)."""

    # --- pruning

    def prunable(self, in_channels: int) -> tuple[PrunableGroup, ...]:
        """Channel groups inside the block that may shrink (its input and output widths are its neighbours')."""
        return ()

    def with_width(self, field: str, width: int) -> Block:
        """The same block with one prunable group resized."""
        raise ArchError(f"{self.kind!r} blocks have no prunable group {field!r}")

    # --- resizing its input and output (MorphNet's shared widths)

    output_gate: ClassVar[str | None] = None
    """Attribute of its module holding the BatchNorm that produces its output channels (None: it has none)."""

    def input_gates(self, in_channels: int) -> tuple[str, ...]:
        """Attributes of its module holding BatchNorms whose channels are its input's (after a depthwise conv)."""
        return ()

    def resizable_io(self) -> bool:
        """Whether its input and output widths may change (False where grouped convs tie them to the groups)."""
        return True

    def passes_input(self, in_channels: int) -> bool:
        """Whether its output channels are its input's: an identity shortcut adds to them (or it is an identity)."""
        return self.residual(in_channels)

    def pinned(self, in_channels: int) -> Block:
        """The same block with the widths that follow its input (``e``, ``se``) written out for `in_channels`,
        so they stay when the input width changes."""
        return self


def check_groups(name: str, groups: int, channels: Sequence[tuple[str, int]]) -> None:
    """ArchError unless every listed width divides into `groups` groups."""
    for what, width in channels:
        if width % groups:
            raise ArchError(f"{name}: {what} {width} is not divisible by groups {groups}")
