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
        if (r.get("extra") or {}).get("stage_key") == key and r["parent_id"] in parents
    ]
    return with_latency(registry, rows, ctx.spec.objective_device, [d.name for d in ctx.spec.devices])


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
            )
        )
    except Exception as exc:  # a failed compression is recorded, the run goes on
        return {"error": describe_error(exc)}
    ckpt = checkpoint_path(spec.execution.work_dir, ctx.run_id, child_id(ctx, parent))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cpu_state_dict(result.model), ckpt)
    return {
        "error": None, "arch": format_arch(result.arch), "checkpoint": str(ckpt),
        "accuracy": result.val_accuracy, "val_loss": result.val_loss, "stats": result.stats,
        "test_accuracy": evaluate(result.model, data, split="test")[0],
    }


def _done(row: dict | None) -> bool:
    """Whether a stored child is finished: ok, and its weights still on disk (reused on re-run)."""
    ckpt = ((row or {}).get("extra") or {}).get("checkpoint")
    return bool(row and row["status"] == "ok" and ckpt and Path(ckpt).exists())


def _child_row(ctx: RunContext, parent: dict, result: dict, devices) -> tuple[dict, list[dict]]:
    spec = ctx.spec
    cand_id = child_id(ctx, parent)
    extra = {"compressor": spec.morph.compressor, "stage_key": morph_key(spec)}
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
        row, mrows = _child_row(ctx, parent, compress_candidate(ctx, parent), devices)
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
