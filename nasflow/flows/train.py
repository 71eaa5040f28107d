"""Train stage: fully train the best search candidates (and any listed architectures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import flow

from ..arch import resolve_arch
from ..data import load_dataset
from ..objectives import score
from ..progress import progress_channel, reporter
from ..space import arch_hash, build_model, format_arch, parse_arch
from .context import RunContext
from .evaluate import arch_costs, latency_on, make_devices, measure_everywhere, train_in_parallel
from .records import candidate_id, checkpoint_path, measurement_rows

STAGE = "train"


def best_candidates(rows: list[dict], k: int) -> list[dict]:
    ok = [r for r in rows if r["status"] == "ok" and r.get("score") is not None]
    return sorted(ok, key=lambda r: (-r["score"], r["arch_hash"]))[:k]


def _jobs(ctx: RunContext) -> list[dict[str, Any]]:
    """(arch, parent) pairs to train: top-k of the search, then explicitly listed architectures."""
    spec = ctx.spec
    jobs, seen = [], set()
    parents = best_candidates(ctx.registry().get_candidates(ctx.run_id, stage="search"), spec.train.top_k)
    for parent in parents:
        jobs.append({"arch": parent["arch"], "parent_id": parent["candidate_id"]})
        seen.add(parent["arch_hash"])
    for text in spec.train.archs:
        arch = resolve_arch(text)  # an architecture string or a zoo name (zoo:mobilenet_v2@0.5)
        if arch_hash(arch) not in seen:
            jobs.append({"arch": format_arch(arch), "parent_id": None})
            seen.add(arch_hash(arch))
    for job in jobs:
        h = arch_hash(job["arch"])
        job["candidate_id"] = candidate_id(ctx.run_id, STAGE, h, job["parent_id"])
        job["arch_hash"] = h
        job["checkpoint"] = str(checkpoint_path(spec.execution.work_dir, ctx.run_id, job["candidate_id"]))
    return jobs


def load_trained(ctx: RunContext, arch: str, checkpoint: str) -> torch.nn.Module:
    data = load_dataset(ctx.spec.dataset)
    model = build_model(parse_arch(arch), data.in_channels, data.num_classes)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


@flow(name="train", persist_result=False, validate_parameters=False)
def train_stage(ctx: RunContext) -> dict[str, Any]:
    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    data = load_dataset(spec.dataset)
    jobs = _jobs(ctx)
    done = {r["candidate_id"] for r in registry.get_candidates(ctx.run_id, stage=STAGE)}
    todo = [j for j in jobs if not (j["candidate_id"] in done and Path(j["checkpoint"]).exists())]
    epochs = spec.train.config.epochs  # the bar counts epochs: workers advance it as each one ends
    rep.stage_start(STAGE, len(jobs) * epochs, f"{len(jobs)} candidates x {epochs} epochs")
    rep.advance(STAGE, (len(jobs) - len(todo)) * epochs, "reused from the registry" if len(todo) < len(jobs) else "")
    with progress_channel(STAGE) as channel:
        results = train_in_parallel(
            [j["arch"] for j in todo], spec.dataset, spec.train.config, epochs, 1.0,
            spec.execution.workers, [j["checkpoint"] for j in todo], test=True, progress=channel,
            device=spec.execution.device, amp=spec.execution.amp,
        )
    devices = make_devices(spec.devices)
    rows, mrows = [], []
    for job, result in zip(todo, results):
        row = {
            "candidate_id": job["candidate_id"], "run_id": ctx.run_id, "stage": STAGE, "arch": job["arch"],
            "arch_hash": job["arch_hash"], "parent_id": job["parent_id"],
            "extra": {"checkpoint": job["checkpoint"]}, **arch_costs(parse_arch(job["arch"]), spec.dataset),
        }
        error = result.get("error")
        measured = []
        if not error:
            measured, error = measure_everywhere(devices, load_trained(ctx, job["arch"], job["checkpoint"]), data.input_shape)
        if error:
            row.update(status="failed", error=error)
        else:
            latency = latency_on(measured, spec.objective_device)
            row.update(
                status="ok", accuracy=result["accuracy"], accuracy_source="full",
                test_accuracy=result["test_accuracy"], val_loss=result["val_loss"],
                train_epochs=result["train_epochs"], train_seconds=result["train_seconds"],
                score=score(result["accuracy"], latency, spec.objectives),
            )
        rows.append(row)
        mrows += measurement_rows(job["candidate_id"], ctx.run_id, measured)
        # Epochs no worker could report (another process, or a failure part-way) count now.
        unreported = max(0, epochs - result.get("epochs_reported", 0))
        rep.advance(STAGE, unreported, f"acc {row.get('accuracy', 0):.3f}" if row["status"] == "ok" else f"failed: {error}")
    registry.add_evaluated(rows, mrows)
    rep.stage_end(STAGE, f"{len(todo)} trained, {len(jobs) - len(todo)} reused")
    return {"trained": len(todo), "reused": len(jobs) - len(todo)}
