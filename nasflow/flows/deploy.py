"""Deploy stage: export the best models, verify them against PyTorch, time the artifacts themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from ..data import load_dataset
from ..export import export_onnx, sha256_file, verify_onnx
from ..progress import reporter
from .context import RunContext
from .evaluate import describe_error, make_devices
from .records import measurement_rows, stable_id
from .train import best_candidates, load_trained

STAGE = "deploy"


def artifact_path(ctx: RunContext, candidate: dict, fmt: str) -> Path:
    return ctx.spec.deploy.out_dir / ctx.spec.name / f"{candidate['arch_hash']}-{candidate['stage']}.{fmt}"


def _deploy_onnx(ctx: RunContext, candidate: dict, devices) -> tuple[dict, list[dict]]:
    spec = ctx.spec
    data = load_dataset(spec.dataset)
    model = load_trained(ctx, candidate["arch"], candidate["extra"]["checkpoint"])
    path = artifact_path(ctx, candidate, "onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, data.input_shape, path, opset=spec.deploy.opset)
    check = verify_onnx(model, path, data.input_shape, atol=spec.deploy.atol)
    artifact = {
        "artifact_id": stable_id("artifact", candidate["candidate_id"], "onnx"),
        "candidate_id": candidate["candidate_id"], "run_id": ctx.run_id, "format": "onnx",
        "path": str(path.resolve()), "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
        "max_abs_err": check.max_abs_err, "tolerance": check.atol, "verified": check.passed,
    }
    if not check.passed:  # recorded as unverified; not timed, since it is not the same model
        return artifact, []
    measured = [
        device.measure_artifact(str(path), "onnx", data.input_shape)
        for device in devices.values()
        if "onnx" in device.artifact_formats
    ]
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
            artifact, mrows = _deploy_onnx(ctx, candidate, devices)
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
