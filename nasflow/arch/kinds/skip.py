"""`skip`: an identity layer (a searchable "no block here")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ...errors import ArchError
from ..block import Block
from ..fields import positive_int

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class SkipBlock(Block):
    """Passes its input on; only valid where the input has ``c`` channels. Executes nothing."""

    kind: ClassVar[str] = "skip"
    ALLOWED: ClassVar[tuple[str, ...]] = ("c",)
    REQUIRED: ClassVar[tuple[str, ...]] = ("c",)

    out: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", positive_int("channels", self.out))

    @classmethod
    def from_fields(cls, fields: dict[str, object]) -> SkipBlock:
        return cls(out=fields["c"])  # type: ignore[arg-type]

    def fields(self) -> list[tuple[str, object]]:
        return [("c", self.out)]

    def check_input(self, in_channels: int) -> None:
        if in_channels != self.out:
            raise ArchError(f"skip needs in == out channels, but its input has {in_channels}")

    def lut_key(self, in_channels: int) -> str | None:
        return None

    def module(self, in_channels: int) -> nn.Module:
        from torch import nn  # noqa: PLC0415

        return nn.Identity()

    def passes_input(self, in_channels: int) -> bool:
        return True
