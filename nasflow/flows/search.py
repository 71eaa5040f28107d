"""Search stage: ask the strategy, time candidates on the devices, proxy-train them, tell scores.

`search.budget` counts distinct architectures evaluated: a proposal that repeats one already
evaluated in this search is told its recorded score and costs nothing. The strategy always asks
for full `search.batch_size` batches and the budget only cuts the last one short, so the sequence
of proposals does not depend on the budget: re-running the spec replays the strategy (seeded, told
the recorded scores) through the registry's rows, and a raised budget continues where the old one
stopped. Candidates that failed are evaluated again on a re-run, and a success replaces the row.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow

from ..data import Dataset, load_dataset
from ..errors import SpecError
from ..objectives import score
from ..plugin_api import DeviceBackend, Genome, SearchSpace, SearchStrategy, SupernetStrategy
from ..plugins import get_plugins
from ..progress import reporter
from ..space import Arch, arch_hash, format_arch
from ..spec import Spec, space_for_data
from .context import RunContext
from .evaluate import arch_costs, describe_error, latency_on, make_devices, model_for, train_in_parallel
from .latency import LatencyModel, load_latency_models, time_candidates
from .records import BufferedWriter, candidate_id, device_failure_rows, measurement_rows, objective_failure, retried
from .told import candidate_result

STAGE = "search"

# Consecutive proposals that bring no new architecture before the search gives up on the budget
# (a space smaller than the budget, or a strategy that only repeats itself).
STALL_PROPOSALS = 200

# A latency cap this far below the fastest architecture's latency cannot be met by any
# candidate (the estimate is one noisy number, hence the margin); closer than that, a warning.
# A target (soft, MnasNet) is only warned about, when clearly below the fastest.
CAP_REFUSE_BELOW, CAP_WARN_BELOW = 2 / 3, 1.1


def candidate_row(
    ctx: RunContext, arch: Arch, genome: Genome, trained: dict, measured, failures: dict[str, str],
    accuracy_source: str = "proxy", extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `search` row of one evaluated architecture: `trained` holds its accuracy (`proxy`
    training, or the `supernet`'s weights), `measured` its latencies; `extra` what the strategy
    adds to the genome (the proxy settings by default)."""
    spec = ctx.spec
    h = arch_hash(arch)
    if extra is None:
        extra = {"proxy_epochs": spec.search.proxy.epochs, "proxy_subset": spec.search.proxy.subset}
    row: dict[str, Any] = {
        "candidate_id": candidate_id(ctx.run_id, STAGE, h),
        "run_id": ctx.run_id,
        "stage": STAGE,
        "arch": format_arch(arch),
        "arch_hash": h,
        "extra": {"genome": list(genome), **extra},
        **arch_costs(arch, spec.dataset),
    }
    # Another device failing leaves its own failed measurement row; only the objective's decides.
    error = trained.get("error") or objective_failure(spec.objective_device, failures)
    if error:
        row.update(status="failed", error=error, train_seconds=trained.get("train_seconds"))
        return row
    latency = latency_on(measured, spec.objective_device)
    row.update(
        status="ok",
        accuracy=trained["accuracy"],
        accuracy_source=accuracy_source,
        val_loss=trained["val_loss"],
        train_epochs=trained["train_epochs"],
        train_seconds=trained["train_seconds"],
        score=score(trained["accuracy"], latency, spec.objectives),
    )
    return row


# ------------------------------------------------------------------ checks that protect the user


def chance_band(num_classes: int, val_size: int) -> tuple[float, float]:
    """(chance accuracy, upper edge of its binomial 2-sigma band on `val_size` validation images)."""
    chance = 1.0 / num_classes
    margin = 2.0 * math.sqrt(chance * (1.0 - chance) / max(val_size, 1))
    return chance, chance + margin


def chance_level_warning(rows: list[dict], spec: Spec, data: Dataset) -> str | None:
    """A warning when most proxy accuracies are indistinguishable from guessing, else None."""
    accuracies = sorted(r["accuracy"] for r in rows if r["status"] == "ok" and r.get("accuracy") is not None)
    if len(accuracies) < 3:
        return None
    chance, upper = chance_band(data.num_classes, len(data.val_y))
    at_chance = sum(1 for a in accuracies if a <= upper)
    if at_chance * 2 < len(accuracies):
        return None
    raise_these = [f"search.proxy.epochs (now {spec.search.proxy.epochs})"]
    if spec.search.proxy.subset < 1:
        raise_these.append(f"search.proxy.subset (now {spec.search.proxy.subset:g})")
    if spec.dataset.subset is not None:
        raise_these.append(f"dataset.subset (now {spec.dataset.subset:,} images)")
    return (
        f"{at_chance} of {len(accuracies)} search candidates have a proxy accuracy at chance level "
        f"(at most {upper:.3f}: chance is {chance:.3f} for {data.num_classes} classes, plus 2 sigma on "
        f"{len(data.val_y):,} validation images; best {accuracies[-1]:.3f}), so the search ranks noise; "
        f"raise {', '.join(raise_these)}"
    )


def fastest_latency(
    spec: Spec, space: SearchSpace, devices: dict[str, DeviceBackend],
    latency_models: dict[str, LatencyModel] | None, data: Dataset, reference: dict[str, float] | None = None,
) -> tuple[str, float, str]:
    """(arch, latency in ms, source) of the space's fastest architecture on the objective device,
    by the search's own latency source: its LUT or predictor when it uses one, else measured (the
    profile stage's `reference` timing of that same architecture when this run has one)."""
    arch = space.to_arch(space.cheapest_genome())
    device = spec.objective_device
    if latency_models:
        model = latency_models[device]
        return format_arch(arch), float(model.predictor.predict(arch)), model.source
    if reference and device in reference:
        return format_arch(arch), float(reference[device]), "measured"
    measurement = devices[device].measure_model(model_for(arch, spec.dataset), data.input_shape)
    return format_arch(arch), measurement.stats.median_ms, "measured"


def latency_goal_warnings(
    spec: Spec, space: SearchSpace, devices: dict[str, DeviceBackend],
    latency_models: dict[str, LatencyModel] | None, data: Dataset, reference: dict[str, float] | None = None,
) -> list[str]:
    """Refuse a latency cap no architecture of the space can meet; warn about one barely met, or a
    target below every architecture. Runs before any candidate is evaluated."""
    objectives = spec.objectives
    target = objectives.target_ms if objectives.reward == "mnasnet" else None
    if objectives.max_latency_ms is None and target is None:
        return []
    try:
        arch, fastest, source = fastest_latency(spec, space, devices, latency_models, data, reference)
    except Exception as exc:  # the candidates' own timings will show the problem; the check is advice
        return [f"the latency goal could not be checked before the search: {describe_error(exc)}"]
    where = f"the space's fastest architecture ({arch}) takes {fastest:.4g} ms on {spec.objective_device} ({source})"
    messages = []
    cap = objectives.max_latency_ms
    if cap is not None and cap < fastest * CAP_REFUSE_BELOW:
        raise SpecError(
            f"objectives.max_latency_ms {cap:g} ms cannot be met: {where}; raise the cap, or make the space's "
            "smallest choices smaller (fewer or narrower stages, smaller kernels and expansions, allow_skip)"
        )
    if cap is not None and cap < fastest * CAP_WARN_BELOW:
        messages.append(
            f"objectives.max_latency_ms {cap:g} ms is barely reachable: {where}; few or no candidates will meet "
            "it, and only those are trained and deployed"
        )
    if target is not None and target * CAP_WARN_BELOW < fastest:
        messages.append(
            f"objectives.target_ms {target:g} ms is out of reach: {where}; the MnasNet reward penalises every "
            "candidate for latency; raise the target to one the space can reach"
        )
    return messages


def _warn(message: str) -> None:
    """Say it on the progress channel now (stderr stays for the run's one error or interrupt line);
    the run's summary repeats it at the end."""
    reporter().message(f"warning: {message}")


# ------------------------------------------------------------------ the stage


def _warm_start(ctx: RunContext, registry, space, devices, stored: dict, measured_rows: dict):
    """(this run's warm-start rows, architectures to evaluate again first as (genome, run id), a
    warning when nothing could be reused). Chosen from the runs started before this one, the same
    way on every start; copies not yet recorded are written before the search proposes anything."""
    spec = ctx.spec
    if not spec.search.warm_start.enabled:
        return [], [], None
    from .warm_start import collect

    found = collect(registry, spec, ctx.run_id, space, devices)
    note = found.message()
    if note:
        _warn(note)
        return [], [], note
    recorded = {r["candidate_id"] for r in stored.values()}
    new = [r for r in found.rows if r["candidate_id"] not in recorded]
    new_ids = {r["candidate_id"] for r in new}
    registry.add_evaluated(new, [m for m in found.measurements if m["candidate_id"] in new_ids])
    for m in found.measurements:
        if m["candidate_id"] in new_ids:
            measured_rows.setdefault(m["candidate_id"], []).append(m)
    rows = []
    for row in found.rows:
        stored.setdefault(row["arch_hash"], row)
        rows.append(stored[row["arch_hash"]])
    sources = sorted({r["extra"]["reused_from"] for r in rows} | {run for _, run in found.seeds})
    reporter().message(
        f"warm start: {len(rows)} candidates reused and {len(found.seeds)} to evaluate again, "
        f"from {', '.join(sources)}"
    )
    return _worst_first(rows), found.seeds, None


def _worst_first(rows: list[dict]) -> list[dict]:
    """Warm-start rows in the order they are told: ascending score, so that an aging population
    (evolution) that cannot hold them all keeps the best, as its youngest."""
    return sorted(rows, key=lambda r: (r.get("score") if r.get("score") is not None else float("-inf"), r["arch_hash"]))


def _take(archs: list[Arch], seen: dict[str, dict], room: int) -> tuple[list[Arch], int, int]:
    """(new architectures within `room`, in order; proposals told; duplicates among them).

    Proposals are taken in order: a repeat of an architecture already in the search (or earlier
    in the batch) is a duplicate; the first new one past the budget ends the batch.
    """
    new, batch, duplicates = [], set(), 0
    for told, arch in enumerate(archs):
        h = arch_hash(arch)
        if h in seen or h in batch:
            duplicates += 1
        elif len(new) < room:
            new.append(arch)
            batch.add(h)
        else:
            return new, told, duplicates
    return new, len(archs), duplicates


def evaluate_slice(
    ctx: RunContext, archs: list[Arch], genome_of: dict[str, Genome], devices: dict[str, DeviceBackend],
    latency_models, data: Dataset, stored: dict[str, dict], seed_from: dict[str, str],
) -> tuple[list[dict], dict[str, list[dict]], list[dict]]:
    """Time and proxy-train `archs`: (their candidate rows, {candidate id: its measurement rows},
    failed-measurement rows)."""
    spec = ctx.spec
    # Latency first, serially, while no training task runs: timings must not share cores.
    measured = time_candidates(archs, devices, latency_models, spec, data.input_shape)
    trained = train_in_parallel(
        [format_arch(a) for a in archs], spec.dataset, spec.train.config,
        spec.search.proxy.epochs, spec.search.proxy.subset, spec.execution.workers,
        device=spec.execution.device, amp=spec.execution.amp,
    )
    rows, own, failed = [], {}, []
    for arch, result in zip(archs, trained):
        h = arch_hash(arch)
        ms, failures = measured[h]
        row = retried(candidate_row(ctx, arch, genome_of[h], result, ms, failures), stored.get(h))
        if h in seed_from:
            row["extra"]["seeded_from"] = seed_from[h]
        rows.append(row)
        own[row["candidate_id"]] = measurement_rows(row["candidate_id"], ctx.run_id, ms)
        failed += device_failure_rows(row["candidate_id"], ctx.run_id, failures)
    return rows, own, failed


@flow(name="search", persist_result=False, validate_parameters=False)
def search_stage(ctx: RunContext, reference: dict[str, float] | None = None) -> dict[str, Any]:
    """Evaluate `search.budget` distinct architectures; returns counts. Re-running replays the registry's results.

    `reference`: {device: ms} of the space's cheapest architecture, as the profile stage measured it
    in this run (spares the latency-goal check a measurement of its own)."""
    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    data = load_dataset(spec.dataset)
    space = space_for_data(spec, data)
    strategy = get_plugins().create("search", spec.search.strategy, spec.search.options, space, spec.execution.seed)
    pareto = spec.pareto
    strategy.pareto_labels = tuple(o.label for o in pareto)
    devices = make_devices(spec.devices)
    latency_models = None if spec.search.latency == "measured" else load_latency_models(registry, spec, devices, data)
    notes = latency_goal_warnings(spec, space, devices, latency_models, data, reference)
    for note in notes:
        _warn(note)
    if isinstance(strategy, SupernetStrategy):  # one-shot: the strategy owns the loop, the flow records
        from .supernet_search import supernet_search

        return supernet_search(ctx, strategy, space, data, devices, latency_models, notes)
    stored = {row["arch_hash"]: row for row in registry.get_candidates(ctx.run_id, stage=STAGE)}
    # Measurement rows per candidate id: what each told result's latencies and energy come from.
    measured_rows: dict[str, list[dict]] = {}
    for m in registry.get_measurements([r["candidate_id"] for r in stored.values() if r["status"] == "ok"]):
        measured_rows.setdefault(m["candidate_id"], []).append(m)
    step = 0
    warm, seeds, warm_note = _warm_start(ctx, registry, space, devices, stored, measured_rows)
    notes += [warm_note] if warm_note else []
    seed_from = {arch_hash(space.to_arch(g)): run for g, run in seeds}
    seen: dict[str, dict] = {r["arch_hash"]: r for r in warm}  # arch hash -> row of every architecture reached
    # A strategy that cannot be replayed saves its state after every batch; a resumed run restores
    # the last one (which already holds the warm start and every recorded result) instead.
    saves_state = type(strategy).state_dict is not SearchStrategy.state_dict
    restored = registry.latest_search_state(ctx.run_id) if saves_state else None
    pending: list[Genome] = []  # proposals of a batch the budget cut short, evaluated first
    seed_queue = [g for g, _ in seeds]  # earlier architectures evaluated again, before any ask
    if restored is not None:
        strategy.load_state_dict(restored["state"])
        step = restored["step"]
        pending = [tuple(g) for g in restored["pending"] or []]
        seen.update(stored)
        seed_queue = []  # already told before the state was saved
    elif warm:
        strategy.warm_start([
            candidate_result(tuple(r["extra"]["genome"]), r, measured_rows.get(r["candidate_id"], ()), spec.search.latency, pareto)
            for r in warm
        ])
    budget = spec.search.budget
    counts = {"proposed": 0, "duplicates": 0, "evaluated": 0, "reused": 0, "retried": 0}
    stalled, stopped, chance_note = 0, None, None
    rep.stage_start(STAGE, budget, f"{spec.search.strategy} over {space.size():,} architectures")
    with BufferedWriter(registry, replace=True) as writer:
        while len(seen) - len(warm) < budget:
            if len(seen) >= space.size() or stalled >= STALL_PROPOSALS:
                stopped = (
                    f"stopped at {len(seen) - len(warm)} of {budget} architectures: "
                    + ("the space has no more" if len(seen) >= space.size()
                       else f"the last {stalled} proposals all repeated earlier ones")
                )
                break
            seeding = bool(seed_queue) and not pending
            if seeding:
                genomes, seed_queue = seed_queue[: spec.search.batch_size], seed_queue[spec.search.batch_size:]
            else:
                genomes, pending = pending or strategy.ask(spec.search.batch_size), []
            archs = [space.to_arch(g) for g in genomes]
            new, told, duplicates = _take(archs, seen, budget - (len(seen) - len(warm)))
            reused = [a for a in new if stored.get(arch_hash(a), {}).get("status") == "ok"]
            todo = [a for a in new if stored.get(arch_hash(a), {}).get("status") != "ok"]
            # The first batch that evaluates anything goes in slices, each written as soon as it is
            # done: one candidate alone (a new run shows a result after one timing and one proxy
            # training), then worker-sized ones. Later batches are one slice: one task per worker.
            first = counts["evaluated"] == 0
            width = max(1, spec.execution.workers)
            slices = [todo[:1]] + [todo[i:i + width] for i in range(1, len(todo), width)] if first else [todo]
            genome_of = {arch_hash(a): g for a, g in zip(archs, genomes)}
            for part in (p for p in slices if p):
                rows, own, failed = evaluate_slice(ctx, part, genome_of, devices, latency_models, data, stored, seed_from)
                for row in rows:
                    seen[row["arch_hash"]] = row
                measured_rows.update(own)
                # a candidate and its measurements land in one transaction
                writer.add(rows, [m for ms in own.values() for m in ms] + failed)
                if first:
                    writer.flush()
            for arch in reused:
                seen[arch_hash(arch)] = stored[arch_hash(arch)]
            # A full batch is told whole; a batch the budget cut short, up to the cut (no ask follows).
            results = [
                candidate_result(g, seen[arch_hash(a)], measured_rows.get(seen[arch_hash(a)]["candidate_id"], ()),
                                 spec.search.latency, pareto)
                for g, a in zip(genomes[:told], archs[:told])
            ]
            # Seeds were never asked for: they reach the strategy as a warm start, not as answers.
            (strategy.warm_start if seeding else strategy.tell)(results)
            step += 1
            log = [
                {"run_id": ctx.run_id, "strategy": spec.search.strategy, "step": step, "metric": metric, "value": float(value)}
                for metric, value in strategy.step_log().items()
            ]
            state = [{
                "run_id": ctx.run_id, "strategy": spec.search.strategy, "step": step,
                "state": strategy.state_dict(), "pending": [list(g) for g in genomes[told:]],
            }] if saves_state else []
            writer.add([], [], log, state)  # a replayed step's log is already there and is kept
            stalled = 0 if new else stalled + len(genomes)
            counts["proposed"] += told
            counts["duplicates"] += duplicates
            counts["evaluated"] += len(todo)
            counts["reused"] += len(reused)
            counts["retried"] += sum(1 for a in todo if arch_hash(a) in stored)
            if chance_note is None:
                chance_note = chance_level_warning(list(seen.values()), spec, data)
                if chance_note:
                    _warn(chance_note)
            best = max((r["score"] for r in seen.values() if r.get("score") is not None), default=None)
            rep.advance(STAGE, len(new), f"best score {best:.4f}" if best is not None else "no successful candidate yet")
    final_chance = chance_level_warning(list(seen.values()), spec, data)
    notes += [n for n in (final_chance, stopped) if n]
    failed = sum(1 for r in seen.values() if r["status"] != "ok")
    summary = {
        **counts, "budget": budget, "distinct": len(seen) - len(warm), "warm_start": len(warm), "failed": failed,
        "stopped": stopped, "warnings": notes,
    }
    rep.stage_end(
        STAGE,
        f"{counts['evaluated']} evaluated, {counts['reused']} reused from the registry, {failed} failed, "
        f"{counts['duplicates']} repeated proposals skipped" + (f"; {stopped}" if stopped else ""),
    )
    return summary
