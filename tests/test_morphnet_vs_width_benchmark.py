"""The MorphNet-vs-width benchmark's bookkeeping: interpolation at equal accuracy, the report and the
resumable state. Nothing is trained here (the run takes hours); the functions it reports with are."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import morphnet_vs_width as bench  # noqa: E402


def test_width_macs_at_equal_accuracy_is_log_linear_between_bracketing_members():
    family = [{"test_accuracy": 0.50, "macs": 1e6}, {"test_accuracy": 0.60, "macs": 4e6}, {"test_accuracy": 0.65, "macs": 9e6}]
    assert bench.width_macs_at(family, 0.55) == pytest.approx(2e6)  # halfway in log MACs
    assert bench.width_macs_at(family, 0.60) == pytest.approx(4e6)
    assert bench.width_macs_at(family, 0.49) is None and bench.width_macs_at(family, 0.70) is None


def _args(tmp_path: Path, **overrides) -> argparse.Namespace:
    values = dict(seed_arch=bench.SEED_ARCH, images=100, epochs=1, batch_size=32, lr=0.1, alphas=[0.5, 1.0],
                  budgets=[0.6], seeds=[0, 1], strength=0.2, reg_epochs=1, latency=False, workers=1, divisor=4, min_channels=1,
                  archive=tmp_path / "cifar.tar.gz", cache_dir=tmp_path)
    return argparse.Namespace(**{**values, **overrides})


def _run(arch: str, macs: float, accuracy: float, seed: int) -> dict:
    return {"arch": arch, "seed": seed, "val_accuracy": accuracy, "test_accuracy": accuracy, "macs": macs,
            "params": 1000, "train_seconds": 1.0}


def test_report_reduction_met_and_missed(tmp_path):
    args = _args(tmp_path)
    state = bench.State(tmp_path / "state.json", bench.settings_of(args))
    for seed, delta in ((0, -0.01), (1, 0.01)):  # two seeds average to the stated accuracy
        state.put(f"train:width:0.5:{seed}", _run("w05", 1e6, 0.50 + delta, seed))
        state.put(f"train:width:1.0:{seed}", _run("w10", 4e6, 0.60 + delta, seed))
        state.put(f"train:morphnet:0.6:{seed}", _run("m06", 1.5e6, 0.55 + delta, seed))
        state.put(f"train:prune:0.6:{seed}", _run("p06", 2.4e6, 0.45 + delta, seed))
    report = bench.build_report(args, state)
    rows = {m["method"]: m for m in report["models"] if m["method"] != "width"}
    assert rows["morphnet"]["test_accuracy"] == pytest.approx(0.55)
    assert rows["morphnet"]["flops_reduction_at_equal_accuracy"] == pytest.approx(1 - 1.5 / 2)
    assert rows["prune"]["flops_reduction_at_equal_accuracy"] is None  # below the family's accuracy range
    assert report["flops_reduction_at_equal_accuracy"] == pytest.approx(0.25) and report["met"]
    text = bench.markdown(report)
    assert "| morphnet | budget 0.6 | 1.50 |" in text and "+25.0 %" in text and ": met)" in text

    state.put("train:morphnet:0.6:1", _run("m06", 1.5e6, 0.50, 1))  # now MorphNet needs 1.0x the MACs: missed
    report = bench.build_report(args, state)
    assert report["flops_reduction_at_equal_accuracy"] < 0.10 and not report["met"]
    assert "**missed**" in bench.markdown(report)


def test_state_resumes_and_refuses_other_settings(tmp_path):
    args = _args(tmp_path)
    path = tmp_path / "state.json"
    bench.State(path, bench.settings_of(args)).put("train:width:1.0:0", _run("w10", 4e6, 0.6, 0))
    again = bench.State(path, bench.settings_of(args))
    assert again.done("train:width:1.0:0") and json.loads(path.read_text())["settings"]["images"] == 100
    with pytest.raises(SystemExit, match="other settings"):
        bench.State(path, bench.settings_of(_args(tmp_path, epochs=2)))


def test_width_family_scales_the_seed():
    from nasflow.arch import count_macs, parse_arch

    args = _args(Path("."))
    seed, half = parse_arch(bench.width_arch(args, 1.0)), parse_arch(bench.width_arch(args, 0.5))
    assert count_macs(half, 3, 10, (32, 32)) < 0.5 * count_macs(seed, 3, 10, (32, 32))
    assert [b.out for b in half.blocks][-1] == [b.out for b in seed.blocks][-1] // 2
    assert min(b.out for b in half.blocks) == 4  # the family's divisor (4) lets 8-channel layers halve
