"""Morph stage: shrink the best trained candidates with a compressor; children keep their lineage."""

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
from ..space import arch_hash, format_arch, parse_arch
from ..train import cpu_state_dict, evaluate
from ..train_device import resolve_device
from .context import RunContext
from .evaluate import arch_costs, describe_error, latency_on, make_devices, measure_everywhere
from .records import candidate_id, checkpoint_path, measurement_rows
from .train import best_candidates, load_trained

STAGE = "morph"


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
    child = format_arch(result.arch)
    cand_id = candidate_id(ctx.run_id, STAGE, arch_hash(child), parent["candidate_id"])
    ckpt = checkpoint_path(spec.execution.work_dir, ctx.run_id, cand_id)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cpu_state_dict(result.model), ckpt)
    return {
        "error": None, "arch": child, "candidate_id": cand_id, "checkpoint": str(ckpt),
        "accuracy": result.val_accuracy, "val_loss": result.val_loss, "stats": result.stats,
        "test_accuracy": evaluate(result.model, data, split="test")[0],
    }


def _done_children(rows: list[dict]) -> dict[str, dict]:
    """Parent id -> finished child whose weights are still on disk (reused on re-run)."""
    done = {}
    for row in rows:
        ckpt = (row.get("extra") or {}).get("checkpoint")
        if row["status"] == "ok" and ckpt and Path(ckpt).exists():
            done[row["parent_id"]] = row
    return done


def _child_row(ctx: RunContext, parent: dict, result: dict, devices) -> tuple[dict, list[dict]]:
    spec = ctx.spec
    if result["error"]:
        failed_id = candidate_id(ctx.run_id, STAGE, "failed", parent["candidate_id"])
        return {
            "candidate_id": failed_id, "run_id": ctx.run_id, "stage": STAGE, "arch": parent["arch"],
            "arch_hash": parent["arch_hash"], "parent_id": parent["candidate_id"], "status": "failed",
            "error": result["error"],
        }, []
    data = load_dataset(spec.dataset)
    model = load_trained(ctx, result["arch"], result["checkpoint"])
    measured, error = measure_everywhere(devices, model, data.input_shape)
    row = {
        "candidate_id": result["candidate_id"], "run_id": ctx.run_id, "stage": STAGE, "arch": result["arch"],
        "arch_hash": arch_hash(result["arch"]), "parent_id": parent["candidate_id"],
        "extra": {"checkpoint": result["checkpoint"], "compressor": spec.morph.compressor, **result["stats"]},
        **arch_costs(parse_arch(result["arch"]), spec.dataset),
    }
    if error:
        row.update(status="failed", error=error)
    else:
        latency = latency_on(measured, spec.objective_device)
        row.update(status="ok", accuracy=result["accuracy"], accuracy_source="full",
                   test_accuracy=result["test_accuracy"], val_loss=result["val_loss"],
                   score=score(result["accuracy"], latency, spec.objectives))
    return row, measurement_rows(row["candidate_id"], ctx.run_id, measured)


@flow(name="morph", persist_result=False, validate_parameters=False)
def morph_stage(ctx: RunContext) -> dict[str, Any]:
    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    parents = best_candidates(registry.get_candidates(ctx.run_id, stage="train"), spec.morph.top_k)
    done = _done_children(registry.get_candidates(ctx.run_id, stage=STAGE))
    todo = [p for p in parents if p["candidate_id"] not in done]
    rep.stage_start(STAGE, len(parents), f"{spec.morph.compressor} on {len(parents)} trained candidates")
    rep.advance(STAGE, len(parents) - len(todo), "reused from the registry" if len(todo) < len(parents) else "")
    devices = make_devices(spec.devices)
    summaries = []
    for parent in todo:
        row, mrows = _child_row(ctx, parent, compress_candidate(ctx, parent), devices)
        registry.add_evaluated([row], mrows)
        summaries.append(row)
        info = (f"{parent['macs']:,} -> {row['macs']:,} MACs, acc {row['accuracy']:.3f}"
                if row["status"] == "ok" else f"failed: {row['error']}")
        rep.advance(STAGE, 1, info)
    rep.stage_end(STAGE, f"{len(todo)} compressed, {len(parents) - len(todo)} reused")
    return {"compressed": len(todo), "reused": len(parents) - len(todo)}
