"""The engine-overhead benchmark runs end to end at a tiny size and writes a well-formed report.

Only the shape and sanity of the numbers are checked, never a timing target: CI machines vary.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "engine_overhead.py"
BATCH_SIZES = [4, 8]
CANDIDATES = 24
ROWS = 600


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "engine_overhead.json"
    args = [
        "--quick", "--out", str(out), "--candidates", str(CANDIDATES),
        "--batch-sizes", ",".join(map(str, BATCH_SIZES)), "--rows", str(ROWS),
    ]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_report_describes_machine_settings_and_targets(bench):
    report, _ = bench
    machine = report["machine"]
    for key in ("cpu_model", "logical_cores", "python", "nasflow", "prefect", "duckdb"):
        assert machine[key], key
    settings = report["settings"]
    assert settings["quick"] is True
    assert settings["candidates"] == CANDIDATES and settings["batch_sizes"] == BATCH_SIZES
    assert report["targets"] == {
        "overhead_ms_per_candidate_max": 20.0, "candidate_rows_per_second_min": 10_000.0,
        "quickstart_seconds_to_first_candidate_max": 10.0,
    }
    assert set(report["meets_target"]) == {"overhead_ms_per_candidate", "candidate_rows_per_second", "quickstart_first_candidate"}
    assert all(isinstance(v, bool) for v in report["meets_target"].values())


def test_overhead_runs_evaluate_every_candidate_with_stand_ins(bench):
    report, _ = bench
    runs = report["orchestration_overhead"]["runs"]
    assert [r["batch_size"] for r in runs] == BATCH_SIZES
    for run in runs:
        assert run["candidates_evaluated"] == run["candidates_requested"] == CANDIDATES
        assert run["distinct_architectures"] == run["candidate_rows"] == CANDIDATES
        # the null device records one row per candidate, never passed off as measured
        assert run["measurement_rows"] == run["measurement_rows_estimated"] == CANDIDATES
        # candidates and measurements are written together, at most once per search batch, except
        # the first batch: its slices (one candidate, then one per worker) are each written at once
        first_slices = 1 + math.ceil((run["batch_size"] - 1) / run["workers"])
        assert 1 <= run["registry_write_transactions"] <= math.ceil(CANDIDATES / run["batch_size"]) - 1 + first_slices
        assert positive(run["wall_seconds"]) and positive(run["overhead_ms_per_candidate"])
        assert run["overhead_ms_per_candidate"] == pytest.approx(1000 * run["wall_seconds"] / CANDIDATES)
        parts = run["breakdown_ms_per_candidate"]
        assert sum(parts.values()) == pytest.approx(run["overhead_ms_per_candidate"])
        assert all(v >= 0 for k, v in parts.items() if k != "other"), parts
        assert parts["model_build_for_measurement"] > 0 and parts["prefect_task_collect"] > 0
        assert parts["registry_writes"] > 0
        assert run["meets_target"] == (run["overhead_ms_per_candidate"] <= 20.0)


def test_first_candidate_timeline_is_ordered(bench):
    report, _ = bench
    first = report["first_candidate"]
    assert positive(first["seconds_to_first_candidate"])
    assert first["run_status"] in ("interrupted", "finished")
    events = [e["event"] for e in first["timeline"]]
    assert events[0] == "process started" and events[-1] == "first candidate row recorded"
    assert {"registry file created", "run row recorded"} <= set(events)
    times = [e["seconds_from_start"] for e in first["timeline"]]
    assert times == sorted(times)
    assert times[-1] == pytest.approx(first["seconds_to_first_candidate"])
    assert first["first_batch_candidates"] >= 1


def test_quickstart_is_timed_with_its_own_server_and_with_a_running_one(bench):
    report, _ = bench
    quick = report["quickstart_first_candidate"]
    assert quick["target_seconds"] == 10.0
    for label, url_set in (("ephemeral_server", False), ("running_server", True)):
        entry = quick[label]
        assert entry["prefect_api_url_set"] is url_set
        assert entry["run_status"] == "interrupted" and entry["let_finish"] is False  # stopped after the first row
        assert entry["meets_target"] == (entry["seconds_to_first_candidate"] <= 10.0)
        events = [e["event"] for e in entry["timeline"]]
        assert events[0] == "process started" and events[-1] == "first candidate row recorded"
        assert {"profile flow run started", "search flow run started"} <= set(events)
        times = [e["seconds_from_start"] for e in entry["timeline"]]
        assert times == sorted(times) and times[-1] == pytest.approx(entry["seconds_to_first_candidate"])
        assert entry["first_batch_candidates"] == 1  # the first slice of the first batch: one candidate
    assert report["meets_target"]["quickstart_first_candidate"] == quick["ephemeral_server"]["meets_target"]


def test_markdown_renders_the_report_just_written(bench, tmp_path):
    report, _ = bench
    path = tmp_path / "engine_overhead.json"
    path.write_text(json.dumps(report))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--markdown", "--out", str(path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for fragment in ("| search batch |", "quickstart", "`PREFECT_API_URL` set", "| candidates | how |"):
        assert fragment in result.stdout, fragment


def test_registry_append_rates(bench):
    report, _ = bench
    entries = report["registry_append"]
    assert [e["rows"] for e in entries] == [ROWS, ROWS]
    single, batched = entries
    assert single["measurement_rows"] == 2 * ROWS
    for entry in entries:
        assert positive(entry["candidate_rows_per_second"]) and positive(entry["measurement_rows_per_second"])
    assert single["meets_target"] == (single["candidate_rows_per_second"] >= 10_000)
    assert report["meets_target"]["candidate_rows_per_second"] == single["meets_target"]
    assert positive(batched["ms_per_batch"])


def test_table_is_printed(bench):
    _, stdout = bench
    for heading in ("1. Orchestration", "2. `nasflow run`", "2b. `nasflow run examples/quickstart.yaml`", "3. Registry appends", "ms/cand", "candidate rows/s"):
        assert heading in stdout
