"""Search spaces: sets of architectures a search strategy explores."""

from .layerwise import LayerwiseSpace

__all__ = ["LayerwiseSpace"]
