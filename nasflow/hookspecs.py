"""Every pluggy hook nasflow calls, grouped by plugin kind; built-ins implement the same hooks.

A plugin module (or object) implements any of these with ``@nasflow.hookspecs.hookimpl`` and is
found through the ``nasflow`` entry-point group. Each hook returns a list of plugin classes; the
results of all plugins are concatenated, so a module may provide several of each kind.
"""

from __future__ import annotations

import pluggy

from .plugin_api import Compressor, DeviceBackend, Exporter, SearchSpace, SearchStrategy, SupernetStrategy

PROJECT = "nasflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def nasflow_search_strategies() -> list[type[SearchStrategy | SupernetStrategy]]:
    """Called once when the plugin manager is built.

    Return the SearchStrategy (ask/tell) or SupernetStrategy (one-shot) subclasses this plugin
    provides. Each class needs a unique ``name``
    (the value of ``search.strategy`` in a spec) and may define an ``Options`` pydantic model,
    which validates ``search.options`` when the spec is validated.
    """


@hookspec
def nasflow_devices() -> list[type[DeviceBackend]]:
    """Called once when the plugin manager is built.

    Return the DeviceBackend subclasses this plugin provides. Each class needs a unique ``name``
    (used in the spec's ``devices`` list), an ``Options`` model for the device's ``options`` and
    an ``unavailable_reason()`` classmethod that says what is missing when it cannot run here.
    """


@hookspec
def nasflow_compressors() -> list[type[Compressor]]:
    """Called once when the plugin manager is built.

    Return the Compressor subclasses this plugin provides. Each class needs a unique ``name``
    (the value of ``morph.compressor``) and an ``Options`` model for ``morph.options``.
    """


@hookspec
def nasflow_search_spaces() -> list[type[SearchSpace]]:
    """Called once when the plugin manager is built.

    Return the SearchSpace subclasses this plugin provides. Each class needs a unique ``name``
    (the value of ``space.name`` in a spec) and an ``Options`` model for ``space.options``; it is
    constructed as ``cls(options, geometry)``.
    """


@hookspec
def nasflow_exporters() -> list[type[Exporter]]:
    """Called once when the plugin manager is built.

    Return the Exporter subclasses this plugin provides. Each class needs a unique ``name`` (a
    value of ``deploy.formats``), a file ``suffix``, ``export`` and ``runner``; its ``Options``
    model validates ``deploy.options.<name>``.
    """


KIND_HOOKS = {
    "search": "nasflow_search_strategies",
    "device": "nasflow_devices",
    "compressor": "nasflow_compressors",
    "space": "nasflow_search_spaces",
    "exporter": "nasflow_exporters",
}
"""Plugin kind -> the hook that lists plugins of that kind."""
