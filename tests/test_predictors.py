"""Latency predictors on a LUT: the FBNet sum, the calibrated model, evaluation and drift."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
from torch import nn

from nasflow.spaces.layerwise import LayerwiseOptions
from nasflow.errors import DeviceError
from nasflow.fingerprint import base_fingerprint
from nasflow.lut import arch_ops, build_lut, null_key
from nasflow.plugin_api import DeviceBackend, LatencyStats, Measurement
from nasflow.plugins.devices.onnxruntime_cpu import OnnxRuntimeCPU
from nasflow.plugins.devices.torch_cpu import TorchCPU
from nasflow.predictors import (
    FEATURE_NAMES,
    FORMS,
    CalibratedLutPredictor,
    CalibrationDisturbedError,
    CalibrationDisturbedWarning,
    DriftMonitor,
    LutMissError,
    LutSumPredictor,
    PredictorError,
    calibrate,
    calibration_archs,
    evaluate,
    measure_archs,
)
from nasflow.space import ArchNet, LayerwiseSpace, count_macs, format_arch

FAST = dict(threads=1, min_seconds=0.0, max_seconds=0.1, max_runs=30)
GEOMETRY = (1, 10, 8)  # in_channels, num_classes, image_size: digits-like input (1, 1, 8, 8)
# 4 x 4 x 5 = 80 architectures: room for 10 calibration and 10 held-out ones.
SPACE = LayerwiseOptions(
    stem_channels=8,
    stages=[{"channels": 8, "layers": 1, "stride": 1}, {"channels": 16, "layers": 2, "stride": 2}],
    kernels=[3, 5],
    expansions=[1, 3],
    head_channels=16,
)


@pytest.fixture(scope="module")
def space():
    return LayerwiseSpace(SPACE)


def table_of(rows):
    return {(r["op_key"], r["input_shape"]): r["median_ms"] for r in rows}


def held_out(space, exclude, n=10, seed=7):
    rng, names, out = random.Random(seed), {format_arch(a) for a in exclude}, []
    while len(out) < n:
        arch = space.to_arch(space.sample(rng))
        if format_arch(arch) not in names:
            names.add(format_arch(arch))
            out.append(arch)
    return out


class FakeDevice(DeviceBackend):
    """Deterministic 'device': a call costs 0.05 ms, each conv/linear 0.004 ms + 1e-5 ms per weight;
    a whole network costs 0.2 ms more plus 3 ms per million MACs (what a LUT cannot see)."""

    name = "fake"
    CALL_MS, MODEL_MS, MS_PER_MMAC = 0.05, 0.2, 3.0

    def fingerprint(self):
        return base_fingerprint("fake", "1", 1)

    def measure_model(self, model, input_shape):
        ms = self.CALL_MS + sum(
            0.004 + 1e-5 * m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        )
        if isinstance(model, ArchNet):
            macs = count_macs(model.arch, model.in_channels, model.num_classes, tuple(input_shape[2:]))
            ms += self.MODEL_MS + self.MS_PER_MMAC * macs / 1e6
        stats = LatencyStats(ms, ms, ms, 0.0, ms, 10, 0, 0.0)
        return Measurement(self.name, "fake 1", "pytorch", "measured", stats, 1, input_shape[0], self.fingerprint())


# ---------------------------------------------------------------- LUT sum


def test_lut_sum_is_the_sum_of_the_entries(space):
    rows = build_lut(FakeDevice(), space, *GEOMETRY)
    table = table_of(rows)
    predictor = LutSumPredictor(table, *GEOMETRY)
    for arch in calibration_archs(space, predictor, n=8):
        manual = sum(table[key] for key in arch_ops(arch, *GEOMETRY))
        assert predictor.predict(arch) == pytest.approx(manual, rel=1e-12)
        assert predictor.predict(format_arch(arch)) == predictor.predict(arch)
    restored = LutSumPredictor.from_dict(json.loads(json.dumps(predictor.to_dict())))
    assert restored.predict(arch) == predictor.predict(arch)


def test_missing_entry_names_the_op(space):
    table = table_of(build_lut(FakeDevice(), space, *GEOMETRY))
    del table[("ir_k5_e3_c16_s2@8", "1x8x8x8")]
    predictor = LutSumPredictor(table, *GEOMETRY)
    arch = "stem_c8_s1-ir_k3_e1_c8_s1-ir_k5_e3_c16_s2-skip_c16-head_c16"
    with pytest.raises(LutMissError, match=r"'ir_k5_e3_c16_s2@8' at input 1x8x8x8") as info:
        predictor.predict(arch)
    assert isinstance(info.value, DeviceError)
    with pytest.raises(LutMissError):
        CalibratedLutPredictor(table, *GEOMETRY).predict(arch)


def test_calibration_archs_span_the_lut_range(space):
    predictor = LutSumPredictor(table_of(build_lut(FakeDevice(), space, *GEOMETRY)), *GEOMETRY)
    archs = calibration_archs(space, predictor, n=10)
    lat = [predictor.predict(a) for a in archs]
    everything = [predictor.predict(space.to_arch(space.sample(random.Random(i)))) for i in range(300)]
    assert len({format_arch(a) for a in archs}) == 10 and lat == sorted(lat)
    assert lat[0] == pytest.approx(min(everything)) and lat[-1] == pytest.approx(max(everything))


# ---------------------------------------------------------------- calibrated predictor


def test_calibrated_recovers_what_the_lut_cannot_see(space):
    device = FakeDevice()
    table = table_of(build_lut(device, space, *GEOMETRY))
    assert table[(null_key(1), "1x1x8x8")] == pytest.approx(FakeDevice.CALL_MS)
    predictor, archs, measured = calibrate(device, space, table, *GEOMETRY, n=12)
    assert len(archs) == len(measured) == 12
    test = held_out(space, archs)
    truth = measure_archs(device, test, *GEOMETRY)
    lut_sum = evaluate(LutSumPredictor(table, *GEOMETRY).predict_many(test), truth)
    calibrated = evaluate(predictor.predict_many(test), truth)
    assert calibrated["within_10pct"] == 1.0 and calibrated["mape"] < 0.02
    assert calibrated["rmse_ms"] < 0.1 * lut_sum["rmse_ms"]
    # Explainable: the per-model cost is the runtime's per-call cost plus the whole-model extra.
    coef = predictor.coefficients
    assert coef["overhead"] == pytest.approx(FakeDevice.CALL_MS + FakeDevice.MODEL_MS, rel=0.1)
    assert coef["mmacs"] == pytest.approx(FakeDevice.MS_PER_MMAC, rel=0.2)
    parts = predictor.explain(test[0])
    assert set(parts) == set(FEATURE_NAMES)
    assert sum(parts.values()) == pytest.approx(predictor.predict(test[0]))
    assert "ms per model" in predictor.describe()


def test_calibrated_round_trips_through_json(space):
    device = FakeDevice()
    table = table_of(build_lut(device, space, *GEOMETRY))
    predictor, archs, _ = calibrate(device, space, table, *GEOMETRY, n=8)
    data = json.loads(json.dumps(predictor.to_dict()))
    restored = CalibratedLutPredictor.from_dict(data)
    assert [restored.predict(a) for a in archs] == [predictor.predict(a) for a in archs]
    assert restored.fit_info == predictor.fit_info and restored.coefficients == predictor.coefficients
    with pytest.raises(PredictorError):
        CalibratedLutPredictor.from_dict({**data, "kind": "lut-sum"})


def test_three_calibration_models_are_enough(space, fake_table):
    predictor, archs, _ = calibrate(FakeDevice(), space, fake_table, *GEOMETRY, n=3)
    assert len(archs) == 3 and predictor.fit_info["checks"]["remeasured"] == []


def test_fit_rejects_bad_data(space):
    table = table_of(build_lut(FakeDevice(), space, *GEOMETRY))
    predictor = CalibratedLutPredictor(table, *GEOMETRY)
    archs = [space.to_arch(space.sample(random.Random(i))) for i in range(4)]
    with pytest.raises(PredictorError, match="at least 3"):
        predictor.fit(archs[:2], [1.0, 2.0])
    with pytest.raises(PredictorError, match="positive"):
        predictor.fit(archs, [1.0, 2.0, 0.0, 1.0])
    with pytest.raises(PredictorError, match="4 architectures but 3"):
        predictor.fit(archs, [1.0, 2.0, 3.0])


def test_calibrated_beats_lut_sum_on_onnxruntime(space):
    """Each LUT entry pays onnxruntime's per-call cost once: the plain sum overestimates whole
    models about twofold, far beyond the timing noise of a shared machine."""
    device = OnnxRuntimeCPU(OnnxRuntimeCPU.Options(**FAST))
    table = table_of(build_lut(device, space, *GEOMETRY))
    predictor, archs, _ = calibrate(device, space, table, *GEOMETRY, n=10)
    test = held_out(space, archs)
    truth = measure_archs(device, test, *GEOMETRY)
    lut_sum = evaluate(LutSumPredictor(table, *GEOMETRY).predict_many(test), truth)
    calibrated = evaluate(predictor.predict_many(test), truth)
    assert calibrated["rmse_ms"] < lut_sum["rmse_ms"]
    assert calibrated["mape"] < lut_sum["mape"]


def test_calibrated_fits_torch_at_least_as_well_as_lut_sum(space):
    """Eager PyTorch's LUT sum is close to whole-model time and a shared machine is noisy, so only
    what the fit guarantees is asserted: on its training models it is no worse than the plain sum."""
    device = TorchCPU(TorchCPU.Options(**FAST))
    table = table_of(build_lut(device, space, *GEOMETRY))
    predictor, archs, measured = calibrate(device, space, table, *GEOMETRY, n=10)
    info = predictor.fit_info
    assert info["n"] == 10 and info["null_ms"] > 0
    assert info["form"] in FORMS and set(info["forms_loo_rel_rmse"]) == set(FORMS)
    assert info["loo_rel_rmse"] == pytest.approx(min(info["forms_loo_rel_rmse"].values()))
    assert info["loo_rel_rmse"] <= info["lut_sum_rel_rmse"]
    train = evaluate(predictor.predict_many(archs), measured)
    assert all(math.isfinite(v) for v in train.values())
    assert all(p > 0 for p in predictor.predict_many(held_out(space, archs)))


class SumDevice(FakeDevice):
    """Whole models cost exactly their operators' LUT entries: nothing for a fit to correct."""

    table: dict = {}

    def measure_model(self, model, input_shape):
        if not isinstance(model, ArchNet):
            return super().measure_model(model, input_shape)
        ms = LutSumPredictor(self.table, *GEOMETRY).predict(model.arch)
        stats = LatencyStats(ms, ms, ms, 0.0, ms, 10, 0, 0.0)
        return Measurement(self.name, "fake 1", "pytorch", "measured", stats, 1, input_shape[0], self.fingerprint())


def test_calibrated_falls_back_to_the_plain_sum_when_nothing_beats_it(space):
    device = SumDevice()
    table = table_of(build_lut(device, space, *GEOMETRY))
    SumDevice.table = table
    predictor, archs, measured = calibrate(device, space, table, *GEOMETRY, n=6)
    assert predictor.fit_info["form"] == "lut-sum" and predictor.fit_info["loo_rel_rmse"] < 1e-12
    lut_sum = LutSumPredictor(table, *GEOMETRY)
    test = held_out(space, archs)
    assert predictor.predict_many(test) == pytest.approx(lut_sum.predict_many(test), rel=1e-12)
    assert CalibratedLutPredictor.from_dict(predictor.to_dict()).predict(test[0]) == pytest.approx(lut_sum.predict(test[0]))


class DisturbedDevice(FakeDevice):
    """FakeDevice on a machine with a slow phase: its measurements number `slow` (0-based, in
    call order, every model counted) run 1.6x slower; with `erratic`, each one slower than the last."""

    def __init__(self, slow=(), erratic=False):
        super().__init__()
        self.slow, self.erratic, self.calls = set(slow), erratic, 0

    def measure_model(self, model, input_shape):
        m = super().measure_model(model, input_shape)
        self.calls += 1
        factor = 1.0 + 0.2 * self.calls if self.erratic else (1.6 if self.calls - 1 in self.slow else 1.0)
        ms = m.stats.median_ms * factor
        return replace(m, stats=replace(m.stats, median_ms=ms, p90_ms=ms, mean_ms=ms, min_ms=ms))


@pytest.fixture(scope="module")
def fake_table(space):
    return table_of(build_lut(FakeDevice(), space, *GEOMETRY))


def test_a_model_measured_in_a_slow_phase_is_caught_by_its_residual_and_measured_again(space, fake_table):
    """One pass (no reference operator): model 5's only measurement is slow, and only its
    residual against the LUT can tell."""
    predictor, archs, measured = calibrate(DisturbedDevice(slow={5}), space, fake_table, *GEOMETRY, n=12)
    checks = predictor.fit_info["checks"]
    assert checks["replaced"] == [5] and 5 in checks["remeasured"] and checks["repeated"] == []
    clean, _, truth = calibrate(FakeDevice(), space, fake_table, *GEOMETRY, n=12)
    assert measured == pytest.approx(truth)
    assert predictor.coefficients == pytest.approx(clean.coefficients)


def test_disagreeing_passes_get_more_passes(space, fake_table):
    """Two passes: calls 0-1 time the reference, 2-9 the first pass of 8 models, 10-17 the second."""
    _, _, truth = calibrate(FakeDevice(), space, fake_table, *GEOMETRY, n=8)
    predictor, _, measured = calibrate(DisturbedDevice(slow=set(range(2, 10))), space, fake_table, *GEOMETRY, n=8, passes=2)
    assert predictor.fit_info["checks"]["extra_passes"] == 1  # a third pass confirms the fast second one
    assert measured == pytest.approx(truth)
    # 12 models (calls 2-13, 14-25), model 5 slow in both passes: they agree, its residual gives it away.
    _, _, truth = calibrate(FakeDevice(), space, fake_table, *GEOMETRY, n=12)
    device = DisturbedDevice(slow=set(range(2, 14)) | {14 + 5})
    predictor, _, measured = calibrate(device, space, fake_table, *GEOMETRY, n=12, passes=2)
    assert predictor.fit_info["checks"]["replaced"] == [5]
    assert measured == pytest.approx(truth)


def test_a_calibration_in_a_slow_phase_is_repeated_and_a_machine_that_never_settles_is_refused(space, fake_table):
    """A phase slowing the reference and both passes of every model is invisible to the passes;
    the reference operator, slow against its LUT entry, shows it and the calibration is repeated."""
    device = DisturbedDevice(slow=set(range(0, 20)))  # reference before (2), 16 model passes, reference after (2)
    predictor, _, measured = calibrate(device, space, fake_table, *GEOMETRY, n=8, passes=2)
    checks = predictor.fit_info["checks"]
    assert len(checks["repeated"]) == 1 and "ran at 1.60x its LUT time" in checks["repeated"][0]
    assert checks["reference_ratios"] == pytest.approx([1.0, 1.0])
    _, _, truth = calibrate(FakeDevice(), space, fake_table, *GEOMETRY, n=8)
    assert measured == pytest.approx(truth)
    with pytest.raises(CalibrationDisturbedError, match="in all 2 attempts: the machine is busy"):
        calibrate(DisturbedDevice(erratic=True), space, fake_table, *GEOMETRY, n=8, passes=2, strict=True)
    with pytest.warns(CalibrationDisturbedWarning, match="in all 2 attempts"):
        predictor, _, _ = calibrate(DisturbedDevice(erratic=True), space, fake_table, *GEOMETRY, n=8, passes=2)
    assert "its LUT time around the calibration" in predictor.fit_info["checks"]["disturbed"]


# ---------------------------------------------------------------- evaluation and drift


def test_evaluate():
    perfect = evaluate([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert perfect == {"n": 3, "within_10pct": 1.0, "rmse_ms": 0.0, "kendall_tau": 1.0, "mape": 0.0}
    off = evaluate([1.05, 2.5, 2.0], [1.0, 2.0, 3.0])
    assert off["within_10pct"] == pytest.approx(1 / 3)
    assert off["mape"] == pytest.approx((0.05 + 0.25 + 1 / 3) / 3)
    assert off["rmse_ms"] == pytest.approx(math.sqrt((0.05**2 + 0.5**2 + 1.0) / 3))
    assert off["kendall_tau"] == pytest.approx(1 / 3)
    with pytest.raises(PredictorError):
        evaluate([1.0], [1.0, 2.0])


def noisy_pairs(bias, n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        measured = rng.uniform(0.5, 2.0)
        yield measured * (1 + bias) * (1 + rng.uniform(-0.01, 0.01)), measured


def test_drift_monitor_flags_a_30_percent_bias_not_a_2_percent_one():
    small, large = DriftMonitor(threshold=0.10, window=20), DriftMonitor(threshold=0.10, window=20)
    for (p1, m1), (p2, m2) in zip(noisy_pairs(0.02, 30), noisy_pairs(0.30, 30, seed=1)):
        small.observe(p1, m1)
        large.observe(p2, m2)
    assert not small.drifting and small.error == pytest.approx(0.02, abs=0.01)
    assert large.drifting and large.error == pytest.approx(0.30, abs=0.02)
    assert large.bias == pytest.approx(0.30, abs=0.02)
    # The window forgets: 20 good pairs later the predictor is trusted again.
    for p, m in noisy_pairs(0.0, 20, seed=2):
        large.observe(p, m)
    assert not large.drifting and large.count == 20


def test_drift_monitor_waits_for_enough_pairs():
    monitor = DriftMonitor(threshold=0.10, window=20, min_observations=5)
    assert math.isnan(monitor.error) and not monitor.drifting
    for _ in range(4):
        assert monitor.observe(2.0, 1.0) is False
    assert monitor.observe(2.0, 1.0) is True
    monitor.reset()
    assert monitor.count == 0 and not monitor.drifting
    with pytest.raises(PredictorError):
        monitor.observe(1.0, 0.0)
