"""Morph stage: shrink the best trained candidates with a compressor; children keep their lineage.

A child's id is (parent, compressor settings): compressing the same parent with the same settings
is the same candidate whatever architecture comes out, so a failed compression and its later
success share one row. Each child is recorded as soon as it is compressed and timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ..data import load_dataset
from ..objectives import score
from ..plugin_api import CompressContext
from ..plugins import get_plugins
from ..progress import reporter
from ..registry import Registry
from ..space import arch_hash, format_arch, parse_arch
from ..spec import Spec
from ..train import cpu_state_dict, evaluate
from ..train_device import resolve_device
from .context import RunContext
from .evaluate import arch_costs, describe_error, latency_on, make_devices, measure_everywhere
from .records import (
    candidate_id, checkpoint_path, device_failure_rows, measurement_rows, objective_failure, retried, stage_key,
)
from .selection import best_candidates, over_cap, with_latency
from .train import current_train_rows, load_trained

STAGE = "morph"


def morph_key(spec: Spec) -> str:
    """Settings key of morph rows: the compressor and its options (the parent is in the id)."""
    return stage_key({"compressor": spec.morph.compressor, "options": spec.morph.options})


def current_morph_rows(registry: Registry, ctx: RunContext, train_rows: list[dict]) -> list[dict]:
    """Morph rows of the current compressor settings whose parents are the current train rows."""
    key = morph_key(ctx.spec)
    parents = {r["candidate_id"] for r in train_rows}
    rows = [
        r for r in registry.get_candidates(ctx.run_id, stage=STAGE)
        if (r.get("extra") or {}).get("stage_key") == key and _seed_of(r) in parents
        and not (r.get("extra") or {}).get("intermediate")
    ]
    return with_latency(registry, rows, ctx.spec.objective_device, [d.name for d in ctx.spec.devices])


def _seed_of(row: dict) -> str | None:
    """The trained candidate a morph row was compressed from (its parent, unless it is a later
    step of a multi-step compression)."""
    return (row.get("extra") or {}).get("seed_id") or row["parent_id"]


def child_id(ctx: RunContext, parent: dict) -> str:
    return candidate_id(ctx.run_id, STAGE, None, parent["candidate_id"], morph_key(ctx.spec))


@task(name="compress-candidate", cache_policy=NO_CACHE, persist_result=False)
def compress_candidate(ctx: RunContext, parent: dict[str, Any]) -> dict[str, Any]:
    """Compress one trained candidate and save the child's weights; never raises."""
    spec = ctx.spec
    try:
        data = load_dataset(spec.dataset)
        model = load_trained(ctx, parent["arch"], parent["extra"]["checkpoint"])
        compressor = get_plugins().create("compressor", spec.morph.compressor, spec.morph.options)
        latency = latency_models(ctx, type(compressor).latency_device(compressor.options, spec.objective_device), data)
        rep = reporter()
        result = compressor.compress(
            CompressContext(
                model=model,
                arch=parse_arch(parent["arch"]),
                dataset=data,
                train_config=spec.train.config,
                input_shape=data.input_shape,
                progress=lambda step, done, total: rep.message(f"{parent['arch_hash'][:8]} {step} {done}/{total}"),
                device=str(resolve_device(spec.execution.device)),
                amp=spec.execution.amp,
                latency=latency,
                objective_device=spec.objective_device,
            )
        )
    except Exception as exc:  # a failed compression is recorded, the run goes on
        return {"error": describe_error(exc)}
    steps = [*result.intermediates, result]
    ids = [intermediate_id(ctx, parent, i + 1) for i in range(len(steps) - 1)] + [child_id(ctx, parent)]
    saved = []
    for step, cand_id in zip(steps, ids):
        ckpt = checkpoint_path(spec.execution.work_dir, ctx.run_id, cand_id)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cpu_state_dict(step.model), ckpt)
        saved.append({
            "error": None, "arch": format_arch(step.arch), "checkpoint": str(ckpt),
            "accuracy": step.val_accuracy, "val_loss": step.val_loss, "stats": step.stats,
            "test_accuracy": evaluate(step.model, data, split="test")[0],
        })
    return {**saved[-1], "intermediates": saved[:-1]}


def latency_models(ctx: RunContext, device_name: str | None, data) -> dict[str, Any]:
    """{device: its width-aware latency model} for a compressor that prices channels by latency:
    fitted to the LUT the profile stage stored for the device's current fingerprint."""
    if device_name is None:
        return {}
    from ..errors import SpecError
    from ..lut import device_batch_size, device_fingerprint_hash, lut_entries, stored_lut
    from ..spec import space_for_data
    from ..width_latency import WidthLatencyModel

    spec = ctx.spec
    device = make_devices([d for d in spec.devices if d.name == device_name])[device_name]
    table = stored_lut(ctx.registry(), device_name, device_fingerprint_hash(device))
    if not table:
        raise SpecError(f"the morph stage prices channels by latency on {device_name}, which has no latency LUT with its "
                        "current fingerprint; set profile.enabled and profile.lut: true")
    batch = device_batch_size(device)
    size = tuple(data.input_shape[2:])
    ops = lut_entries(space_for_data(spec, data), data.in_channels, data.num_classes, size, batch)
    model = WidthLatencyModel.fit(device_name, table, ops, data.in_channels, data.num_classes, size, batch)
    return {device_name: model}


def intermediate_id(ctx: RunContext, parent: dict, step: int) -> str:
    """Id of the `step`-th network a multi-step compressor passed through (MorphNet's cycle `step`)."""
    return candidate_id(ctx.run_id, STAGE, None, parent["candidate_id"], f"{morph_key(ctx.spec)}/step{step}")


def _done(row: dict | None) -> bool:
    """Whether a stored child is finished: ok, and its weights still on disk (reused on re-run)."""
    ckpt = ((row or {}).get("extra") or {}).get("checkpoint")
    return bool(row and row["status"] == "ok" and ckpt and Path(ckpt).exists())


def _child_rows(ctx: RunContext, parent: dict, result: dict, devices) -> list[tuple[dict, list[dict]]]:
    """The rows of one compression: each intermediate network (its parent the one before, the first's
    the trained seed), then the stage's output, whose parent is the last intermediate."""
    steps = [*result.get("intermediates", []), result]
    ids = [intermediate_id(ctx, parent, i + 1) for i in range(len(steps) - 1)] + [child_id(ctx, parent)]
    rows, previous = [], parent
    for i, (step, cand_id) in enumerate(zip(steps, ids)):
        extra = {"seed_id": parent["candidate_id"]}
        if i < len(steps) - 1:
            extra.update(intermediate=True, step=i + 1)
        rows.append(_child_row(ctx, previous, step, devices, cand_id, extra))
        previous = rows[-1][0]
    return rows


def _child_row(ctx: RunContext, parent: dict, result: dict, devices, cand_id: str, lineage: dict) -> tuple[dict, list[dict]]:
    spec = ctx.spec
    extra = {"compressor": spec.morph.compressor, "stage_key": morph_key(spec), **lineage}
    if result["error"]:
        return {
            "candidate_id": cand_id, "run_id": ctx.run_id, "stage": STAGE, "arch": parent["arch"],
            "arch_hash": parent["arch_hash"], "parent_id": parent["candidate_id"], "status": "failed",
            "error": result["error"], "extra": extra,
        }, []
    data = load_dataset(spec.dataset)
    model = load_trained(ctx, result["arch"], result["checkpoint"])
    measured, failures = measure_everywhere(devices, model, data.input_shape)
    h = arch_hash(result["arch"])
    # Nothing pruned (or pruned and re-expanded to the same widths): the same architecture,
    # fine-tuned further. Recorded, and said so, rather than passed off as a smaller model.
    extra = {**result["stats"], **extra, "checkpoint": result["checkpoint"], "same_arch_as_parent": h == parent["arch_hash"]}
    row = {
        "candidate_id": cand_id, "run_id": ctx.run_id, "stage": STAGE, "arch": result["arch"],
        "arch_hash": h, "parent_id": parent["candidate_id"], "extra": extra,
        **arch_costs(parse_arch(result["arch"]), spec.dataset),
        "accuracy": result["accuracy"], "accuracy_source": "full", "test_accuracy": result["test_accuracy"],
        "val_loss": result["val_loss"],
    }
    error = objective_failure(spec.objective_device, failures)
    if error:
        row.update(status="failed", error=error)
    else:
        row.update(status="ok", score=score(result["accuracy"], latency_on(measured, spec.objective_device), spec.objectives))
    mrows = measurement_rows(cand_id, ctx.run_id, measured) + device_failure_rows(cand_id, ctx.run_id, failures)
    return row, mrows


@flow(name="morph", persist_result=False, validate_parameters=False)
def morph_stage(ctx: RunContext) -> dict[str, Any]:
    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    train_rows = current_train_rows(registry, ctx)
    parents = best_candidates(train_rows, spec.morph.top_k, spec.objectives)
    over = over_cap(train_rows, spec.objectives)
    stored = {r["candidate_id"]: r for r in registry.get_candidates(ctx.run_id, stage=STAGE)}
    todo = [p for p in parents if not _done(stored.get(child_id(ctx, p)))]
    cap_note = f"; {over} trained models over objectives.max_latency_ms left out" if over else ""
    rep.stage_start(STAGE, len(parents), f"{spec.morph.compressor} on {len(parents)} trained candidates{cap_note}")
    rep.advance(STAGE, len(parents) - len(todo), "reused from the registry" if len(todo) < len(parents) else "")
    devices = make_devices(spec.devices)
    unchanged = 0
    for parent in todo:
        *steps, (row, mrows) = _child_rows(ctx, parent, compress_candidate(ctx, parent), devices)
        for step, step_mrows in steps:  # earlier cycles' networks, recorded before the output
            registry.add_evaluated([retried(step, stored.get(step["candidate_id"]))], step_mrows, replace=True)
        row = retried(row, stored.get(row["candidate_id"]))
        registry.add_evaluated([row], mrows, replace=True)
        if row["status"] != "ok":
            info = f"failed: {row['error']}"
        elif row["extra"]["same_arch_as_parent"]:
            unchanged += 1
            info = f"nothing pruned: same architecture as its parent, fine-tuned; acc {row['accuracy']:.3f}"
        else:
            info = f"{parent['macs']:,} -> {row['macs']:,} MACs, acc {row['accuracy']:.3f}"
        rep.advance(STAGE, 1, info)
    same = f", {unchanged} left the architecture unchanged" if unchanged else ""
    rep.stage_end(STAGE, f"{len(todo)} compressed, {len(parents) - len(todo)} reused{same}{cap_note}")
    return {"compressed": len(todo), "reused": len(parents) - len(todo), "unchanged": unchanged, "over_cap": over}
