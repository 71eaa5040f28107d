"""Search stage for supernet (one-shot) strategies: hand the strategy its context, then measure and
record what it derives, as `search` candidates the train stage picks up like any other.

The strategy trains and checkpoints; this module splits the data, logs its epochs to the
registry's `search_log`, measures every derived architecture on every device and scores it with
its accuracy under the supernet's weights (`accuracy_source = 'supernet'`). A re-run resumes the
strategy from its last finished epoch and reuses derived candidates already recorded.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import SpecError
from ..plugin_api import DeviceBackend, SearchSpace, SupernetContext, SupernetStrategy
from ..progress import reporter
from ..space import arch_hash, format_arch
from .context import RunContext
from .evaluate import describe_error, threads_per_task
from .latency import LatencyModel, time_candidates
from .records import BufferedWriter, device_failure_rows, measurement_rows, retried

STAGE = "search"


def split_training(labels: np.ndarray, arch_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight positions, architecture positions) of the training split: per class, a seeded
    `arch_share` of its images for the architecture, the rest for the weights. SpecError when
    either side would be empty."""
    rng = np.random.default_rng([3, seed % 2**63])
    weight, arch = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = int(round(len(idx) * arch_share))
        arch.append(idx[:cut])
        weight.append(idx[cut:])
    weight_pos = np.sort(np.concatenate(weight)) if weight else np.zeros(0, dtype=np.int64)
    arch_pos = np.sort(np.concatenate(arch)) if arch else np.zeros(0, dtype=np.int64)
    for side, positions in (("weights", weight_pos), ("architecture parameters", arch_pos)):
        if len(positions) < 2:
            raise SpecError(
                f"search.options.arch_split {arch_share:g} leaves {len(positions)} of the {len(labels)} training "
                f"images for the {side} (at least 2 are needed); move arch_split toward 0.5 or use more data"
            )
    return weight_pos, arch_pos


def latency_tables(registry, supernet, devices: dict[str, DeviceBackend], latency_models: dict[str, LatencyModel] | None,
                   data: Dataset, needed: str | None) -> dict:
    """Each device's per-layer, per-candidate latency table (`nasflow.supernet_latency`): from the
    search's latency model when the search predicts latency, else from the LUT the profile stage
    stored, else none. SpecError, before any training, when the strategy's loss uses a device
    that has neither."""
    from ..lut import device_batch_size, device_fingerprint_hash, stored_lut
    from ..predictors import LutMissError, LutSumPredictor
    from ..supernet_latency import latency_table

    tables, partial = {}, {}
    for name, device in devices.items():
        batch = device_batch_size(device)
        if latency_models and name in latency_models:
            predictor, source = latency_models[name].predictor, latency_models[name].source
        else:
            stored = stored_lut(registry, name, device_fingerprint_hash(device))
            if not stored:
                continue
            predictor, source = LutSumPredictor(stored, data.in_channels, data.num_classes, data.image_size, batch), "lut"
        try:
            tables[name] = latency_table(name, source, predictor, supernet, data.in_channels, data.image_size, batch)
        except LutMissError as miss:  # a LUT profiled for another space or dataset shares the fingerprint
            partial[name] = str(miss)
    if needed is not None and needed in partial:
        raise SpecError(
            f"the latency term of the search uses {needed}, whose stored LUT lacks this space's operators "
            f"({partial[needed]}); set profile.enabled and profile.lut: true so that the profile stage adds them"
        )
    if needed is not None and needed not in tables:
        raise SpecError(
            f"the latency term of the search uses {needed}, which has no latency LUT with its current fingerprint; "
            "set profile.enabled and profile.lut: true (the profile stage builds it)"
        )
    return tables


def supernet_accuracy(model, data: Dataset, weight_positions: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(validation accuracy, loss) of a derived network holding the supernet's weights, after its
    BatchNorm statistics are re-estimated on the weight split (see recalibrate_batchnorm)."""
    import torch

    from ..supernet import recalibrate_batchnorm
    from ..train import evaluate

    cpu = torch.device("cpu")
    model.to(cpu)
    recalibrate_batchnorm(model, data, weight_positions, cpu, batch_size=batch_size)
    return evaluate(model, data)


def supernet_search(
    ctx: RunContext, strategy: SupernetStrategy, space: SearchSpace, data: Dataset,
    devices: dict[str, DeviceBackend], latency_models: dict[str, LatencyModel] | None, notes: list[str],
) -> dict[str, Any]:
    """Run `strategy` over `space.supernet()`, then measure and record each derived architecture."""
    from .search import candidate_row

    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    supernet = space.supernet()
    if supernet is None:  # validation refuses this; a space changed under a stored spec lands here
        raise SpecError(f"search.strategy {spec.search.strategy!r} trains a supernet, and space {spec.space.name!r} has none")
    weight_pos, arch_pos = split_training(data.train_y, strategy.options.arch_split, spec.execution.seed)
    name = spec.search.strategy

    def log(step: int, metrics: dict[str, float]) -> None:
        registry.add_search_log([
            {"run_id": ctx.run_id, "strategy": name, "step": int(step), "metric": metric, "value": float(value)}
            for metric, value in metrics.items()
        ])

    needed = type(strategy).latency_device(strategy.options, spec.objective_device)
    tables = latency_tables(registry, supernet, devices, latency_models, data, needed)
    epochs = getattr(strategy.options, "epochs", None)
    rep.stage_start(STAGE, epochs, f"{name}: supernet of {len(supernet.layers)} searchable layers, "
                                   f"{len(weight_pos):,} images for weights / {len(arch_pos):,} for the architecture")
    sctx = SupernetContext(
        supernet=supernet, dataset=data, weight_split=weight_pos, arch_split=arch_pos,
        train_config=spec.train.config, device=spec.execution.device, amp=spec.execution.amp,
        checkpoint_dir=ctx.work_dir / "supernet" / name, log=log,
        progress=lambda done, total, note: rep.advance(STAGE, 1, f"epoch {done}/{total}: {note}"),
        latency=tables, objective_device=spec.objective_device,
    )
    import torch

    # The flow process trains here: its threads follow the rule of the training tasks.
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_task(spec.execution.workers))
    start = time.perf_counter()
    try:
        derived = strategy.run(sctx)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    stored = {row["arch_hash"]: row for row in registry.get_candidates(ctx.run_id, stage=STAGE)}
    rows, mrows, reused = [], [], 0
    for d in derived:
        genome = space.validate_genome(d.genome)
        arch = space.to_arch(genome)
        h = arch_hash(arch)
        if stored.get(h, {}).get("status") == "ok" or any(r["arch_hash"] == h for r in rows):
            reused += h in stored
            continue
        try:
            accuracy, val_loss = supernet_accuracy(d.model, data, weight_pos, spec.train.config.batch_size)
            trained = {"accuracy": accuracy, "val_loss": val_loss, "train_epochs": d.extra.get("supernet_epochs"),
                       "train_seconds": seconds, "error": None}
        except Exception as exc:  # the derived net could not be evaluated: recorded as failed
            trained = {"error": describe_error(exc), "train_seconds": seconds}
        measured, failures = time_candidates([arch], devices, latency_models, spec, data.input_shape)[h]
        extra = {"strategy": name, "arch_split": strategy.options.arch_split, **d.extra}
        row = retried(candidate_row(ctx, arch, genome, trained, measured, failures, "supernet", extra), stored.get(h))
        rows.append(row)
        mrows += measurement_rows(row["candidate_id"], ctx.run_id, measured) + device_failure_rows(
            row["candidate_id"], ctx.run_id, failures
        )
    with BufferedWriter(registry, replace=True) as writer:
        writer.add(rows, mrows)
    failed = sum(1 for r in rows if r["status"] != "ok")
    best = max((r for r in rows if r.get("score") is not None), key=lambda r: r["score"], default=None)
    rep.stage_end(
        STAGE,
        f"{len(derived)} derived ({len(rows)} recorded, {reused} already recorded, {failed} failed)"
        + (f"; {format_arch(space.to_arch(best['extra']['genome']))} scores {best['score']:.4f}" if best else ""),
    )
    return {
        "proposed": len(derived), "duplicates": 0, "evaluated": len(rows), "reused": reused, "retried": 0,
        "budget": spec.search.budget, "distinct": len(derived), "warm_start": 0, "failed": failed,
        "stopped": None, "warnings": notes, "supernet_seconds": seconds,
    }
