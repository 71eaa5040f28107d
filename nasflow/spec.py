"""Load and validate a YAML workflow spec; every error names the field path and the YAML line."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .config import (
    DatasetConfig,
    DeployConfig,
    DeviceConfig,
    ExecutionConfig,
    MorphConfig,
    ObjectivesConfig,
    ProfileConfig,
    RegistryConfig,
    SearchConfig,
    Section,
    SpaceRef,
    TrainStageConfig,
)
from .errors import NasflowError, SpecError
from .strict import error_message

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Spec(Section):
    """A whole workflow: what to search, where to measure, and which stages run."""

    name: str
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    space: SpaceRef = Field(default_factory=SpaceRef)
    devices: list[DeviceConfig] = Field(default_factory=lambda: [DeviceConfig(name="torch-cpu")], min_length=1)
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    train: TrainStageConfig = Field(default_factory=TrainStageConfig)
    morph: MorphConfig = Field(default_factory=MorphConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("name may contain letters, digits, '_', '.', '-' and must start with a letter or digit")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "Spec":
        names = [d.name for d in self.devices]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"devices: {', '.join(duplicates)} listed more than once")
        if self.search.latency == "lut" and not (self.profile.enabled and self.profile.lut):
            raise ValueError("search.latency 'lut' needs profile.enabled and profile.lut: true")
        if self.search.latency == "predicted" and not (self.profile.enabled and self.profile.calibrate):
            raise ValueError("search.latency 'predicted' needs profile.enabled and profile.calibrate >= 2")
        if self.objectives.device is not None and self.objectives.device not in names:
            raise ValueError(
                f"objectives.device {self.objectives.device!r} is not in devices ({', '.join(names)})"
            )
        for entry in self.objectives.pareto:
            device = entry.partition("@")[2]
            if device and device not in names:
                raise ValueError(f"objectives.pareto entry {entry!r} names a device not in devices ({', '.join(names)})")
        return self

    @property
    def objective_device(self) -> str:
        return self.objectives.device or self.devices[0].name

    @property
    def pareto(self) -> list:
        """`objectives.pareto` parsed (`nasflow.objectives.ParetoObjective`), bare latency bound to the objective device."""
        from .objectives import pareto_objectives

        return pareto_objectives(self.objectives.pareto, self.objective_device)


    def spec_hash(self) -> str:
        """Identity of the run: the settings its search results depend on, nothing else.

        Left out (see RUN_ID_EXCLUDES): where things are stored, how the work is spread (every
        `execution` key but `seed`), `search.budget` (a larger budget continues the same search),
        the train, morph and deploy sections, whose rows carry their own settings key, and the
        profile settings when the search measures every latency instead of using a LUT. The
        YAML's formatting and comments never count: the validated content is hashed.
        """
        content = self.model_dump(mode="json")
        for path in RUN_ID_EXCLUDES:
            _drop(content, path)
        if self.search.latency == "measured":  # the LUT, its predictor and their drift check are unused
            for path in (("profile",), ("search", "drift")):
                _drop(content, path)
        if not self.objectives.pareto:  # added later: specs without it keep their run ids
            _drop(content, ("objectives", "pareto"))
        if not self.search.warm_start.enabled:
            _drop(content, ("search", "warm_start"))
        execution = content.get("execution", {})
        content["execution"] = {"seed": execution.get("seed")}
        canonical = json.dumps(content, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def run_id(self) -> str:
        return f"{self.name}-{self.spec_hash()[:10]}"


# Spec keys that do not change what the search finds, so changing them resumes the same run.
RUN_ID_EXCLUDES: tuple[tuple[str, ...], ...] = (
    ("dataset", "cache_dir"),
    ("profile", "enabled"),
    ("profile", "refresh"),
    ("search", "enabled"),
    ("search", "budget"),
    ("train",),
    ("morph",),
    ("deploy",),
    ("registry",),
)


def _drop(content: dict[str, Any], path: tuple[str, ...]) -> None:
    """Remove the key at `path` from nested dicts, when it is there."""
    for key in path[:-1]:
        content = content.get(key) or {}
    if isinstance(content, dict):
        content.pop(path[-1], None)


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    path: Path
    text: str


# ------------------------------------------------------------------ YAML with line numbers


def _line_index(node: yaml.Node | None, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each field path (keys and list indices) to the 1-based YAML line where it starts."""
    out = {} if out is None else out
    if node is None:
        return out
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            out[path] = key_node.start_mark.line + 1
            _line_index(value_node, path, out)
            out[path] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_index(item, prefix + (index,), out)
    return out


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The line of the deepest existing prefix of `loc` (a missing key points at its parent)."""
    for cut in range(len(loc), -1, -1):
        if tuple(loc[:cut]) in lines:
            return lines[tuple(loc[:cut])]
    return None


def _format_loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names the same key twice; YAML would silently keep the last value."""

    def __init__(self, key: Any, first: yaml.Node, second: yaml.Node):
        super().__init__(None, None, f"duplicate key {key!r}", second.start_mark)
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` still override)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader reports it itself
                    continue
                if first is not key_node:
                    raise _DuplicateKey(key, first, key_node)
        return super().construct_mapping(node, deep=deep)


def _path_of(root: yaml.Node, target: yaml.Node, prefix: tuple = ()) -> tuple | None:
    """Field path (keys and indices) of the mapping that holds key node `target`."""
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in root.value:
            if key_node is target:
                return prefix + (key_node.value,)
            found = _path_of(value_node, target, prefix + (key_node.value,))
            if found is not None:
                return found
    elif isinstance(root, yaml.SequenceNode):
        for index, item in enumerate(root.value):
            found = _path_of(item, target, prefix + (index,))
            if found is not None:
                return found
    return None


def _parse_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    loader = _StrictLoader(text)
    node = None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as exc:
        path = _format_loc(_path_of(node, exc.second) or (exc.key,))
        first, second = exc.first.start_mark, exc.second.start_mark
        where = f"line {first.line + 1}" if first.line != second.line else f"column {first.column + 1} of this line"
        raise SpecError(f"{source}:{second.line + 1}: {path}: duplicate key (also at {where}); give each key once") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise SpecError(f"{where}: malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: malformed YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        raise SpecError(f"{source}: the spec is empty")
    if not isinstance(data, dict):
        raise SpecError(f"{source}:1: a spec must be a mapping of sections (name, dataset, space, ...)")
    return data, _line_index(node)


def _validation_messages(exc: ValidationError, lines: dict[tuple, int], source: str) -> list[str]:
    messages = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        line = _line_for(lines, loc)
        where = f"{source}:{line}" if line else source
        messages.append(f"{where}: {_format_loc(loc)}: {error_message(err)}")
    return messages


# ------------------------------------------------------------------ plugin-level checks


def _plugin_messages(spec: Spec, lines: dict[tuple, int], source: str) -> list[str]:
    """Names, options and availability of every plugin the spec uses, checked now, not mid-run."""
    from .plugins import get_plugins

    plugins = get_plugins()
    checks: list[tuple[tuple, str, str, dict]] = [
        (("search",), "search", spec.search.strategy, spec.search.options),
        (("morph",), "compressor", spec.morph.compressor, spec.morph.options),
    ]
    checks += [(("devices", i), "device", d.name, d.options) for i, d in enumerate(spec.devices)]
    checks.append((("space",), "space", spec.space.name, spec.space.options))
    messages = []
    for loc, kind, name, options in checks:
        name_key = {"search": "strategy", "compressor": "compressor", "device": "name", "space": "name"}[kind]
        try:
            info = plugins.get(kind, name)
            validated = plugins.options(kind, name, options)
            reason = info.cls.unavailable_reason(validated) if kind == "device" else None
        except NasflowError as exc:
            field = loc + ((name_key,) if "registered" in str(exc) else ("options",))
            messages.append(f"{source}:{_line_for(lines, field)}: {_format_loc(field)}: {exc}")
            continue
        if reason:
            field = loc + ("name",)
            messages.append(f"{source}:{_line_for(lines, field)}: {_format_loc(field)}: device {name!r} is not usable here: {reason}")
    messages += _exporter_messages(spec, lines, source)
    if not messages:
        messages += _space_messages(spec, lines, source) + _strategy_messages(spec, lines, source)
        messages += _compressor_messages(spec, lines, source)
    return messages


def _compressor_messages(spec: Spec, lines: dict[tuple, int], source: str) -> list[str]:
    """A compressor that prices channels by latency needs its device in the spec and its LUT."""
    from .plugins import get_plugins

    if not spec.morph.enabled:
        return []
    plugins = get_plugins()
    cls = plugins.get("compressor", spec.morph.compressor).cls
    device = cls.latency_device(plugins.options("compressor", spec.morph.compressor, spec.morph.options), spec.objective_device)
    if device is None:
        return []
    at = f"{source}:{_line_for(lines, ('morph', 'options'))}: morph.options"
    names = [d.name for d in spec.devices]
    if device not in names:
        return [f"{at}: latency_device {device!r} is not in devices ({', '.join(names)})"]
    if not (spec.profile.enabled and spec.profile.lut):
        return [f"{at}: {spec.morph.compressor!r} prices channels by latency on {device}, from a model fitted to that "
                "device's latency LUT; set profile.enabled and profile.lut: true"]
    return []


def _exporter_messages(spec: Spec, lines: dict[tuple, int], source: str) -> list[str]:
    """Every deploy format is a registered exporter with valid options that can write files here."""
    from .plugins import get_plugins

    plugins = get_plugins()
    messages = []
    for i, fmt in enumerate(spec.deploy.formats):
        try:
            info = plugins.get("exporter", fmt)
        except NasflowError as exc:
            loc = ("deploy", "formats", i)
            messages.append(f"{source}:{_line_for(lines, loc)}: deploy.formats: {exc}")
            continue
        try:
            options = plugins.options("exporter", fmt, spec.deploy.options.get(fmt, {}))
        except NasflowError as exc:
            loc = ("deploy", "options", fmt)
            messages.append(f"{source}:{_line_for(lines, loc)}: deploy.options.{fmt}: {exc}")
            continue
        problem = info.cls.unavailable_reason(options) if spec.deploy.enabled else None
        if problem:
            loc = ("deploy", "formats")
            messages.append(f"{source}:{_line_for(lines, loc)}: deploy.formats: {fmt} cannot be written here: {problem}")
    return messages


def _strategy_messages(spec: Spec, lines: dict[tuple, int], source: str) -> list[str]:
    """What the strategy needs of the spec: Pareto objectives or none, a budget it can work with."""
    from .plugins import get_plugins

    plugins = get_plugins()
    name = spec.search.strategy
    strategy = plugins.get("search", name).cls
    messages = []
    at = lambda *loc: f"{source}:{_line_for(lines, loc)}"  # noqa: E731
    if spec.objectives.pareto and strategy.pareto_support == "refused":
        messages.append(
            f"{at('objectives', 'pareto')}: objectives.pareto: strategy {name!r} ranks candidates by one score and "
            "ignores Pareto objectives; use a multi-objective strategy (nsga2, optuna) or remove objectives.pareto"
        )
    if not spec.objectives.pareto and strategy.pareto_support == "required":
        messages.append(
            f"{at('search', 'strategy')}: search.strategy: {name!r} searches for a Pareto front and needs "
            "objectives.pareto (e.g. [accuracy, latency])"
        )
    if strategy.protocol == "supernet" and spec.search.warm_start.enabled:
        messages.append(
            f"{at('search', 'warm_start', 'enabled')}: search.warm_start.enabled: {name!r} trains a supernet and "
            "takes no earlier candidates as seeds; turn warm_start off or use an ask/tell strategy"
        )
    if strategy.protocol == "supernet":
        messages += _latency_term_messages(spec, strategy, plugins.options("search", name, spec.search.options), at)
    minimum = strategy.minimum_budget(plugins.options("search", name, spec.search.options))
    if spec.search.enabled and spec.search.budget < minimum:
        messages.append(
            f"{at('search', 'budget')}: search.budget: {spec.search.budget} is below what {name!r} needs with these "
            f"options ({minimum}: its first population); raise the budget or shrink the population"
        )
    return messages


def _latency_term_messages(spec: Spec, strategy, options, at) -> list[str]:
    """A one-shot strategy's latency term needs its device in the spec and a LUT the profile stage builds."""
    device = strategy.latency_device(options, spec.objective_device)
    if device is None:
        return []
    names = [d.name for d in spec.devices]
    if device not in names:
        return [f"{at('search', 'options')}: search.options.latency_device: {device!r} is not in devices ({', '.join(names)})"]
    if not (spec.profile.enabled and spec.profile.lut):
        return [
            f"{at('search', 'options')}: search.options: {spec.search.strategy!r} has a latency term on {device}, "
            "which needs that device's latency LUT; set profile.enabled and profile.lut: true"
        ]
    return []


def _space_messages(spec: Spec, lines: dict[tuple, int], source: str) -> list[str]:
    """The space at the geometry the dataset section fixes, and the strategy's need for a supernet."""
    from .plugins import get_plugins
    from .spaces import known_geometry

    space = build_space(spec, known_geometry(spec.dataset))
    where = f"{source}:{_line_for(lines, ('space',))}: space"
    messages = [f"{where}: {problem}" for problem in space.problems()]
    strategy = get_plugins().get("search", spec.search.strategy).cls
    if strategy.needs_supernet and space.supernet() is None:
        line = _line_for(lines, ("search", "strategy"))
        messages.append(
            f"{source}:{line}: search.strategy: {spec.search.strategy!r} trains a supernet, and space "
            f"{spec.space.name!r} has no supernet form (its decisions change layer shapes); pick a space with one"
        )
    return messages


def build_space(spec: Spec, geometry=None):
    """The spec's search space (a `nasflow.plugin_api.SearchSpace`) at `geometry`; SpecError for
    options the space refuses."""
    from .spaces import make_space

    try:
        return make_space(spec.space, geometry)
    except NasflowError as exc:
        raise SpecError(f"space: {exc}") from None


def space_for_data(spec: Spec, data):
    """The spec's space for a loaded dataset; SpecError listing every problem when it does not fit
    (checked before any flow starts, since an image folder's size is known only once loaded)."""
    from .spaces import dataset_geometry

    space = build_space(spec, dataset_geometry(data))
    problems = space.problems()
    if problems:
        raise SpecError("\n".join(f"space: {p} (input {'x'.join(map(str, data.input_shape[1:]))})" for p in problems))
    return space


def _environment_messages(spec: Spec, lines: dict[tuple, int], source: str) -> list[str]:
    messages = []
    if spec.dataset.name == "image_folder" and spec.dataset.path and not spec.dataset.path.exists():
        loc = ("dataset", "path")
        messages.append(f"{source}:{_line_for(lines, loc)}: dataset.path: '{spec.dataset.path}' does not exist")
    from .train_device import device_problem

    problem = device_problem(spec.execution.device)
    if problem:
        loc = ("execution", "device")
        messages.append(f"{source}:{_line_for(lines, loc)}: execution.device: {problem}")
    from .flows.runners import runner_problem

    problem = runner_problem(spec.execution.runner)
    if problem:
        loc = ("execution", "runner")
        messages.append(f"{source}:{_line_for(lines, loc)}: execution.runner: {problem}")
    return messages


def parse_spec(text: str, source: str = "<spec>", check_plugins: bool = True) -> Spec:
    """Validate spec text; raise SpecError listing every problem with its line."""
    data, lines = _parse_yaml(text, source)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError("\n".join(_validation_messages(exc, lines, source))) from None
    if check_plugins:
        problems = _plugin_messages(spec, lines, source) + _environment_messages(spec, lines, source)
        if problems:
            raise SpecError("\n".join(problems))
    return spec


def with_options(spec: Spec, options: dict[tuple[str, ...], tuple[str | None, Any]]) -> Spec:
    """`spec` with keys set from command-line options, validated exactly as the YAML's keys are.

    `options` maps a field path, e.g. ("profile", "passes"), to the option that set it and its
    value, e.g. ("--passes", 0) (None: set by the command itself); a SpecError names the option:
    "--passes 0: profile.passes: ...".
    """
    # Only what was set: checks that look at which keys a user wrote (an objectives key that
    # applies to another reward) must see the spec as written, not every default filled in.
    data = spec.model_dump(exclude_unset=True)
    for path, (_, value) in options.items():
        section = data
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
            # A field's own error names its option; a section-level check names every option set in it.
            flags = [f"{flag} {value}" for path, (flag, value) in options.items() if flag and path[: len(loc)] == loc]
            field = _format_loc(loc)
            message = error_message(err)
            text = message if message.startswith(field) else f"{field}: {message}"
            messages.append(f"{', '.join(flags) or 'command line'}: {text}")
        raise SpecError("\n".join(messages)) from None


def load_spec(path: str | Path, check_plugins: bool = True) -> LoadedSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file '{path}': {exc}") from None
    return LoadedSpec(parse_spec(text, str(path), check_plugins), path, text)
