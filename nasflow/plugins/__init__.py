"""Plugin discovery: built-in modules and the `nasflow` entry-point group, through the same hooks."""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from .. import __version__, hookspecs
from ..errors import PluginError
from ..plugin_api import Plugin
from ..strict import error_message

BUILTIN_MODULES = (
    "nasflow.plugins.search.random_search",
    "nasflow.plugins.search.evolution",
    "nasflow.plugins.search.mnasnet_rl",
    "nasflow.plugins.search.nsga2",
    "nasflow.plugins.search.optuna_search",
    "nasflow.plugins.search.darts",
    "nasflow.plugins.search.fbnet",
    "nasflow.plugins.search.proxyless",
    "nasflow.plugins.devices.torch_cpu",
    "nasflow.plugins.devices.onnxruntime_cpu",
    "nasflow.plugins.devices.cuda",
    "nasflow.plugins.devices.edgetpu_model",
    "nasflow.plugins.devices.edgetpu_device",
    "nasflow.plugins.devices.litert",
    "nasflow.plugins.devices.android",
    "nasflow.plugins.compress.morphnet_plugin",
    "nasflow.plugins.compress.width_multiplier",
    "nasflow.plugins.compress.prune",
    "nasflow.spaces.layerwise",
    "nasflow.spaces.mnasnet",
    "nasflow.spaces.fbnet",
    "nasflow.spaces.edgetpu",
    "nasflow.export.formats",
)
DISABLE_ENV = "NASFLOW_DISABLE_PLUGIN_AUTOLOAD"
"""Set to 1 to load only built-in plugins (third-party entry points are ignored)."""

KIND_LABELS = {"search": "search strategy", "device": "device backend", "compressor": "compressor", "space": "search space", "exporter": "exporter"}


class PluginWarning(UserWarning):
    """A third-party plugin was skipped (failed to import, bad hook result, duplicate name)."""


@dataclass(frozen=True)
class PluginInfo:
    kind: str
    name: str
    cls: type[Plugin]
    package: str
    version: str

    @property
    def description(self) -> str:
        return self.cls.description


class PluginRegistry:
    """All plugins found at start-up, by kind and name."""

    def __init__(self, manager: pluggy.PluginManager, sources: dict[int, tuple[str, str]]):
        self.manager = manager
        self.skipped: list[str] = []
        self._by_kind: dict[str, dict[str, PluginInfo]] = {kind: {} for kind in hookspecs.KIND_HOOKS}
        for kind, hook_name in hookspecs.KIND_HOOKS.items():
            for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):
                package, version = sources.get(id(impl.plugin), ("unknown", "?"))
                self._collect(kind, impl, package, version)

    def _collect(self, kind: str, impl: Any, package: str, version: str) -> None:
        base = {
            "search": "SearchStrategy or SupernetStrategy", "device": "DeviceBackend", "compressor": "Compressor",
            "space": "SearchSpace", "exporter": "Exporter",
        }[kind]
        try:
            classes = list(impl.function() or [])
        except Exception as exc:  # a broken plugin must never take the host down
            self._skip(f"plugin {impl.plugin_name!r} ({package}) failed in {impl.function.__name__}: {exc}")
            return
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Plugin) and getattr(cls, "kind", None) == kind):
                self._skip(f"plugin {impl.plugin_name!r} ({package}) returned {cls!r}, not a {base} subclass")
                continue
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                self._skip(f"plugin {impl.plugin_name!r} ({package}): {cls.__name__} has no name")
                continue
            existing = self._by_kind[kind].get(name)
            if existing is not None:
                self._skip(
                    f"{KIND_LABELS[kind]} {name!r} from {package} ignored: the name is already "
                    f"provided by {existing.package}"
                )
                continue
            self._by_kind[kind][name] = PluginInfo(kind, name, cls, package, version)

    def _skip(self, message: str) -> None:
        self.skipped.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def list(self, kind: str | None = None) -> list[PluginInfo]:
        kinds = [kind] if kind else list(self._by_kind)
        return [info for k in kinds for _, info in sorted(self._by_kind[k].items())]

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def get(self, kind: str, name: str) -> PluginInfo:
        info = self._by_kind[kind].get(name)
        if info is None:
            available = ", ".join(self.names(kind)) or "none"
            raise PluginError(f"{name!r} is not a registered {KIND_LABELS[kind]}; available: {available}")
        return info

    def options(self, kind: str, name: str, raw: dict[str, Any]) -> BaseModel:
        """Validate raw options with the plugin's own model; PluginError lists every problem."""
        info = self.get(kind, name)
        try:
            return info.cls.Options.model_validate(raw or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(options)'}: {error_message(err)}" for err in exc.errors()
            )
            raise PluginError(f"invalid options for {KIND_LABELS[kind]} {name!r}: {problems}") from None

    def create(self, kind: str, name: str, raw: dict[str, Any], *args: Any) -> Plugin:
        info = self.get(kind, name)
        return info.cls(self.options(kind, name, raw), *args)


def _build() -> PluginRegistry:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    sources: dict[int, tuple[str, str]] = {}
    for module_name in BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        manager.register(module, name=module_name)
        sources[id(module)] = ("nasflow", __version__)
    skipped: list[str] = []
    if os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes"):
        skipped = _load_entry_points(manager, sources)
    registry = PluginRegistry(manager, sources)
    registry.skipped[:0] = skipped
    return registry


def _load_entry_points(manager: pluggy.PluginManager, sources: dict[int, tuple[str, str]]) -> list[str]:
    skipped = []
    for ep in metadata.entry_points(group=hookspecs.PROJECT):
        dist = ep.dist.name if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else "?"
        if manager.has_plugin(ep.name) or manager.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            manager.register(plugin, name=ep.name)
        except Exception as exc:  # import errors, bad hook signatures: name it and go on
            message = f"nasflow plugin {ep.name!r} from package {dist} failed to load and was skipped: {exc}"
            warnings.warn(message, PluginWarning, stacklevel=2)
            skipped.append(message)
            manager.set_blocked(ep.name)
            continue
        sources[id(plugin)] = (dist, version)
    return skipped


_REGISTRY: PluginRegistry | None = None


def get_plugins() -> PluginRegistry:
    """The process-wide plugin registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _build()
    return _REGISTRY


def reset_plugins() -> None:
    """Forget discovered plugins (after installing a package at run time, or in tests)."""
    global _REGISTRY
    _REGISTRY = None
    importlib.invalidate_caches()
