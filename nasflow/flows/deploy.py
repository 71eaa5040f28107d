"""Deploy stage: export the best models with each format's exporter, verify the files, score and time them.

Artifacts go to `<deploy.out_dir>/<run id>/`, so runs never overwrite each other's files. An
artifact's id includes its export settings (format, the exporter's settings, tolerance,
out_dir): changed settings export new files beside the old ones. Formats are exporter plugins
(nasflow.export.formats); nothing here names one. Every artifact is verified (nasflow.export.verify)
and evaluated on the test split by its own runtime; one that passes is timed on every spec device
that runs its format, and a device failing to time it records a failed measurement. One that
fails is recorded with its numbers and not timed. The folder then gets `manifest.json` and
`MODEL_CARD.md` (nasflow.export.folder), rebuilt from the registry after every deploy.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow

from ..data import Dataset, load_dataset
from ..errors import ExportError
from ..export import sha256_file
from ..plugin_api import CheckInputs, Exporter
from ..plugins import get_plugins
from ..progress import reporter
from ..spec import Spec
from .context import RunContext
from .evaluate import describe_error, make_devices, measure_artifact_everywhere
from .morph import current_morph_rows
from .records import failed_measurement_row, measurement_rows, stable_id, stage_key
from .selection import best_candidates, over_cap, with_latency
from .train import current_train_rows, load_trained

STAGE = "deploy"


def exporter_for(spec: Spec, fmt: str) -> Exporter:
    """The exporter of `fmt` with its options from `deploy.options`."""
    return get_plugins().create("exporter", fmt, spec.deploy.options.get(fmt, {}), spec.deploy.opset)


def deploy_key(spec: Spec, fmt: str) -> str:
    """Settings key of one format's artifacts: what goes into the file, how it is judged, where it is written."""
    exporter = exporter_for(spec, fmt)
    settings = {"format": fmt, "atol": spec.deploy.atol, "out_dir": str(spec.deploy.out_dir), **exporter.settings()}
    if exporter.quantized:
        settings["max_accuracy_drop"] = spec.deploy.max_accuracy_drop
    return stage_key(settings)


def artifact_id(ctx: RunContext, candidate: dict, fmt: str) -> str:
    return stable_id("artifact", candidate["candidate_id"], fmt, deploy_key(ctx.spec, fmt))


def artifact_path(ctx: RunContext, candidate: dict, fmt: str) -> Path:
    suffix = exporter_for(ctx.spec, fmt).suffix
    name = f"{candidate['stage']}-{candidate['arch_hash'][:12]}-{artifact_id(ctx, candidate, fmt)[:8]}.{suffix}"
    return ctx.spec.deploy.out_dir / ctx.run_id / name


def check_calibration_count(data: Dataset, count: int, fmt: str) -> None:
    available = data.size("train")
    if count > available:
        raise ExportError(
            f"deploy.options.{fmt}.calibration_images is {count} but the training split has only {available} images"
        )


def calibration_images(data: Dataset, count: int, fmt: str, seed: int) -> np.ndarray:
    """`count` training images drawn without replacement (seeded): the int8 ranges are set on real data."""
    check_calibration_count(data, count, fmt)
    available = data.size("train")
    rows = np.sort(np.random.default_rng(seed).choice(available, size=count, replace=False))
    return data.batch("train", rows)


def check_deploy_settings(spec: Spec, data: Dataset, run_id: str) -> list[str]:
    """Refuse, before any work, deploy settings that cannot succeed: an output folder that cannot
    be written, more calibration images than the training split. Returns the notes to show (a
    format that will produce something other than what its name suggests, e.g. edgetpu without
    the compiler)."""
    folder = spec.deploy.out_dir / run_id
    probe = folder / f".nasflow-write-check-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ExportError(
            f"deploy.out_dir: cannot write to {folder} ({exc.strerror or exc}); choose a writable deploy.out_dir"
        ) from None
    notes = []
    for fmt in spec.deploy.formats:
        exporter = exporter_for(spec, fmt)
        if exporter.quantized:
            check_calibration_count(data, exporter.calibration_images, fmt)
        note = exporter.note()
        if note:
            notes.append(f"{fmt}: {note}")
    return notes


def check_inputs(data: Dataset, spec: Spec) -> CheckInputs:
    """Held-out validation images for the output comparison, and the test split for accuracy."""
    held_out = data.batch("val", slice(0, min(spec.deploy.check_inputs, data.size("val"))))
    images, labels = data.split("test")
    return CheckInputs(held_out, images, labels, spec.deploy.atol, spec.deploy.max_accuracy_drop)


def _deploy(ctx: RunContext, candidate: dict, fmt: str, devices) -> tuple[dict, list[dict]]:
    """Export, verify, evaluate and time one artifact; its row and its measurement rows."""
    spec = ctx.spec
    exporter = exporter_for(spec, fmt)
    data = load_dataset(spec.dataset)
    model = load_trained(ctx, candidate["arch"], candidate["extra"]["checkpoint"])
    path = artifact_path(ctx, candidate, fmt)
    calibration = (
        calibration_images(data, exporter.calibration_images, fmt, spec.execution.seed) if exporter.quantized else None
    )
    example = data.batch("val", slice(0, 1))
    exporter.export(model, example, path, calibration)
    check = exporter.verify(model, path, check_inputs(data, spec))
    artifact = {
        "artifact_id": artifact_id(ctx, candidate, fmt),
        "candidate_id": candidate["candidate_id"], "run_id": ctx.run_id, "format": fmt,
        "path": str(path.resolve()), "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
        "max_abs_err": check.max_abs_err, "cosine_diff": check.cosine_diff, "tolerance": check.tolerance,
        "accuracy": check.accuracy, "reference_accuracy": check.reference_accuracy,
        "top1_agreement": check.top1_agreement,
        "max_accuracy_drop": check.max_accuracy_drop if exporter.quantized else None,
        "verified": check.passed, "failure": check.failure,
        "options": {**exporter.settings(), "calibration_images": exporter.calibration_images} if exporter.quantized
        else exporter.settings(),
    }
    if not check.passed:  # recorded with its numbers; not timed, since it is not the model that was chosen
        return artifact, []
    measured, failures = measure_artifact_everywhere(devices, str(path), fmt, data.input_shape)
    mrows = measurement_rows(candidate["candidate_id"], ctx.run_id, measured, artifact["artifact_id"])
    # the artifact stays recorded; a device that failed on it has a failed row, not a number
    mrows += [
        failed_measurement_row(candidate["candidate_id"], ctx.run_id, name, fmt, reason, artifact["artifact_id"])
        for name, reason in failures.items()
    ]
    return artifact, mrows


def _summary(artifact: dict) -> str:
    """One line of what verification measured: output difference, and accuracy next to PyTorch's."""
    line = (f"{Path(artifact['path']).name} max |err| {artifact['max_abs_err']:.2e}, "
            f"test acc {artifact['accuracy']:.3f}")
    if artifact["max_accuracy_drop"] is not None:
        line += f" (float32 {artifact['reference_accuracy']:.3f}, top-1 agreement {artifact['top1_agreement']:.3f})"
    return line


def _intact(previous: dict | None) -> bool:
    """Whether a recorded artifact can be reused: verified, evaluated, and its file unchanged."""
    return bool(
        previous and previous["verified"] and previous.get("accuracy") is not None
        and Path(previous["path"]).exists() and sha256_file(previous["path"]) == previous["sha256"]
    )


def write_deployment_folder(ctx: RunContext, data: Dataset, artifact_ids: list[str]) -> Path:
    """manifest.json and MODEL_CARD.md of the current deploy settings' artifacts, from the registry."""
    from ..export.folder import build_manifest, model_card, write_folder

    spec = ctx.spec
    registry = ctx.registry()
    wanted = set(artifact_ids)
    artifacts = [a for a in registry.get_artifacts(ctx.run_id) if a["artifact_id"] in wanted]
    candidates = registry.get_candidates(ctx.run_id)
    deployed = [c for c in candidates if c["candidate_id"] in {a["candidate_id"] for a in artifacts}]
    devices = [d.name for d in spec.devices]
    live = {c["candidate_id"]: c["latency"] for c in with_latency(registry, deployed, spec.objective_device, devices)}
    described = {a["artifact_id"]: exporter_for(spec, a["format"]).describe(Path(a["path"])) for a in artifacts}
    counts = {stage: sum(1 for c in candidates if c["stage"] == stage) for stage in ("search", "train", "morph")}
    dataset = {"name": data.name, "class_names": data.class_names, "mean": data.mean, "std": data.std,
               "input_shape": list(data.input_shape[1:]), "test_images": data.size("test")}
    manifest = build_manifest(
        spec, registry.get_run(ctx.run_id), candidates, artifacts,
        registry.get_measurements([c["candidate_id"] for c in deployed]), live, dataset, described,
    )
    folder = spec.deploy.out_dir / ctx.run_id
    write_folder(folder, manifest, model_card(manifest, spec, counts))
    return folder


def current_pool(ctx: RunContext) -> tuple[list[dict], int]:
    """(Models deploy chooses from: the current settings' trained and compressed models whose
    weights are on disk; how many of them break objectives.max_latency_ms)."""
    registry = ctx.registry()
    train_rows = current_train_rows(registry, ctx)
    pool = train_rows + current_morph_rows(registry, ctx, train_rows)
    pool = [c for c in pool if (c.get("extra") or {}).get("checkpoint")]
    return pool, over_cap(pool, ctx.spec.objectives)


@flow(name="deploy", persist_result=False, validate_parameters=False)
def deploy_stage(ctx: RunContext) -> dict[str, Any]:
    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    pool, over = current_pool(ctx)
    chosen = best_candidates(pool, spec.deploy.top_k, spec.objectives)
    existing = {a["artifact_id"]: a for a in registry.get_artifacts(ctx.run_id)}
    jobs = [(c, fmt) for c in chosen for fmt in spec.deploy.formats]
    cap_note = f"; {over} models over objectives.max_latency_ms left out" if over else ""
    rep.stage_start(STAGE, len(jobs), f"exporting {len(chosen)} models as {', '.join(spec.deploy.formats)}{cap_note}")
    data = load_dataset(spec.dataset)
    for note in check_deploy_settings(spec, data, ctx.run_id):  # raises before any export
        rep.message(note)
    devices = make_devices(spec.devices)
    deployed, failures, reused, recorded = [], [], 0, []
    for candidate, fmt in jobs:
        previous = existing.get(artifact_id(ctx, candidate, fmt))
        if _intact(previous):
            deployed.append(previous)
            reused += 1
            rep.advance(STAGE, 1, f"{Path(previous['path']).name} reused")
            continue
        try:
            artifact, mrows = _deploy(ctx, candidate, fmt, devices)
        except Exception as exc:
            failures.append(f"{candidate['arch_hash']} {fmt}: {describe_error(exc)}")
            rep.advance(STAGE, 1, f"failed: {describe_error(exc)}")
            continue
        registry.add_artifacts([artifact], mrows, replace=True)
        recorded.append(artifact["artifact_id"])
        if not artifact["verified"]:
            failures.append(f"{candidate['arch_hash']} {fmt}: {artifact['failure']}")
            rep.advance(STAGE, 1, f"{fmt} failed verification: {artifact['failure']}")
            continue
        deployed.append(artifact)
        timing = [f"{m['device']} failed: {m['extra']['error']}" for m in mrows if m.get("median_ms") is None and m["metric"] == "latency"]
        rep.advance(STAGE, 1, _summary(artifact) + "".join(f"; {t}" for t in timing))
    folder = write_deployment_folder(ctx, data, [a["artifact_id"] for a in deployed] + recorded) if jobs else None
    rep.stage_end(STAGE, f"{len(deployed)} artifacts ({reused} reused), {len(failures)} failed{cap_note}"
                  + (f"; manifest and model card in {folder}" if folder else ""))
    return {
        "artifacts": [a["path"] for a in deployed], "artifact_ids": [a["artifact_id"] for a in deployed],
        "folder": str(folder) if folder else None,
        "failures": failures, "reused": reused, "over_cap": over,
    }
