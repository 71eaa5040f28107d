"""Base classes and records that plugins (built-in and third-party) implement and return."""

from __future__ import annotations

import math
import numbers
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from .errors import ArchError, DeviceError
from .strict import StrictModel

if TYPE_CHECKING:  # heavy imports only for type checkers
    import numpy as np
    import torch

    from .config import TrainConfig
    from .data import Dataset
    from .arch import Arch, Block
    from .arch.operators import Operator

Genome = tuple[int, ...]
"""One choice index per decision of a search space (see `SearchSpace.decisions`)."""

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


# ---------------------------------------------------------------- exporters


@dataclass(frozen=True)
class CheckInputs:
    """What an artifact is verified on: held-out inputs compared output by output, the test split
    scored, and the limits of the verdict (`deploy.atol`, `deploy.max_accuracy_drop`)."""

    held_out: "np.ndarray"
    test_images: "np.ndarray"
    test_labels: "np.ndarray"
    atol: float
    max_accuracy_drop: float


@dataclass(frozen=True)
class ArtifactCheck:
    """The numbers verifying an artifact produced, and its verdict (`failure` says why it failed)."""

    max_abs_err: float
    cosine_diff: float  # largest 1 - cosine similarity of an input's outputs
    tolerance: float
    accuracy: float  # the artifact itself on the test split
    reference_accuracy: float  # the PyTorch float32 model on the same images
    top1_agreement: float  # share of test images whose top-1 class the two agree on
    max_accuracy_drop: float
    passed: bool
    failure: str | None = None


class Exporter(Plugin):
    """Writes a model in one deployable format and says how far the file is from the PyTorch model.

    A subclass names its format (`name`, the value in `deploy.formats`), its file `suffix`,
    whether it is `quantized` (then it gets real training images to calibrate on and is judged
    by its accuracy drop rather than by its output difference), and implements `export` and
    `runner`; `verify` is shared. Devices list the formats they time in `artifact_formats`.
    """

    kind = "exporter"
    suffix: ClassVar[str]
    quantized: ClassVar[bool] = False

    def __init__(self, options: BaseModel | None = None, opset: int = 17):
        super().__init__(options)
        self.opset = opset  # `deploy.opset`, for the formats built on ONNX

    @classmethod
    def unavailable_reason(cls, options: BaseModel | None = None) -> str | None:
        """None when this format can be written and run here; otherwise what is missing."""
        return None

    def note(self) -> str | None:
        """Said once before deploying when this format will produce something other than its name
        suggests here (edgetpu without the compiler); None otherwise."""
        return None

    @property
    def calibration_images(self) -> int:
        """How many training images `export` calibrates on (0: it needs none)."""
        return int(getattr(self.options, "calibration_images", 0)) if self.quantized else 0

    def settings(self) -> dict[str, Any]:
        """What goes into the file besides the weights: part of the artifact's identity."""
        return self.options.model_dump(mode="json")

    @abstractmethod
    def export(self, model: "torch.nn.Module", example: "np.ndarray", path: Path, calibration: "np.ndarray | None") -> Path:
        """Write `model` (traced on `example`, one batch-1 input) at `path`; `calibration` holds
        training images when `quantized`. Returns the path written."""

    @abstractmethod
    def runner(self, path: Path) -> "Callable[[np.ndarray], np.ndarray]":
        """A function running the file at `path` by its own runtime: float32 batch in, float32 logits out."""

    def describe(self, path: Path) -> dict[str, Any] | None:
        """What the deployment folder's manifest says about the file beyond the registry row: its
        `inputs` and `outputs` tensors (name, shape, dtype, quantization; see nasflow.export.tensors),
        read from the file, and any format-specific fields; None: nothing known."""
        return None

    def verify(self, model: "torch.nn.Module", path: Path, inputs: CheckInputs) -> ArtifactCheck:
        """Compare the file with `model` on `inputs`; the verdict follows the format's kind."""
        from .export.verify import check_artifact

        return check_artifact(model, self.runner(path), inputs, self.quantized)


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

    def op_support(self, block: "Block", in_channels: int) -> OpSupport:
        """How this device runs `block` fed `in_channels` channels; spaces derived from a device
        (`edgetpu`) drop what is not `supported`. Default: everything runs."""
        return OpSupport()

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


SupportLevel = Literal["supported", "slow", "unsupported"]


@dataclass(frozen=True)
class OpSupport:
    """How well a device runs one block: `supported`; `slow` (the device runs it, but off its fast
    path, e.g. a kernel its matrix unit fills poorly); or `unsupported` (the device does not run
    it: an Edge TPU leaves it, and every later operator, to the host CPU); with the reason for
    anything but `supported`."""

    level: SupportLevel = "supported"
    reason: str = ""


# ---------------------------------------------------------------- search


@dataclass(frozen=True)
class DeviceLatency:
    """A candidate's latency on one device, in ms, and where the number came from."""

    ms: float
    source: Source


@dataclass(frozen=True, eq=False)
class CandidateResult:
    """Everything the search learned about one proposed genome, as told to a strategy.

    It unpacks as ``(genome, score)``, the form strategies were told before, so a strategy
    written as ``for genome, score in results`` keeps working unchanged.
    """

    genome: Genome
    score: float | None
    """The spec's scalar objective (higher is better); None when the candidate failed."""
    accuracy: float | None = None
    accuracy_source: str | None = None
    """`proxy` (search-time training on validation), `supernet`, `full` or `artifact`."""
    latency: dict[str, DeviceLatency] = field(default_factory=dict)
    """Per device, the latency on the search's own scale (its LUT or predictor when it uses one)."""
    energy_mj: dict[str, float] = field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    error: str | None = None
    """Why the candidate failed (None when it succeeded)."""
    costs: tuple[float, ...] | None = None
    """The values of `objectives.pareto`, each turned into a cost to minimise (accuracy negated),
    in the spec's order; None when the spec sets no Pareto objectives or a value is missing."""
    reused_from: str | None = None
    """The run whose recorded numbers these are, when they came from an earlier run (warm start)."""

    @property
    def failed(self) -> bool:
        return self.score is None

    def __iter__(self):
        yield self.genome
        yield self.score

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        return (self.genome, self.score)[index]


class Strategy(Plugin):
    """What both search protocols share: the `search` kind, the space and a seed, and what the
    spec checks ask of a strategy before the run. Subclass `SearchStrategy` (ask/tell) or
    `SupernetStrategy` (one-shot), never this class directly."""

    kind = "search"

    protocol: ClassVar[str] = ""
    """`ask/tell` or `supernet`: how the search stage drives the strategy (`nasflow plugins` shows it)."""

    needs_supernet: ClassVar[bool] = False
    """True for one-shot strategies that train `space.supernet()`; refused on spaces without one."""

    pareto_support: ClassVar[Literal["refused", "accepted", "required"]] = "refused"
    """Whether the strategy works with `objectives.pareto` (it reads `CandidateResult.costs`):
    `refused` (it ranks by the scalar score, so a Pareto spec is refused at validation),
    `accepted` (it works either way) or `required`."""

    pareto_labels: tuple[str, ...] = ()
    """The spec's Pareto objectives (`accuracy`, `latency@litert`, ...), set by the search before
    the first `ask`; the order of `CandidateResult.costs`."""

    def __init__(self, options: BaseModel | None, space: "SearchSpace", seed: int):
        super().__init__(options)
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)

    @classmethod
    def minimum_budget(cls, options: BaseModel) -> int:
        """The smallest `search.budget` this strategy can work with (its first population, say);
        a smaller budget is refused at validation, naming this number."""
        return 1


class SearchStrategy(Strategy):
    """Ask/tell search: propose genomes, receive their results (scores: higher is better, None = failed)."""

    protocol = "ask/tell"

    @abstractmethod
    def ask(self, n: int) -> list[Genome]:
        """Propose up to `n` genomes to evaluate next."""

    @abstractmethod
    def tell(self, results: list[CandidateResult]) -> None:
        """Receive the results of genomes returned by the last `ask`, in the same order.

        Each result unpacks as ``(genome, score)``; the full record (accuracy, per-device
        latency, params, MACs, Pareto costs, failure) is on its attributes.
        """

    def warm_start(self, results: list[CandidateResult]) -> None:
        """Take earlier runs' results (`search.warm_start`) before the first `ask`: genomes this
        strategy never proposed. The default tells them, which makes them the initial population
        of evolution and NSGA-II and pre-trains the RL controller's policy; a strategy whose
        `tell` must match its asks overrides this."""
        self.tell(results)

    def state_dict(self) -> dict[str, Any] | None:
        """The strategy's state as JSON-able data, for a strategy that a replay cannot rebuild
        (one that reads the clock or an unseeded generator). The search saves it after every
        batch (registry `search_state`); a resumed run restores the last one with
        `load_state_dict` instead of replaying the recorded results. None (the default): the
        strategy is seeded and replays exactly, and nothing is saved."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; implemented together with it."""
        raise NotImplementedError(f"{type(self).__name__} saves no state (state_dict() returns None)")

    def step_log(self) -> dict[str, float]:
        """Numbers that show how the strategy stands after the last `tell` (a policy's entropy,
        its mean reward); the search records them per step in the registry's `search_log`."""
        return {}


class SupernetOptions(PluginOptions):
    """Options every supernet strategy has; a strategy's own `Options` extends this model."""

    arch_split: float = Field(
        0.5, description="share of the training split that trains the architecture parameters; the rest trains the weights",
    )

    @field_validator("arch_split")
    @classmethod
    def _both_sides(cls, share: float) -> float:
        if not 0 < share < 1:
            side = "weights" if share >= 1 else "architecture parameters"
            raise ValueError(f"arch_split {share:g} leaves no training images for the {side}; use a share strictly between 0 and 1")
        return share


@dataclass(frozen=True)
class LatencyTable:
    """One device's latency of a supernet's choices, in ms: an architecture of the supernet takes
    `base_ms` (stem, head, fixed blocks, the runtime's per-model cost) plus, per searchable layer,
    the entry of its candidate (0 for a skip). `source` is where the numbers came from: `lut` (the
    device's LUT, FBNet's sum) or `predicted` (its calibrated predictor, split per operator)."""

    device: str
    source: str
    base_ms: float
    layers: tuple[tuple[float, ...], ...]

    def total(self, choice: Sequence[int]) -> float:
        """The latency of one choice per searchable layer."""
        return self.base_ms + sum(layer[c] for layer, c in zip(self.layers, choice))


@dataclass
class SupernetContext:
    """What the search stage hands a supernet strategy's `run`.

    The weight and architecture splits are positions within the dataset's training split
    (`dataset.batch("train", positions)`), disjoint and seeded; the validation split is the
    flow's, for the derived architectures' accuracy. The strategy trains on `device` (an
    `execution.device` value: resolve it with `nasflow.train_device.resolve_device`).
    """

    supernet: Supernet
    dataset: "Dataset"
    weight_split: "np.ndarray"
    arch_split: "np.ndarray"
    train_config: "TrainConfig"
    device: str
    amp: bool
    checkpoint_dir: Path
    """Where the strategy saves its state every epoch and finds it again on a resumed run."""
    log: Callable[[int, dict[str, float]], None]
    """`log(epoch, {metric: value})`: one registry `search_log` row per metric; an epoch a resumed
    run trains again keeps the rows it logged the first time."""
    progress: Callable[[int, int, str], None] | None = None
    """`progress(epoch, epochs, note)` after each finished epoch, for the progress bar."""
    latency: dict[str, LatencyTable] = field(default_factory=dict)
    """Per spec device with a LUT (or calibrated predictor), its per-layer, per-candidate table."""
    objective_device: str | None = None
    """The spec's objective device: the one a latency term uses unless the strategy names another."""


@dataclass
class DerivedArch:
    """An architecture a supernet strategy derived: its genome and the network as the supernet
    trained it (an `ArchNet` of `space.to_arch(genome)` holding the supernet's weights)."""

    genome: Genome
    model: "torch.nn.Module"
    extra: dict[str, Any] = field(default_factory=dict)
    """Facts the strategy wants recorded with the candidate (`candidates.extra`)."""


class SupernetStrategy(Strategy):
    """One-shot search: owns a training loop over `space.supernet()` and returns the architectures
    it derives; the search stage then measures each on every device and records it."""

    protocol = "supernet"
    needs_supernet = True
    Options: ClassVar[type[BaseModel]] = SupernetOptions

    @classmethod
    def latency_device(cls, options: BaseModel, objective_device: str) -> str | None:
        """The device whose latency table the strategy's loss uses, or None when its loss has no
        latency term; the spec checks refuse a device without a LUT before any training."""
        return None

    @abstractmethod
    def run(self, ctx: SupernetContext) -> list[DerivedArch]:
        """Train the supernet (resuming from `ctx.checkpoint_dir` when it holds a finished epoch)
        and return the derived architectures, best first."""


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
    device: str = "cpu"  # torch device to train on (`execution.device` as resolved, e.g. 'cuda:0')
    amp: bool = False  # `execution.amp`: mixed-precision training on CUDA
    latency: dict[str, Any] = field(default_factory=dict)
    """Per spec device the compressor's `latency_device` names, a latency model of any width
    (`nasflow.width_latency.WidthLatencyModel`: `predict(arch) -> ms`), fitted to its LUT."""
    objective_device: str | None = None
    """The spec's objective device: the one a latency target uses unless the options name another."""


@dataclass
class CompressResult:
    model: "torch.nn.Module"
    arch: "Arch"
    val_accuracy: float
    val_loss: float
    stats: dict[str, Any] = field(default_factory=dict)
    intermediates: list["CompressResult"] = field(default_factory=list)
    """The networks a multi-step compressor passed through before this one (MorphNet's earlier
    shrink -> expand cycles), in order. The morph stage records each as a candidate, parent
    links running seed -> first -> ... -> this result."""


class Compressor(Plugin):
    """Turns a trained model into a smaller child model (recorded as a child candidate)."""

    kind = "compressor"

    @classmethod
    def latency_device(cls, options: BaseModel, objective_device: str) -> str | None:
        """The device whose latency model (`CompressContext.latency`) the compressor prices
        channels with, or None; the spec checks refuse a device without a LUT before any run."""
        return None

    @abstractmethod
    def compress(self, ctx: CompressContext) -> CompressResult:
        """Shrink (and fine-tune) ctx.model; return the child with its validation metrics."""


# ---------------------------------------------------------------- search spaces


@dataclass(frozen=True)
class Geometry:
    """What a network is built for: input channels, classes, input size (h, w), timing batch size."""

    in_channels: int = 3
    num_classes: int = 10
    image_size: tuple[int, int] = (32, 32)
    batch_size: int = 1

    def __post_init__(self) -> None:
        size = self.image_size
        object.__setattr__(self, "image_size", (int(size), int(size)) if isinstance(size, int) else tuple(map(int, size)))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch_size, self.in_channels, *self.image_size)


@dataclass(frozen=True)
class Decision:
    """One choice a genome makes: its name (``stage2.kernel``, ``layer5``) and the choices' labels."""

    name: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class SupernetLayer:
    """A searchable layer of a supernet: genome entry `decision` picks one of `candidates` for the
    block at `position` of the skeleton; every candidate maps the layer's input shape to one output shape."""

    decision: int
    position: int
    candidates: tuple["Block", ...]


@dataclass(frozen=True)
class Supernet:
    """A space in the form one-shot strategies train: a fixed skeleton (stem, head, and the blocks
    of every position) whose searchable positions each hold candidate blocks."""

    skeleton: "Arch"
    layers: tuple[SupernetLayer, ...]


class SearchSpace(Plugin):
    """A set of architectures, addressed by genomes: one choice index per decision.

    A space sets `self.decisions` in its constructor and implements `to_arch`, `from_arch` and
    `lut_ops`; sampling, mutation, crossover and the size follow from the decisions (override them
    where a decision's choices are not independent). `geometry` is the input the networks are built
    for (None: the space's own default, e.g. 32x32 RGB and 10 classes).
    """

    kind = "space"
    decisions: tuple[Decision, ...] = ()

    def __init__(self, options: BaseModel | None = None, geometry: Geometry | None = None):
        super().__init__(options)
        self.geometry = geometry if geometry is not None else Geometry()

    # --- genomes

    def size(self) -> int:
        """Number of distinct genomes."""
        return math.prod(len(d.choices) for d in self.decisions)

    def sample(self, rng: random.Random) -> Genome:
        return tuple(rng.randrange(len(d.choices)) for d in self.decisions)

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """Re-sample one decision that has an alternative to a different choice."""
        genome = self.validate_genome(genome)
        open_ = [i for i, d in enumerate(self.decisions) if len(d.choices) > 1]
        if not open_:
            return genome
        i = rng.choice(open_)
        new = rng.randrange(len(self.decisions[i].choices) - 1)
        new += new >= genome[i]  # skips the current choice while staying uniform over the rest
        return genome[:i] + (new,) + genome[i + 1 :]

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        """Each decision taken from either parent with equal probability."""
        a, b = self.validate_genome(a), self.validate_genome(b)
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    def validate_genome(self, genome: Sequence[int]) -> Genome:
        """The genome as a tuple of ints; ArchError naming the first bad entry."""
        if len(genome) != len(self.decisions):
            raise ArchError(f"genome has {len(genome)} entries, the space has {len(self.decisions)} decisions")
        for index, decision in zip(genome, self.decisions):
            # numbers.Integral also admits numpy integers that strategies may produce.
            if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < len(decision.choices):
                raise ArchError(f"genome entry {index!r} for {decision.name} is not in 0..{len(decision.choices) - 1}")
        return tuple(int(i) for i in genome)

    def describe(self, genome: Sequence[int]) -> dict[str, str]:
        """Decision name -> chosen label."""
        genome = self.validate_genome(genome)
        return {d.name: d.choices[i] for d, i in zip(self.decisions, genome)}

    @abstractmethod
    def to_arch(self, genome: Sequence[int]) -> "Arch":
        """The architecture a genome names."""

    @abstractmethod
    def from_arch(self, arch: "Arch | str") -> Genome:
        """A genome naming `arch`; ArchError saying why when the space does not contain it."""

    # --- latency tables and validation

    @abstractmethod
    def lut_ops(self, geometry: Geometry | None = None) -> list["Operator"]:
        """Every distinct (operator, input shape) an architecture of the space can execute at
        `geometry` (default: the space's), the `null` operator first (see nasflow.arch.operators)."""

    def cheapest_genome(self) -> Genome:
        """A genome with few MACs: each decision in turn set to its cheapest choice (one greedy pass)."""
        from .arch import count_macs

        g = self.geometry
        genome = [0] * len(self.decisions)
        for i, decision in enumerate(self.decisions):
            costs = []
            for j in range(len(decision.choices)):
                genome[i] = j
                costs.append((count_macs(self.to_arch(genome), g.in_channels, g.num_classes, g.image_size), j))
            genome[i] = min(costs)[1]
        return tuple(genome)

    def problems(self) -> list[str]:
        """What makes the space unusable at its geometry (a stage below one pixel, a stage left
        without channels, a layer without candidates); empty when it is fine."""
        return []

    def notes(self) -> list[str]:
        """What a user should know about how the space was built (e.g. choices a device filter
        dropped, and why); `nasflow validate` prints them."""
        return []

    # --- one-shot form

    def supernet(self) -> Supernet | None:
        """The space as a supernet for one-shot strategies, or None when it has no fixed-shape form
        (e.g. a decision changes a stage's depth or width)."""
        return None
