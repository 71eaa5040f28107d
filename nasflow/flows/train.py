"""Train stage: fully train the best search candidates (and any listed architectures).

Each model's row is recorded as soon as its training ends, so an interruption loses only the
models still training. Its timings (and so its score) follow once every model of the stage is
trained: timings never share the cores with training. Row ids include a hash of `train.config`,
so changed training settings train new rows beside the old ones, and the later stages take the
rows of the current settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import flow
from prefect.futures import as_completed

from ..arch import resolve_arch
from ..data import load_dataset
from ..objectives import score
from ..progress import progress_channel, reporter
from ..registry import Registry
from ..space import arch_hash, build_model, format_arch, parse_arch
from ..spec import Spec
from ..train import stop_training_on_interrupt
from .context import RunContext
from .evaluate import arch_costs, latency_on, make_devices, measure_everywhere, threads_per_task, train_candidates
from .records import (
    candidate_id, checkpoint_path, device_failure_rows, measurement_rows, objective_failure, retried, stage_key,
)
from .selection import best_candidates, over_cap, pareto_candidates, with_latency

STAGE = "train"


def train_key(spec: Spec) -> str:
    """Settings key of train rows: what full training does (not which models it is given)."""
    return stage_key({"train": spec.train.config.model_dump(mode="json")})


def current_train_rows(registry: Registry, ctx: RunContext) -> list[dict]:
    """The run's train rows made with the current training settings, with their latencies."""
    key = train_key(ctx.spec)
    rows = [r for r in registry.get_candidates(ctx.run_id, stage=STAGE) if (r.get("extra") or {}).get("stage_key") == key]
    return with_latency(registry, rows, ctx.spec.objective_device, [d.name for d in ctx.spec.devices])


def _jobs(ctx: RunContext, registry: Registry) -> tuple[list[dict[str, Any]], int]:
    """(jobs to train: top-k of the search, then explicitly listed architectures; search
    candidates left out for breaking objectives.max_latency_ms)."""
    spec = ctx.spec
    key = train_key(spec)
    search = with_latency(
        registry, registry.get_candidates(ctx.run_id, stage="search"), spec.objective_device, [d.name for d in spec.devices]
    )
    jobs, seen = [], set()
    parents = (
        pareto_candidates(registry, search, spec.train.top_k, spec) if spec.objectives.pareto
        else best_candidates(search, spec.train.top_k, spec.objectives)
    )
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
        job["candidate_id"] = candidate_id(ctx.run_id, STAGE, h, job["parent_id"], key)
        job["arch_hash"] = h
        job["checkpoint"] = str(checkpoint_path(spec.execution.work_dir, ctx.run_id, job["candidate_id"]))
    return jobs, over_cap(search, spec.objectives)


def load_trained(ctx: RunContext, arch: str, checkpoint: str) -> torch.nn.Module:
    data = load_dataset(ctx.spec.dataset)
    model = build_model(parse_arch(arch), data.in_channels, data.num_classes)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def _trained_row(ctx: RunContext, job: dict, result: dict) -> dict[str, Any]:
    """The row of a model whose training just ended (not timed yet: no score)."""
    spec = ctx.spec
    row = {
        "candidate_id": job["candidate_id"], "run_id": ctx.run_id, "stage": STAGE, "arch": job["arch"],
        "arch_hash": job["arch_hash"], "parent_id": job["parent_id"],
        "extra": {"checkpoint": job["checkpoint"], "stage_key": train_key(spec)},
        **arch_costs(parse_arch(job["arch"]), spec.dataset),
    }
    if result.get("error"):
        row.update(status="failed", error=result["error"], train_seconds=result.get("train_seconds"))
        return row
    row.update(
        status="ok", accuracy=result["accuracy"], accuracy_source="full", test_accuracy=result["test_accuracy"],
        val_loss=result["val_loss"], train_epochs=result["train_epochs"], train_seconds=result["train_seconds"],
    )
    return row


def _is_trained(row: dict | None) -> bool:
    """Whether a stored row holds a finished training whose weights are still on disk."""
    checkpoint = ((row or {}).get("extra") or {}).get("checkpoint")
    return bool(row and row.get("accuracy") is not None and checkpoint and Path(checkpoint).exists())


def _timed_row(ctx: RunContext, row: dict, devices) -> tuple[dict, list[dict]]:
    """`row` with its score, after timing its model on every device; its measurement rows."""
    spec = ctx.spec
    model = load_trained(ctx, row["arch"], row["extra"]["checkpoint"])
    measured, failures = measure_everywhere(devices, model, load_dataset(spec.dataset).input_shape)
    timed = {**row, "status": "ok", "error": None}
    error = objective_failure(spec.objective_device, failures)
    if error:  # trained, but without the number its score needs
        timed.update(status="failed", error=error, score=None)
    else:
        timed["score"] = score(row["accuracy"], latency_on(measured, spec.objective_device), spec.objectives)
    mrows = measurement_rows(row["candidate_id"], ctx.run_id, measured)
    return timed, mrows + device_failure_rows(row["candidate_id"], ctx.run_id, failures)


@flow(name="train", persist_result=False, validate_parameters=False)
def train_stage(ctx: RunContext) -> dict[str, Any]:
    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    jobs, over = _jobs(ctx, registry)
    stored = {r["candidate_id"]: r for r in registry.get_candidates(ctx.run_id, stage=STAGE)}
    finished = [j for j in jobs if _is_trained(stored.get(j["candidate_id"])) and stored[j["candidate_id"]]["status"] == "ok"
                and stored[j["candidate_id"]].get("score") is not None]
    to_time = [j for j in jobs if j not in finished and _is_trained(stored.get(j["candidate_id"]))]
    to_train = [j for j in jobs if j not in finished and j not in to_time]
    cap_note = (f"; {over} search candidates over objectives.max_latency_ms ({spec.objectives.max_latency_ms:g} ms) "
                "left out" if over else "")
    epochs = spec.train.config.epochs  # the bar counts epochs: workers advance it as each one ends
    rep.stage_start(STAGE, len(jobs) * epochs, f"{len(jobs)} candidates x {epochs} epochs{cap_note}")
    rep.advance(STAGE, len(finished) * epochs, "reused from the registry" if finished else "")
    trained_now = []
    if to_train:
        threads = threads_per_task(min(spec.execution.workers, len(to_train)))
        with progress_channel(STAGE) as channel:
            futures = {
                train_candidates.submit(
                    [job["arch"]], spec.dataset, spec.train.config, epochs, 1.0, threads, [job["checkpoint"]], True,
                    channel, spec.execution.device, spec.execution.amp,
                ): job
                for job in to_train
            }
            with stop_training_on_interrupt():  # Ctrl-C / SIGTERM: trainings in flight stop too
                for future in as_completed(list(futures)):
                    job = futures[future]
                    result = future.result()[0]
                    row = retried(_trained_row(ctx, job, result), stored.get(job["candidate_id"]))
                    registry.add_evaluated([row], [], replace=True)  # recorded now: an interruption keeps it
                    stored[job["candidate_id"]] = row
                    # Epochs no worker could report (another process, or a failure part-way) count now.
                    unreported = max(0, epochs - result.get("epochs_reported", 0))
                    if row["status"] == "ok":
                        trained_now.append(job)
                        rep.advance(STAGE, unreported, f"trained {job['arch_hash'][:8]}: acc {row['accuracy']:.3f}")
                    else:
                        rep.advance(STAGE, unreported, f"failed: {row['error']}")
    devices = make_devices(spec.devices)
    for job in to_time + trained_now:  # every training has ended: timings have the cores to themselves
        row, mrows = _timed_row(ctx, stored[job["candidate_id"]], devices)
        row = retried(row, stored[job["candidate_id"]])
        registry.add_evaluated([row], mrows, replace=True)
        info = f"timed {job['arch_hash'][:8]}" if row["status"] == "ok" else f"failed: {row['error']}"
        rep.advance(STAGE, epochs if job in to_time else 0, info)  # trained before an interruption
    reused = len(finished)
    rep.stage_end(STAGE, f"{len(to_train)} trained, {len(to_time)} timed after an interruption, {reused} reused{cap_note}")
    return {"trained": len(to_train), "timed": len(to_time), "reused": reused, "over_cap": over}

