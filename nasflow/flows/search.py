"""Search stage: ask the strategy, time candidates on the devices, proxy-train them, tell scores."""

from __future__ import annotations

from typing import Any

from prefect import flow

from ..data import load_dataset
from ..objectives import score
from ..plugin_api import Genome
from ..plugins import get_plugins
from ..progress import reporter
from ..space import Arch, LayerwiseSpace, arch_hash, format_arch
from .context import RunContext
from .latency import load_latency_models, time_candidates
from .evaluate import arch_costs, latency_on, make_devices, train_in_parallel
from .records import BufferedWriter, candidate_id, measurement_rows

STAGE = "search"


def _unique_new(archs: list[Arch], known: dict[str, dict]) -> list[Arch]:
    seen, todo = set(), []
    for arch in archs:
        h = arch_hash(arch)
        if h not in known and h not in seen:
            seen.add(h)
            todo.append(arch)
    return todo


def _candidate_row(ctx: RunContext, arch: Arch, genome: Genome, trained: dict, measured, error: str | None) -> dict[str, Any]:
    spec = ctx.spec
    h = arch_hash(arch)
    row: dict[str, Any] = {
        "candidate_id": candidate_id(ctx.run_id, STAGE, h),
        "run_id": ctx.run_id,
        "stage": STAGE,
        "arch": format_arch(arch),
        "arch_hash": h,
        "extra": {"genome": list(genome), "proxy_epochs": spec.search.proxy.epochs, "proxy_subset": spec.search.proxy.subset},
        **arch_costs(arch, spec.dataset),
    }
    error = error or trained.get("error")
    if error:
        row.update(status="failed", error=error, train_seconds=trained.get("train_seconds"))
        return row
    latency = latency_on(measured, spec.objective_device)
    row.update(
        status="ok",
        accuracy=trained["accuracy"],
        accuracy_source="proxy",
        val_loss=trained["val_loss"],
        train_epochs=trained["train_epochs"],
        train_seconds=trained["train_seconds"],
        score=score(trained["accuracy"], latency, spec.objectives),
    )
    return row


@flow(name="search", persist_result=False, validate_parameters=False)
def search_stage(ctx: RunContext) -> dict[str, Any]:
    """Evaluate `search.budget` proposals; returns counts. Re-running replays the registry's results."""
    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    data = load_dataset(spec.dataset)
    space = LayerwiseSpace(spec.space)
    strategy = get_plugins().create("search", spec.search.strategy, spec.search.options, space, spec.execution.seed)
    devices = make_devices(spec.devices)
    latency_models = None if spec.search.latency == "measured" else load_latency_models(registry, spec, devices, data)
    known = {row["arch_hash"]: row for row in registry.get_candidates(ctx.run_id, stage=STAGE)}
    reused = len(known)
    budget, proposed, evaluated = spec.search.budget, 0, 0
    rep.stage_start(STAGE, budget, f"{spec.search.strategy} over {space.size():,} architectures")
    with BufferedWriter(registry) as writer:
        while proposed < budget:
            genomes = strategy.ask(min(spec.search.batch_size, budget - proposed))
            archs = [space.to_arch(g) for g in genomes]
            todo = _unique_new(archs, known)
            # Latency first, serially, while no training task runs: timings must not share cores.
            measured = time_candidates(todo, devices, latency_models, spec, data.input_shape)
            trained = train_in_parallel(
                [format_arch(a) for a in todo], spec.dataset, spec.train.config,
                spec.search.proxy.epochs, spec.search.proxy.subset, spec.execution.workers,
                device=spec.execution.device, amp=spec.execution.amp,
            )
            rows, mrows = [], []
            genome_of = {arch_hash(a): g for a, g in zip(archs, genomes)}
            for arch, result in zip(todo, trained):
                h = arch_hash(arch)
                ms, error = measured[h]
                row = _candidate_row(ctx, arch, genome_of[h], result, ms, error)
                rows.append(row)
                mrows += measurement_rows(row["candidate_id"], ctx.run_id, ms)
                known[h] = row
            writer.add(rows, mrows)  # candidates and their measurements land in one transaction
            strategy.tell([(g, known[arch_hash(a)].get("score")) for g, a in zip(genomes, archs)])
            proposed += len(genomes)
            evaluated += len(todo)
            best = max((r["score"] for r in known.values() if r.get("score") is not None), default=None)
            rep.advance(STAGE, len(genomes), f"best score {best:.4f}" if best is not None else "no successful candidate yet")
    failed = sum(1 for r in known.values() if r["status"] != "ok")
    summary = {"proposed": proposed, "evaluated": evaluated, "reused": reused, "unique": len(known), "failed": failed}
    rep.stage_end(STAGE, f"{evaluated} evaluated, {reused} reused from the registry, {failed} failed")
    return summary
