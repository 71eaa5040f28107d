"""Architectures of the default search space picked by MACs at CIFAR-10 geometry, for the training benchmarks."""

from __future__ import annotations

import itertools

from nasflow.spaces.layerwise import LayerwiseOptions
from nasflow.space import LayerwiseSpace, count_macs, format_arch

CIFAR_GEOMETRY = {"in_channels": 3, "num_classes": 10, "image_size": 32}


def archs_by_macs(geometry: dict[str, int] = CIFAR_GEOMETRY) -> list[tuple[int, str]]:
    """(MACs, architecture string) of every architecture of `LayerwiseSpace(LayerwiseOptions())`, cheapest first."""
    space = LayerwiseSpace(LayerwiseOptions())
    archs = (space.to_arch(g) for g in itertools.product(*(range(len(c)) for c in space.choices)))
    g = geometry
    return sorted((count_macs(a, g["in_channels"], g["num_classes"], g["image_size"]), format_arch(a)) for a in archs)


def smallest_middle_largest(geometry: dict[str, int] = CIFAR_GEOMETRY) -> dict[str, tuple[int, str]]:
    """The cheapest, the median and the costliest architecture of the default space by MACs."""
    ranked = archs_by_macs(geometry)
    return {"smallest": ranked[0], "middle": ranked[len(ranked) // 2], "largest": ranked[-1]}
