"""Latency models per device (LUT sum or calibrated predictor) and the drift check that keeps them honest."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import Dataset
from ..errors import DeviceError
from ..lut import device_batch_size, device_fingerprint_hash, load_or_build_lut, stored_lut
from ..plugin_api import DeviceBackend, LatencyStats, Measurement
from ..predictors import CalibratedLutPredictor, DriftMonitor, LutSumPredictor, calibrate
from ..progress import reporter, stage_counter
from ..registry import Registry
from ..space import Arch
from ..spec import Spec, space_for_data


class LatencyDriftWarning(UserWarning):
    """Predicted latencies stopped matching the device's measured ones."""


def space_key(spec: Spec, data: Dataset) -> str:
    """Identity of the operator set a LUT covers: the space and the input geometry."""
    text = json.dumps({"space": spec.space.model_dump(mode="json"), "shape": list(data.input_shape),
                       "classes": data.num_classes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def predictor_file(spec: Spec, device: DeviceBackend, data: Dataset) -> Path:
    """Fitted predictors live beside the checkpoints, keyed by device fingerprint and space."""
    name = f"{device.name}-{device_fingerprint_hash(device)}-{space_key(spec, data)}.json"
    return spec.execution.work_dir / "predictors" / name


def profile_device(registry: Registry, spec: Spec, device: DeviceBackend, data: Dataset, refresh: bool) -> dict[str, Any]:
    """Build or reuse the device's LUT for the space; fit and save the calibrated predictor if asked."""
    rep = reporter()
    space = space_for_data(spec, data)
    geometry = (data.in_channels, data.num_classes, data.image_size)
    passes = spec.profile.passes
    table, built = load_or_build_lut(
        registry, device, space, *geometry, refresh=refresh, passes=passes,
        progress=stage_counter("lut", f"{device.name}: each operator x {passes} pass(es)", rep, f"{device.name}: ready"),
    )
    record: dict[str, Any] = {"lut_entries": len(table), "lut_built": built}
    if spec.profile.calibrate:
        path = predictor_file(spec, device, data)
        if path.exists() and not (built or refresh):
            stored = json.loads(path.read_text())
            record.update(predictor=str(path), predictor_reused=True, predictor_fit=stored.get("fit", {}))
            return record
        predictor, archs, measured = calibrate(
            device, space, table, *geometry, n=spec.profile.calibrate, passes=passes,
            progress=stage_counter(
                "calibrate", f"{device.name}: whole models x {passes} pass(es)", rep, f"{device.name}: {{total}} timings"
            ),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(predictor.to_dict()))
        record.update(predictor=str(path), predictor_reused=False, predictor_fit=predictor.fit_info)
    return record


@dataclass
class LatencyModel:
    """How one device's latency is obtained during the search when it is not measured."""

    device: DeviceBackend
    predictor: LutSumPredictor | CalibratedLutPredictor
    source: str  # 'lut' or 'predicted'
    monitor: DriftMonitor
    warned: bool = field(default=False)

    def measurement(self, arch: Arch) -> Measurement:
        value = float(self.predictor.predict(arch))
        stats = LatencyStats(value, value, value, 0.0, value, runs=0, warmup=0, rel_ci=math.inf)
        return Measurement(
            device=self.device.name,
            runtime=f"{self.source} model of {self.device.name}",
            artifact_format="pytorch",
            source=self.source,
            stats=stats,
            threads=getattr(self.device.options, "threads", 1),
            batch_size=device_batch_size(self.device),
            fingerprint=self.device.fingerprint(),
            extra={"predictor": getattr(self.predictor, "kind", type(self.predictor).__name__)},
        )

    def observe(self, predicted_ms: float, measured_ms: float) -> None:
        """Feed the drift check; warn once each time the error crosses the threshold."""
        drifting = self.monitor.observe(predicted_ms, measured_ms)
        if drifting and not self.warned:
            message = (
                f"{self.source} latency for {self.device.name} is off by {self.monitor.error:.0%} (median over "
                f"{self.monitor.count} measured candidates, bias {self.monitor.bias:+.0%}); "
                "re-profile the device (profile.refresh) or search with measured latency"
            )
            warnings.warn(message, LatencyDriftWarning, stacklevel=2)
            reporter().message(f"warning: {message}")
        self.warned = drifting


def load_latency_models(registry: Registry, spec: Spec, devices: dict[str, DeviceBackend], data: Dataset) -> dict[str, LatencyModel]:
    """Predictors for every device, from the LUTs and fits the profile stage stored."""
    drift = spec.search.drift
    geometry = (data.in_channels, data.num_classes, data.image_size)
    models = {}
    for name, device in devices.items():
        monitor = DriftMonitor(drift.threshold, drift.window, min_observations=min(5, drift.window))
        if spec.search.latency == "lut":
            table = stored_lut(registry, name, device_fingerprint_hash(device))
            if not table:
                raise DeviceError(f"no latency LUT for {name} with its current fingerprint; enable profile.lut")
            predictor = LutSumPredictor(table, *geometry, device_batch_size(device))
            models[name] = LatencyModel(device, predictor, "lut", monitor)
        else:
            path = predictor_file(spec, device, data)
            if not path.exists():
                raise DeviceError(f"no calibrated latency predictor for {name} at {path}; set profile.calibrate")
            predictor = CalibratedLutPredictor.from_dict(json.loads(path.read_text()))
            models[name] = LatencyModel(device, predictor, "predicted", monitor)
    return models


def drift_checked(arch_hash: str, fraction: float) -> bool:
    """Deterministic choice of candidates also measured for real (same ones on a resumed run)."""
    return int(arch_hash[:8], 16) / 0xFFFFFFFF < fraction


def time_candidates(
    archs: list[Arch],
    devices: dict[str, DeviceBackend],
    models: dict[str, LatencyModel] | None,
    spec: Spec,
    input_shape: tuple[int, ...],
) -> dict[str, tuple[list[Measurement], dict[str, str]]]:
    """Latency of each architecture on every device: measured, or predicted plus a measured sample.

    Returns {arch hash: (measurements, {device: why it has no number})}. Predicted rows come
    first, so the score uses the same (predicted) scale for every candidate; the measured rows of
    the sampled candidates are recorded beside them and feed the drift check.
    """
    from ..space import arch_hash
    from .evaluate import describe_error, measure_everywhere, model_for, prepare_everywhere

    # Build the models that will really be measured once, and let the devices prepare them as a
    # batch (litert converts them in parallel worker processes) before any is timed.
    measured = [a for a in archs if not models or drift_checked(arch_hash(a), spec.search.drift.fraction)]
    built = {arch_hash(a): model_for(a, spec.dataset) for a in measured}
    prepare_everywhere(devices, [(model, input_shape) for model in built.values()])
    timed = {}
    for arch in archs:
        h = arch_hash(arch)
        if not models:
            timed[h] = measure_everywhere(devices, built[h], input_shape)
            continue
        predicted, failures = [], {}
        for name, model in models.items():
            try:
                predicted.append(model.measurement(arch))
            except Exception as exc:  # e.g. an operator missing from the LUT: no number on this device
                failures[name] = describe_error(exc)
        if h in built:
            real, real_failures = measure_everywhere(devices, built[h], input_shape)
            by_device = {m.device: m for m in predicted}
            for m in real:
                if m.device in by_device:
                    models[m.device].observe(by_device[m.device].stats.median_ms, m.stats.median_ms)
            predicted += real
            for name, reason in real_failures.items():
                failures.setdefault(name, reason)
        timed[h] = (predicted, failures)
    return timed
