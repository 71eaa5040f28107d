"""Base classes and records that plugins (built-in and third-party) implement and return."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel

from .errors import DeviceError
from .strict import StrictModel

if TYPE_CHECKING:  # heavy imports only for type checkers
    import torch

    from .config import TrainConfig
    from .data import Dataset
    from .space import Arch, LayerwiseSpace

Genome = tuple[int, ...]
"""One choice index per searchable layer of a LayerwiseSpace."""

Source = Literal["measured", "lut", "predicted", "estimated"]


class PluginOptions(StrictModel):
    """Base for a plugin's `Options` model: validated like spec keys (unknown keys are errors,
    `threads: true` or `threads: 2.5` are not coerced, strings are paths for `Path` fields)."""


class NoOptions(PluginOptions):
    """Options model for plugins that take none: any key is an error."""


class Plugin(ABC):
    """Common surface of every plugin: a unique name used in YAML and a pydantic options model."""

    kind: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()


# ---------------------------------------------------------------- devices


@dataclass(frozen=True)
class LatencyStats:
    """Summary of repeated timings of one inference, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    runs: int
    warmup: int
    rel_ci: float  # half-width of the 95 % CI of the median, relative to the median
    outliers: int = 0  # timings set aside: contended windows and single outliers (> median + 5 * MAD)


ENERGY_EXTRA_KEY = "energy_mj_per_image"
"""A device that measures energy puts millijoules per image under this key of `Measurement.extra`;
the registry then records it as a row of its own (`metric = 'energy'`, `unit = 'mJ'`)."""


@dataclass(frozen=True)
class Measurement:
    """One latency number for one model on one device, with where it came from.

    `extra` holds everything else the device knows (compiler op counts, input shape, energy under
    ENERGY_EXTRA_KEY); it is stored with the measurement in the registry.
    """

    device: str
    runtime: str  # e.g. "torch 2.13.0" or "onnxruntime 1.31.1"
    artifact_format: str  # "pytorch", "onnx", ...
    source: Source
    stats: LatencyStats
    threads: int
    batch_size: int
    fingerprint: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


class DeviceBackend(Plugin):
    """A place where models run and are timed."""

    kind = "device"
    artifact_formats: ClassVar[tuple[str, ...]] = ()
    """Deployed artifact formats `measure_artifact` accepts (besides live PyTorch modules)."""

    @classmethod
    def unavailable_reason(cls, options: BaseModel | None = None) -> str | None:
        """None when usable here; otherwise what is missing and how to get it.

        `options` are the device's validated options from the spec (None: the defaults), for
        backends whose availability depends on them (a GPU index, a phone's serial).
        """
        return None

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """CPU/accelerator model, runtime and library versions, thread count."""

    @abstractmethod
    def measure_model(self, model: "torch.nn.Module", input_shape: tuple[int, ...]) -> Measurement:
        """Time one inference of `model` on an input of `input_shape` (batch first)."""

    def measure_artifact(self, path: str, fmt: str, input_shape: tuple[int, ...]) -> Measurement:
        """Time a deployed artifact; only for formats in `artifact_formats`."""
        raise DeviceError(f"device {self.name!r} cannot run {fmt!r} artifacts")

    def make_measurement(
        self,
        stats: LatencyStats,
        *,
        runtime: str,
        artifact_format: str,
        threads: int,
        batch_size: int,
        extra: dict[str, Any] | None = None,
        source: Source = "measured",
        fingerprint: dict[str, Any] | None = None,
    ) -> Measurement:
        """A Measurement from this device: its name and fingerprint, with the fingerprint's hash in `extra`.

        `fingerprint` defaults to the device's current one; pass it when it was read already.
        """
        from .fingerprint import fingerprint_hash

        fp = self.fingerprint() if fingerprint is None else fingerprint
        return Measurement(
            device=self.name,
            runtime=runtime,
            artifact_format=artifact_format,
            source=source,
            stats=stats,
            threads=threads,
            batch_size=batch_size,
            fingerprint=fp,
            extra={"fingerprint_hash": fingerprint_hash(fp), **(extra or {})},
        )

    def prepare(
        self,
        jobs: Sequence[tuple["torch.nn.Module", tuple[int, ...]]],
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Optional: get ready to measure many (model, input shape) pairs, e.g. convert them all.

        Called before a batch of `measure_model` calls (a LUT, calibration models) so that slow
        per-model work can run in parallel, away from the timing. It must not raise for one bad
        model: `measure_model` reports that model's failure when it gets to it.
        """


# ---------------------------------------------------------------- search


class SearchStrategy(Plugin):
    """Ask/tell search: propose genomes, receive their scores (higher is better, None = failed)."""

    kind = "search"

    def __init__(self, options: BaseModel | None, space: "LayerwiseSpace", seed: int):
        super().__init__(options)
        self.space = space
        self.rng = random.Random(seed)

    @abstractmethod
    def ask(self, n: int) -> list[Genome]:
        """Propose up to `n` genomes to evaluate next."""

    @abstractmethod
    def tell(self, results: list[tuple[Genome, float | None]]) -> None:
        """Receive scores for genomes returned by the last `ask`, in the same order."""


# ---------------------------------------------------------------- compressors


@dataclass
class CompressContext:
    """Everything a compressor may use; it must not touch the registry itself."""

    model: "torch.nn.Module"  # trained parent
    arch: "Arch"
    dataset: "Dataset"
    train_config: "TrainConfig"
    input_shape: tuple[int, ...]  # (1, C, H, W)
    progress: Any = None  # callable(step: str, done: int, total: int) or None


@dataclass
class CompressResult:
    model: "torch.nn.Module"
    arch: "Arch"
    val_accuracy: float
    val_loss: float
    stats: dict[str, Any] = field(default_factory=dict)


class Compressor(Plugin):
    """Turns a trained model into a smaller child model (recorded as a child candidate)."""

    kind = "compressor"

    @abstractmethod
    def compress(self, ctx: CompressContext) -> CompressResult:
        """Shrink (and fine-tune) ctx.model; return the child with its validation metrics."""
