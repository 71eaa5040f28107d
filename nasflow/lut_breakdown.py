"""An architecture's latency from a device's stored LUT, layer by layer.

Shared by `nasflow arch --device` and the report page (each block's share of the latency). Only
the registry's `lut` table is read: nothing is timed and torch is not imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .arch.operators import arch_operators
from .errors import NasflowError


@dataclass
class LutTable:
    """One device fingerprint's LUT entries: (op_key, input_shape) -> milliseconds."""

    fingerprint_hash: str
    entries: dict[tuple[str, str], float] = field(default_factory=dict)
    created: Any = None
    batches: set[int] = field(default_factory=set)


def device_tables(registry, device: str) -> list[LutTable]:
    """The registry's LUTs of `device`, newest first (one per device fingerprint)."""
    _, rows = registry.query(
        "SELECT fingerprint_hash, op_key, input_shape, median_ms, created_at FROM lut WHERE device = ?", [device]
    )
    tables: dict[str, LutTable] = {}
    for fp, key, shape, ms, created in rows:
        table = tables.setdefault(fp, LutTable(fp, created=created))
        table.entries[(key, shape)] = ms
        table.created = max(table.created, created)
        table.batches.add(int(shape.split("x")[0]))
    return sorted(tables.values(), key=lambda t: t.created, reverse=True)


def lut_geometries(table: LutTable, arch) -> list[tuple[int, int, tuple[int, int]]]:
    """(input channels, classes, (height, width)) the LUT holds this architecture's stem and head
    for: the geometry of the data it was profiled on, read back from the entries themselves."""
    stem_prefix, head_prefix = f"{arch.stem_token()}@", f"{arch.head_token()}_n"
    inputs = {(int(key[len(stem_prefix):]), tuple(int(d) for d in shape.split("x")[2:]))
              for key, shape in table.entries if key.startswith(stem_prefix)}
    classes = {int(key[len(head_prefix):].split("@")[0]) for key, _ in table.entries if key.startswith(head_prefix)}
    return sorted((channels, n, size) for channels, size in inputs for n in classes if len(size) == 2)


def lut_breakdown(registry, device: str, arch, channels: int | None = None, classes: int | None = None,
                  size=None, registry_name: str = "the registry", partial: bool = False) -> dict:
    """LUT-sum latency of `arch` on `device` from the newest LUT covering all its operators.

    Returns device, fingerprint_hash, batch_size, operators, lut_sum_ms and per_layer (ms per stem,
    block and head; None for blocks that execute nothing). Without `channels`/`classes`/`size`
    the geometry is read from the LUT. Raises NasflowError naming what is missing; with `partial`,
    the closest LUT is used instead and `missing` lists the layer positions it lacks (a morphed
    width outside the profiled space, say), their milliseconds None.
    """
    tables = device_tables(registry, device)
    if not tables:
        raise NasflowError(f"{registry_name} has no latency LUT for device {device!r}; "
                           f"build one with `nasflow profile SPEC --device {device}`")
    best_missing: list = []
    closest = None
    for table in tables:
        shapes = ([(channels, classes, size)] if channels is not None else lut_geometries(table, arch))
        for geometry in shapes:
            for batch in sorted(table.batches):
                ops = arch_operators(arch, geometry[0], geometry[1], geometry[2], batch)
                missing = [op for op in ops if op.lut_key not in table.entries]
                if not missing:
                    return _breakdown(device, table, batch, geometry, arch, ops)
                if not best_missing or len(missing) < len(best_missing):
                    best_missing, closest = missing, (table, batch, geometry, ops)
    if partial and closest is not None:
        return _breakdown(device, *closest[:3], arch, closest[3])
    if not best_missing:  # no geometry given and none found: the LUT lacks this stem or head
        raise NasflowError(f"no latency LUT of device {device!r} in {registry_name} holds this architecture's "
                           f"stem and head (a LUT holds the operators of the space it was profiled for)")
    where = f" at {channels}x{size}x{size}" if channels is not None else ""
    example = best_missing[0]
    raise NasflowError(
        f"no latency LUT of device {device!r} in {registry_name} covers this architecture{where}: "
        f"{len(best_missing)} operator(s) missing, e.g. {example.key} "
        f"at {example.shape} (a LUT holds the operators of the space it was profiled for)"
    )


def _breakdown(device: str, table: LutTable, batch: int, geometry, arch, ops) -> dict:
    per_layer, missing = per_layer_ms(arch, ops, table.entries)
    return {"device": device, "fingerprint_hash": table.fingerprint_hash, "batch_size": batch,
            "operators": len(ops), "lut_sum_ms": sum(ms for ms in per_layer if ms is not None),
            "per_layer": per_layer, "missing": missing,
            "geometry": {"channels": geometry[0], "classes": geometry[1], "size": geometry[2]}}


def per_layer_ms(arch, ops, entries: dict) -> tuple[list, list[int]]:
    """LUT milliseconds per layer row (stem, blocks, head), None for layers that execute nothing
    or that `entries` lacks; and the positions of the lacking ones."""
    by_position, missing, index = [], [], 0
    layers = [True] + [block.lut_key(1) is not None for block in arch.blocks] + [True]
    for position, executes in enumerate(layers):
        if executes:
            ms = entries.get(ops[index].lut_key)
            by_position.append(ms)
            if ms is None:
                missing.append(position)
            index += 1
        else:
            by_position.append(None)
    return by_position, missing
