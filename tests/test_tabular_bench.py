"""The tabular benchmark builds (and resumes) a real table and runs every strategy on it, writing
the fields the README cites. Only the report's shape is checked here, never the targets: those
come from the full-size table (see the README)."""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "tabular_bench.py"


def bench(*args, timeout=900):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from nasflow.plugins import get_plugins

    reason = get_plugins().get("device", "litert").cls.unavailable_reason()
    if reason:
        pytest.skip(f"the table's latency is litert's LUT: {reason}")
    folder = tmp_path_factory.mktemp("tabular")
    table = folder / "t.duckdb"
    early = bench("run", "--preset", "tiny", "--table", str(table), "--out", str(folder / "x.json"))
    assert early.returncode != 0 and "run `benchmarks/tabular_bench.py build --preset tiny` first" in early.stderr
    first = bench("build", "--preset", "tiny", "--table", str(table), "--epochs", "1", "--workers", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    again = bench("build", "--preset", "tiny", "--table", str(table), "--epochs", "1", "--workers", "1")
    assert again.returncode == 0 and "12 of 12 architectures" in again.stderr and "training 0" in again.stderr
    other = bench("build", "--preset", "tiny", "--table", str(table), "--epochs", "2")
    assert other.returncode != 0 and "was built with other settings" in other.stderr
    return folder, table


def test_the_table_holds_every_architecture_with_its_numbers(built):
    _, table = built
    with duckdb.connect(str(table), read_only=True) as con:
        rows = con.execute("SELECT accuracy, litert_ms, onnxruntime_ms, params, macs FROM archs").fetchall()
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    assert len(rows) == 12
    assert all(0 <= a <= 1 and lit > 0 and ort > 0 and p > 0 and m > 0 for a, lit, ort, p, m in rows)
    assert {"settings", "command", "lut:litert", "lut:onnxruntime-cpu"} <= set(meta)
    assert json.loads(meta["lut:litert"])["fingerprint"]["threads"] == 1


def test_run_reports_every_strategy_and_renders(built):
    folder, table = built
    out, plot = folder / "r.json", folder / "r.svg"
    result = bench("run", "--preset", "tiny", "--table", str(table), "--seeds", "3", "--budget-share", "0.5",
                   "--batch", "2", "--out", str(out), "--plot", str(plot))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["budget"] == 6 and report["table"]["architectures"] == 12
    for name, entry in report["strategies"].items():
        assert entry["median_regret"] >= 0 and len(entry["regrets"]) == 3
        assert entry["median_evals_to_top1pct"] is None or 1 <= entry["median_evals_to_top1pct"] <= 6
        assert len(entry["median_regret_curve"]) == 6
        assert ("median_hypervolume_share" in entry) == entry["pareto"]
    assert {"mnasnet", "nsga2", "optuna-tpe", "evolution", "random"} <= set(report["strategies"])
    assert "entropy" in report["strategies"]["mnasnet"]
    assert set(report["verdict"]) == set(report["strategies"]) - {"random", "random-pareto"}
    assert plot.read_text().lstrip().startswith("<svg")
    assert "| strategy | median regret |" in result.stdout
