"""Deploy stage: export the best models, verify them against PyTorch, score and time the files themselves.

Artifacts go to `<deploy.out_dir>/<run id>/`, so runs never overwrite each other's files. An
artifact's id includes its export settings (format, opset, tolerance, out_dir): changed settings
export new files beside the old ones. Each verified float32 artifact is evaluated on the test
split by its own runtime (`artifacts.accuracy`); a device failing to time it records a failed
measurement and leaves the artifact recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow

from ..data import Dataset, load_dataset
from ..errors import DeviceError, ExportError
from ..export import VerifyResult, classify_accuracy, export_onnx, onnx_accuracy, sha256_file, verify_onnx
from ..progress import reporter
from ..spec import Spec
from .context import RunContext
from .evaluate import describe_error, make_devices, measure_artifact_everywhere
from .morph import current_morph_rows
from .records import failed_measurement_row, measurement_rows, stable_id, stage_key
from .selection import best_candidates, over_cap
from .train import current_train_rows, load_trained

STAGE = "deploy"


def deploy_key(spec: Spec, fmt: str) -> str:
    """Settings key of one format's artifacts: what goes into the file and where it is written."""
    settings = {"format": fmt, "atol": spec.deploy.atol, "out_dir": str(spec.deploy.out_dir)}
    if fmt == "onnx":
        settings["opset"] = spec.deploy.opset
    return stage_key(settings)


def artifact_id(ctx: RunContext, candidate: dict, fmt: str) -> str:
    return stable_id("artifact", candidate["candidate_id"], fmt, deploy_key(ctx.spec, fmt))


def artifact_path(ctx: RunContext, candidate: dict, fmt: str) -> Path:
    name = f"{candidate['stage']}-{candidate['arch_hash'][:12]}-{artifact_id(ctx, candidate, fmt)[:8]}.{fmt}"
    return ctx.spec.deploy.out_dir / ctx.run_id / name


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


def tflite_accuracy(path: str | Path, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Accuracy of the .tflite file on the LiteRT interpreter, in batches where the model can be resized.

    The converter fixes the batch axis at 1; resizing it works for most models, and where the
    outputs do not follow, images go through one at a time.
    """
    from ..plugins.devices.litert import _runtime

    try:
        interp = _runtime().interpreter(model_path=str(path), num_threads=1)
        (detail,) = interp.get_input_details()
        output = interp.get_output_details()[0]["index"]
        shape = [int(n) for n in detail["shape"]]
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(f"litert: cannot load {path}: {exc}") from exc
    state: dict[str, Any] = {"allocated": None, "batched": True}

    def allocate(n: int) -> None:
        if state["allocated"] != n:
            state["allocated"] = None  # unknown until the resize has succeeded
            interp.resize_tensor_input(detail["index"], [n, *shape[1:]])
            interp.allocate_tensors()
            state["allocated"] = n

    def invoke(x: np.ndarray) -> np.ndarray:
        allocate(len(x))
        interp.set_tensor(detail["index"], x.astype(detail["dtype"]))
        interp.invoke()
        return interp.get_tensor(output)

    def run(x: np.ndarray) -> np.ndarray:
        if state["batched"] and len(x) > 1:
            try:
                out = invoke(x)
                if len(out) == len(x):
                    return out
            except Exception:
                pass
            state["batched"] = False  # the graph keeps batch 1 inside: single images from now on
        return np.concatenate([invoke(image[None]).reshape(1, -1) for image in x])

    try:
        return classify_accuracy(run, images, labels, batch_size)
    except Exception as exc:
        raise DeviceError(f"litert: evaluating {path} on the test split failed: {describe_error(exc)}") from exc


def artifact_accuracy(fmt: str, path: Path, data: Dataset) -> float:
    """Accuracy of a float32 artifact on the test split, run by the artifact's own runtime."""
    images, labels = data.split("test")
    if fmt == "onnx":
        return onnx_accuracy(path, images, labels)
    if fmt == "tflite":
        return tflite_accuracy(path, images, labels)
    raise ExportError(f"no runtime evaluates {fmt!r} artifacts")


def _deploy(ctx: RunContext, candidate: dict, fmt: str, devices) -> tuple[dict, list[dict]]:
    """Export, verify, evaluate and time one artifact; its row and its measurement rows."""
    spec = ctx.spec
    data = load_dataset(spec.dataset)
    model = load_trained(ctx, candidate["arch"], candidate["extra"]["checkpoint"])
    path = artifact_path(ctx, candidate, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    check = _export(fmt, model, data.input_shape, path, spec)
    artifact = {
        "artifact_id": artifact_id(ctx, candidate, fmt),
        "candidate_id": candidate["candidate_id"], "run_id": ctx.run_id, "format": fmt,
        "path": str(path.resolve()), "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
        "max_abs_err": check.max_abs_err, "tolerance": check.atol, "verified": check.passed,
    }
    if not check.passed:  # recorded as unverified; not timed, since it is not the same model
        return artifact, []
    artifact["accuracy"] = artifact_accuracy(fmt, path, data)
    measured, failures = measure_artifact_everywhere(devices, str(path), fmt, data.input_shape)
    mrows = measurement_rows(candidate["candidate_id"], ctx.run_id, measured, artifact["artifact_id"])
    # the artifact stays recorded; a device that failed on it has a failed row, not a number
    mrows += [
        failed_measurement_row(candidate["candidate_id"], ctx.run_id, name, fmt, reason, artifact["artifact_id"])
        for name, reason in failures.items()
    ]
    return artifact, mrows


def _intact(previous: dict | None) -> bool:
    """Whether a recorded artifact can be reused: verified, evaluated, and its file unchanged."""
    return bool(
        previous and previous["verified"] and previous.get("accuracy") is not None
        and Path(previous["path"]).exists() and sha256_file(previous["path"]) == previous["sha256"]
    )


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
    devices = make_devices(spec.devices)
    deployed, failures, reused = [], [], 0
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
            failures.append(f"{candidate['arch_hash']}: {describe_error(exc)}")
            rep.advance(STAGE, 1, f"failed: {describe_error(exc)}")
            continue
        registry.add_artifacts([artifact], mrows, replace=True)
        if not artifact["verified"]:
            reason = f"output differs from PyTorch by {artifact['max_abs_err']:.3g} (> atol {artifact['tolerance']:g})"
            failures.append(f"{candidate['arch_hash']}: {reason}")
            rep.advance(STAGE, 1, f"failed verification: {reason}")
            continue
        deployed.append(artifact)
        timing = [f"{m['device']} failed: {m['extra']['error']}" for m in mrows if m.get("median_ms") is None and m["metric"] == "latency"]
        rep.advance(STAGE, 1, f"{Path(artifact['path']).name} max |err| {artifact['max_abs_err']:.2e}, "
                              f"test acc {artifact['accuracy']:.3f}" + "".join(f"; {t}" for t in timing))
    rep.stage_end(STAGE, f"{len(deployed)} artifacts ({reused} reused), {len(failures)} failed{cap_note}")
    return {
        "artifacts": [a["path"] for a in deployed], "artifact_ids": [a["artifact_id"] for a in deployed],
        "failures": failures, "reused": reused, "over_cap": over,
    }
