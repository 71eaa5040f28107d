"""The latency-fidelity benchmark runs end to end at CI size and writes the fields the README cites.

Only the report's shape and internal consistency are checked, never the fidelity target: that
needs the full-size run on a quiet machine (see the README).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "latency_fidelity.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("fidelity") / "latency_fidelity.json"
    args = ["--quick", "--devices", "torch-cpu,no-such-device-xyz", "--out", str(out)]
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode != 0 and "no-such-device-xyz" in result.stderr  # an unknown name is an error
    args = ["--quick", "--devices", "torch-cpu", "--out", str(out)]
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_report_has_per_device_per_predictor_metrics(report):
    assert report["settings"]["archs"] == 8 and report["settings"]["quick"] is True
    device = report["devices"]["torch-cpu"]
    assert set(device["predictors"]) == {"lut_sum", "calibrated"}
    for metrics in [*device["predictors"].values(), device["noise_floor"]]:
        assert 0.0 <= metrics["within_10pct"] <= 1.0
        assert metrics["rmse_ms"] >= 0 and -1.0 <= metrics["kendall_tau"] <= 1.0
        assert metrics["n"] == 8
    assert device["runtime"].startswith("torch ")
    assert device["fingerprint"]["threads"] == 1


def test_report_numbers_agree_with_the_per_architecture_rows(report):
    device = report["devices"]["torch-cpu"]
    rows = device["architectures"]
    assert len(rows) == len({r["arch"] for r in rows}) == 8
    for kind in ("lut_sum", "calibrated"):
        errors = [(r[f"{kind}_ms"] - r["measured_ms"]) ** 2 for r in rows]
        assert device["predictors"][kind]["rmse_ms"] == pytest.approx(math.sqrt(sum(errors) / len(errors)))
        share = sum(abs(r[f"{kind}_ms"] - r["measured_ms"]) <= 0.1 * r["measured_ms"] for r in rows) / len(rows)
        assert device["predictors"][kind]["within_10pct"] == pytest.approx(share)
    assert device["latency_range_ms"] == [min(r["measured_ms"] for r in rows), max(r["measured_ms"] for r in rows)]
    lut = device["lut"]
    assert lut["entries"] == 33  # the default space at CIFAR-10 geometry: null, stem, 5 layers x 6, head
    assert lut["build_seconds"] >= lut["timing_seconds"] > 0
    assert device["calibration"]["models"] == 4 and device["calibration"]["fit"]["n"] == 4


def test_target_is_only_judged_on_its_device(report):
    assert report["targets"]["device"] == "litert"
    assert report["meets_target"] is None  # litert was not benchmarked here
