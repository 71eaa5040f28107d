"""Deploy stage: export the best models, verify them against PyTorch, time the artifacts themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from ..data import load_dataset
from ..errors import ExportError
from ..export import VerifyResult, export_onnx, sha256_file, verify_onnx
from ..progress import reporter
from .context import RunContext
from .evaluate import describe_error, make_devices, measure_artifact_everywhere
from .records import measurement_rows, stable_id
from .train import best_candidates, load_trained

STAGE = "deploy"


def artifact_path(ctx: RunContext, candidate: dict, fmt: str) -> Path:
    return ctx.spec.deploy.out_dir / ctx.spec.name / f"{candidate['arch_hash']}-{candidate['stage']}.{fmt}"


def _export(fmt: str, model, input_shape: tuple[int, ...], path: Path, spec) -> VerifyResult:
    """Write `model` as `fmt` at `path` and compare the artifact's outputs with PyTorch's."""
    if fmt == "onnx":
        export_onnx(model, input_shape, path, opset=spec.deploy.opset)
        return verify_onnx(model, path, input_shape, atol=spec.deploy.atol)
    if fmt == "tflite":
        from ..plugins.devices.litert import convert_to_tflite, verify_tflite

        convert_to_tflite(model, input_shape, path)
        return verify_tflite(model, path, input_shape, atol=spec.deploy.atol)
    raise ExportError(f"unknown deploy format {fmt!r}")


def _deploy(ctx: RunContext, candidate: dict, fmt: str, devices) -> tuple[dict, list[dict]]:
    spec = ctx.spec
    data = load_dataset(spec.dataset)
    model = load_trained(ctx, candidate["arch"], candidate["extra"]["checkpoint"])
    path = artifact_path(ctx, candidate, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    check = _export(fmt, model, data.input_shape, path, spec)
    artifact = {
        "artifact_id": stable_id("artifact", candidate["candidate_id"], fmt),
        "candidate_id": candidate["candidate_id"], "run_id": ctx.run_id, "format": fmt,
        "path": str(path.resolve()), "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
        "max_abs_err": check.max_abs_err, "tolerance": check.atol, "verified": check.passed,
    }
    if not check.passed:  # recorded as unverified; not timed, since it is not the same model
        return artifact, []
    measured = measure_artifact_everywhere(devices, str(path), fmt, data.input_shape)
    return artifact, measurement_rows(candidate["candidate_id"], ctx.run_id, measured, artifact["artifact_id"])


@flow(name="deploy", persist_result=False, validate_parameters=False)
def deploy_stage(ctx: RunContext) -> dict[str, Any]:
    spec = ctx.spec
    registry = ctx.registry()
    rep = reporter()
    pool = registry.get_candidates(ctx.run_id, stage="train") + registry.get_candidates(ctx.run_id, stage="morph")
    chosen = best_candidates([c for c in pool if (c.get("extra") or {}).get("checkpoint")], spec.deploy.top_k)
    existing = {(a["candidate_id"], a["format"]): a for a in registry.get_artifacts(ctx.run_id)}
    jobs = [(c, fmt) for c in chosen for fmt in spec.deploy.formats]
    rep.stage_start(STAGE, len(jobs), f"exporting {len(chosen)} models as {', '.join(spec.deploy.formats)}")
    devices = make_devices(spec.devices)
    deployed, failures = [], []
    for candidate, fmt in jobs:
        previous = existing.get((candidate["candidate_id"], fmt))
        if previous and previous["verified"] and Path(previous["path"]).exists() and sha256_file(previous["path"]) == previous["sha256"]:
            deployed.append(previous)
            rep.advance(STAGE, 1, f"{Path(previous['path']).name} reused")
            continue
        try:
            artifact, mrows = _deploy(ctx, candidate, fmt, devices)
        except Exception as exc:
            failures.append(f"{candidate['arch_hash']}: {describe_error(exc)}")
            rep.advance(STAGE, 1, f"failed: {describe_error(exc)}")
            continue
        registry.add_artifacts([artifact])
        if not artifact["verified"]:
            reason = f"output differs from PyTorch by {artifact['max_abs_err']:.3g} (> atol {artifact['tolerance']:g})"
            failures.append(f"{candidate['arch_hash']}: {reason}")
            rep.advance(STAGE, 1, f"failed verification: {reason}")
            continue
        registry.add_measurements(mrows)
        deployed.append(artifact)
        rep.advance(STAGE, 1, f"{Path(artifact['path']).name} max |err| {artifact['max_abs_err']:.2e}")
    rep.stage_end(STAGE, f"{len(deployed)} artifacts, {len(failures)} failed")
    return {"artifacts": [a["path"] for a in deployed], "failures": failures}
