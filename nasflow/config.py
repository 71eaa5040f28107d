"""Pydantic models for each section of a workflow spec (the YAML keys documented in the README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .strict import StrictModel


class Section(StrictModel):
    """Base for every spec section: unknown keys are errors, values are immutable after load, and
    numbers and booleans are taken as written (`budget: true` and `epochs: 2.5` are errors)."""


class DatasetConfig(Section):
    name: Literal["digits", "image_folder"] = "digits"
    path: Path | None = Field(None, description="image_folder: a directory or .tar/.tar.gz in ImageFolder layout")
    split: str | None = Field(None, description="image_folder: subfolder used for training/validation, e.g. 'train'")
    subset: int | None = Field(None, gt=0, description="keep at most this many training images (stratified)")
    test: str | None = Field(
        None, description="image_folder: subfolder used as the test split, e.g. 'test' (default: carve test_split)"
    )
    test_split: float = Field(
        0.2, gt=0, lt=1, description="without `test`: share of the pool held out as the test split, before validation"
    )
    val_split: float = Field(0.2, gt=0, lt=1, description="share of the training pool held out for validation")
    image_size: int | None = Field(None, gt=0, description="resize images to this square size (default: native)")
    channels: Literal[1, 3] | None = Field(
        None, description="1 (grayscale) or 3 (RGB); default: 1 when every image is grayscale, else 3"
    )
    skip_bad_files: bool = Field(
        False, description="leave out images that cannot be decoded (counted, with a warning) instead of refusing the dataset"
    )
    cache_dir: Path = Field(Path(".nasflow/cache"), description="where decoded pixels are cached")
    seed: int = 0

    @model_validator(mode="after")
    def _path_needed(self) -> "DatasetConfig":
        if self.name == "image_folder" and self.path is None:
            raise ValueError("dataset.path is required when dataset.name is 'image_folder'")
        if self.test is not None and self.name != "image_folder":
            raise ValueError("dataset.test names a subfolder and needs dataset.name 'image_folder'; use test_split")
        if self.test is not None and self.test == self.split:
            raise ValueError(f"dataset.test and dataset.split are both {self.test!r}: the test split must be held out")
        return self


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(4e-5, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    augment: bool = Field(False, description="random crop (pad 2) and horizontal flip")
    seed: int = 0


class PluginRef(Section):
    """A plugin chosen by name plus the options its own model validates."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class DeviceConfig(PluginRef):
    pass


class SpaceRef(PluginRef):
    """`space: {name: ..., options: {...}}`: a search-space plugin (`nasflow plugins` lists them)."""

    name: str = "layerwise"

    @model_validator(mode="before")
    @classmethod
    def _old_form(cls, data: Any) -> Any:
        # Before spaces were plugins, the layer-wise space's keys sat directly under `space:`.
        if isinstance(data, dict) and set(data) - {"name", "options"}:
            raise ValueError(_legacy_space_message(data))
        return data


def _legacy_space_message(data: dict[str, Any]) -> str:
    """The error for a spec written before spaces were plugins, showing the same space in the new form."""
    import json  # noqa: PLC0415

    options = {k: v for k, v in data.items() if k not in ("type", "name", "options")}
    name = data.get("type") or data.get("name") or "layerwise"
    inline = ", ".join(f"{k}: {json.dumps(v)}" for k, v in options.items())
    return (
        f"space keys ({', '.join(sorted(set(data) - {'name', 'options'}))}) now go under space.options "
        f"(spaces are plugins); write `space: {{name: {name}, options: {{{inline}}}}}`"
    )


class ObjectivesConfig(Section):
    """How accuracy and latency are combined into one search score (default: accuracy alone)."""

    device: str | None = Field(None, description="device whose latency drives the search (default: first device)")
    reward: Literal["mnasnet", "accuracy"] = "accuracy"
    target_ms: float | None = Field(None, gt=0, description="latency target T in ms (required for mnasnet)")
    alpha: float = Field(-0.07, description="exponent w when LAT <= T (MnasNet soft: -0.07, hard: 0)")
    beta: float = Field(-0.07, description="exponent w when LAT > T (MnasNet soft: -0.07, hard: -1)")
    max_latency_ms: float | None = Field(None, gt=0, description="hard constraint: slower candidates score 0")
    pareto: list[str] = Field(
        default_factory=list,
        description=(
            "objectives of a multi-objective search (nsga2, optuna): accuracy, latency (the objective device), "
            "latency@DEVICE, energy@DEVICE, params, macs; the train stage then takes its top_k spread along the front"
        ),
    )

    @field_validator("pareto")
    @classmethod
    def _pareto_entries(cls, entries: list[str]) -> list[str]:
        from .objectives import parse_pareto_objective  # noqa: PLC0415 (objectives imports this module)

        for entry in entries:
            parse_pareto_objective(entry)
        if len(entries) == 1:
            raise ValueError("objectives.pareto needs at least two objectives (one is the scalar reward)")
        duplicates = sorted({e for e in entries if entries.count(e) > 1})
        if duplicates:
            raise ValueError(f"objectives.pareto lists {', '.join(duplicates)} more than once")
        return entries

    @model_validator(mode="after")
    def _target_needed(self) -> "ObjectivesConfig":
        if self.reward == "mnasnet" and self.target_ms is None:
            raise ValueError("objectives.target_ms is required when objectives.reward is 'mnasnet'")
        unused = sorted({"target_ms", "alpha", "beta"} & self.model_fields_set) if self.reward == "accuracy" else []
        if unused:
            # Without this, `objectives: {target_ms: 5}` would rank by accuracy alone and ignore the target.
            keys = " and ".join(f"objectives.{key}" for key in unused)
            default = "" if "reward" in self.model_fields_set else " (the default)"
            raise ValueError(
                f"{keys} {'apply' if len(unused) > 1 else 'applies'} only to reward 'mnasnet', but the reward is "
                f"'accuracy'{default}; set `reward: mnasnet` or remove {'them' if len(unused) > 1 else 'it'}"
            )
        return self


class ProfileConfig(Section):
    enabled: bool = True
    lut: bool = Field(False, description="build (or reuse) a per-operator latency LUT of the space on each device")
    calibrate: int = Field(
        0, ge=0, description="whole models measured per device to fit the calibrated LUT predictor (0 = none)"
    )
    refresh: bool = Field(False, description="re-measure the LUT even when one for this fingerprint exists")
    passes: int = Field(
        3, ge=1, description="times each LUT operator and calibration model is measured, interleaved; the fastest median is kept"
    )

    @model_validator(mode="after")
    def _calibration_needs_lut(self) -> "ProfileConfig":
        if self.calibrate and not self.lut:
            raise ValueError("profile.calibrate needs profile.lut: true (the predictor corrects the LUT)")
        if self.calibrate == 1:
            raise ValueError("profile.calibrate must be 0 or at least 2 (a fit needs several models)")
        return self


class ProxyConfig(Section):
    """Cheap training used to rank search candidates."""

    epochs: int = Field(2, ge=1)
    subset: float = Field(1.0, gt=0, le=1, description="share of the training split used")


class DriftConfig(Section):
    """With predicted latencies, also measure a share of candidates to catch a drifting predictor."""

    fraction: float = Field(0.2, ge=0, le=1, description="share of candidates also measured on the device")
    threshold: float = Field(0.1, gt=0, description="warn when the median relative error exceeds this")
    window: int = Field(20, ge=1, description="measured candidates the error is taken over")


class WarmStartConfig(Section):
    """Seed the search with earlier runs' candidates from the same registry (see nasflow.flows.warm_start)."""

    enabled: bool = False
    runs: list[str] = Field(default_factory=list, description="run ids to start from (default: every earlier run)")
    top: int = Field(16, ge=1, description="earlier candidates handed to the strategy: the best, or spread along the Pareto front")


class SearchConfig(Section):
    enabled: bool = True
    latency: Literal["measured", "lut", "predicted"] = Field(
        "measured", description="measured on the device, LUT sum (FBNet), or the calibrated predictor"
    )
    drift: DriftConfig = Field(default_factory=DriftConfig)
    strategy: str = "evolution"
    budget: int = Field(20, ge=1, description="number of candidates evaluated")
    batch_size: int = Field(4, ge=1, description="candidates proposed and evaluated together")
    options: dict[str, Any] = Field(default_factory=dict)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)


class TrainStageConfig(Section):
    enabled: bool = True
    top_k: int = Field(2, ge=1, description="best search candidates trained fully")
    archs: list[str] = Field(
        default_factory=list,
        description=(
            "architecture strings or zoo names (zoo:mobilenet_v2@0.5) trained as well (with search off: instead); "
            "an entry {arch: A, widths: [0.5, 1.0], divisor: 8} is a width-multiplier sweep: A with every channel "
            "width scaled by each factor (one architecture per width)"
        ),
    )
    config: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("archs", mode="before")
    @classmethod
    def _expand_width_sweeps(cls, archs: Any) -> Any:
        if not isinstance(archs, list):
            return archs
        return [text for entry in archs for text in (_width_sweep(entry) if isinstance(entry, dict) else [entry])]

    @field_validator("archs")
    @classmethod
    def _archs_resolve(cls, archs: list[str]) -> list[str]:
        from .arch import resolve_arch  # noqa: PLC0415 (torch-free; kept out of config's import time)

        for text in archs:
            resolve_arch(text)  # ArchError is a ValueError: reported at the entry's line
        return archs


def _width_sweep(entry: dict) -> list[str]:
    """The architecture strings of a `train.archs` width sweep `{arch, widths, divisor}`."""
    from .arch import format_arch, resolve_arch  # noqa: PLC0415
    from .arch.scaling import DEFAULT_DIVISOR, scale_width  # noqa: PLC0415

    unknown = sorted(set(entry) - {"arch", "widths", "divisor"})
    if unknown or "arch" not in entry or "widths" not in entry:
        raise ValueError(
            "a width sweep is {arch: ARCH_OR_ZOO_NAME, widths: [factors], divisor: 8}"
            + (f"; unknown keys: {', '.join(unknown)}" if unknown else "; arch and widths are required")
        )
    widths = entry["widths"]
    if not isinstance(widths, list) or not widths or not all(isinstance(w, (int, float)) and w > 0 for w in widths):
        raise ValueError(f"width sweep widths must be a non-empty list of positive factors, got {widths!r}")
    divisor = entry.get("divisor", DEFAULT_DIVISOR)
    if not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"width sweep divisor must be a positive integer, got {divisor!r}")
    base = resolve_arch(entry["arch"])
    return list(dict.fromkeys(format_arch(scale_width(base, float(w), divisor)) for w in widths))


class MorphConfig(Section):
    enabled: bool = True
    compressor: str = "morphnet"
    top_k: int = Field(1, ge=1, description="best trained candidates compressed")
    options: dict[str, Any] = Field(default_factory=dict)


class DeployConfig(Section):
    enabled: bool = True
    formats: list[str] = Field(
        default_factory=lambda: ["onnx"],
        min_length=1,
        description="registered exporters (`nasflow plugins`): edgetpu, onnx, onnx-int8, tflite, tflite-int8",
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per format, its exporter's options (e.g. onnx-int8: {calibration_images: 256})"
    )
    out_dir: Path = Path("deploy")
    opset: int = Field(17, ge=11)
    atol: float = Field(
        1e-4, gt=0, description="max abs and cosine difference allowed between PyTorch and a float32 artifact"
    )
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="test accuracy an int8 artifact may lose against the float32 model (0.01: 1 point)"
    )
    check_inputs: int = Field(16, ge=1, description="held-out validation images whose outputs are compared with PyTorch's")

    @model_validator(mode="after")
    def _formats_once_and_options_used(self) -> "DeployConfig":
        repeated = sorted({f for f in self.formats if self.formats.count(f) > 1})
        if repeated:
            raise ValueError(f"deploy.formats lists {', '.join(repeated)} more than once")
        unused = sorted(set(self.options) - set(self.formats))
        if unused:
            raise ValueError(f"deploy.options has options for {', '.join(unused)}, which deploy.formats does not list")
        return self
    top_k: int = Field(1, ge=1)


class RegistryConfig(Section):
    path: Path = Path("registry.duckdb")


class ExecutionConfig(Section):
    runner: Literal["thread", "process", "dask", "ray"] = "thread"
    workers: int = Field(2, ge=1)
    seed: int = 0
    work_dir: Path = Field(Path(".nasflow/runs"), description="checkpoints of trained candidates")
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where candidates train: auto (a CUDA GPU when one is present, else cpu), cpu, cuda, cuda:N",
    )
    amp: bool = Field(
        False, description="mixed precision on CUDA (bf16 autocast, or fp16 with gradient scaling where bf16 is missing)"
    )

    @model_validator(mode="after")
    def _amp_needs_cuda(self) -> "ExecutionConfig":
        if self.amp and self.device == "cpu":
            raise ValueError("execution.amp needs a CUDA device; with execution.device 'cpu' training is float32 only")
        return self

