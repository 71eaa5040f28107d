"""Search spaces: the built-in `space` plugins and the one place a spec's space is built.

Nothing outside a space's own module names a concrete space class: flows, the LUT layer and the
predictors take whatever `make_space` returns (a `nasflow.plugin_api.SearchSpace`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plugin_api import Geometry, SearchSpace

if TYPE_CHECKING:
    from ..config import DatasetConfig, SpaceRef
    from ..data import Dataset


def make_space(ref: "SpaceRef", geometry: Geometry | None = None) -> SearchSpace:
    """The space plugin a spec's `space:` section names, with its options validated."""
    from ..plugins import get_plugins

    return get_plugins().create("space", ref.name, ref.options, geometry)  # type: ignore[return-value]


def dataset_geometry(data: "Dataset", batch_size: int = 1) -> Geometry:
    """The geometry networks are built for on a loaded dataset."""
    return Geometry(data.in_channels, data.num_classes, tuple(data.input_shape[2:]), batch_size)


def known_geometry(cfg: "DatasetConfig") -> Geometry | None:
    """The input size and channels a dataset section fixes before any image is read (digits: 8x8
    grey; an image folder with `image_size`), for checking a space at validation; None when only
    loading the data tells. The class count does not change what `SearchSpace.problems` checks."""
    if cfg.name == "digits":
        return Geometry(cfg.channels or 1, 10, cfg.image_size or DIGITS_SIZE)
    if cfg.image_size is not None:
        return Geometry(cfg.channels or 3, 10, cfg.image_size)
    return None


DIGITS_SIZE = 8
"""scikit-learn's digits are 8x8 images."""


__all__ = ["DIGITS_SIZE", "Geometry", "SearchSpace", "dataset_geometry", "known_geometry", "make_space"]
