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


@pytest.fixture(scope="module")
def space_report(tmp_path_factory):
    """A space named on the command line, at another size, under the script's own background load,
    on a real runtime (mnasnet's LUT has about 1,500 operators at 32x32: too many for a test)."""
    out = tmp_path_factory.mktemp("fidelity") / "latency_fidelity_layerwise_16_background.json"
    args = ["--quick", "--space", "layerwise", "--image-size", "16", "--background", "1", "--devices", "onnxruntime-cpu",
            "--no-repeat", "--out", str(out)]
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_space_run_has_the_same_fields_and_records_the_load(space_report):
    from nasflow.predictors import FORMS

    s = space_report["settings"]
    assert s["space"] == "layerwise" and s["setting"] == "layerwise_16_background" and s["background_processes"] == 1
    assert s["space_size"] > 100 and s["input"] == [1, 3, 16, 16]
    load = space_report["load"]
    assert load["background_processes"] == 1 and load["loadavg_samples"] >= 1 and load["loadavg_1min_max"] > 0
    device = space_report["devices"]["onnxruntime-cpu"]
    for metrics in device["predictors"].values():
        assert {"within_10pct", "kendall_tau", "rmse_ms"} <= set(metrics)
    assert device["calibration"]["form"] in FORMS and device["seconds_per_model"] > 0
    assert device["lut"]["entries"] > 10 and device["lut"]["build_seconds"] > 0


def test_the_readme_table_lists_every_setting_and_a_missed_target(space_report, report):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import latency_fidelity

    missed = json.loads(json.dumps(space_report))
    missed["devices"]["litert"] = missed["devices"]["onnxruntime-cpu"]
    missed["devices"]["litert"]["predictors"]["calibrated"]["within_10pct"] = 0.5
    missed["devices"]["litert"]["predictors"]["lut_sum"]["within_10pct"] = 0.25
    text = latency_fidelity.settings_markdown({"small_background": missed})
    assert "`small_background`" in text and "`layerwise` (" in text and ", 16x16 |" in text
    assert "Targets missed: `small_background` on litert: the better predictor has 50.0 % within +-10 %" in text
    assert latency_fidelity.markdown(report, {}).count("| setting |") == 0


@pytest.mark.parametrize(
    "argv, setting",
    [([], None), (["--space", "mnasnet"], "mnasnet"), (["--image-size", "64", "--background", "2"], "layerwise_64_background"),
     (["--space-options", "{}", "--setting", "big"], "big")],
)
def test_settings_are_named_by_space_size_and_load(argv, setting):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import latency_fidelity

    args = latency_fidelity.parse_args(argv)
    assert args.setting == setting
    assert args.out.name == (f"latency_fidelity_{setting}.json" if setting else "latency_fidelity.json")


@pytest.mark.parametrize(
    "argv, message",
    [(["--space", "no-such-space"], "unknown space 'no-such-space'; registered:"),
     (["--space-options", "[1]", "--setting", "x"], "must be a JSON object"),
     (["--space-options", "{}"], "name the setting with --setting"),
     (["--image-size", "4"], "at least 8")],
)
def test_bad_options_are_one_line_errors(argv, message):
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and message in result.stderr
