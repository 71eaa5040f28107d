"""README's benchmark figures are the committed JSON as the benchmark scripts render it (`--markdown`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import tables  # noqa: E402  (benchmarks/tables.py)

NAMES = tables.benchmark_names()
FIX = "after re-running a benchmark, refresh README.md with `python benchmarks/tables.py --update-readme`"


def test_every_committed_report_has_a_script_and_a_readme_block():
    assert {"engine_overhead", "latency_fidelity", "edgetpu_estimator"} <= set(NAMES)
    blocks = tables.readme_blocks(tables.README.read_text())
    for name in NAMES:
        assert (BENCHMARKS / f"{name}.py").is_file(), f"benchmarks/results/{name}.json has no script"
        assert name in blocks, f"README.md has no block rendered from benchmarks/results/{name}.json"
    assert set(blocks) <= set(NAMES), f"README blocks without a committed JSON: {set(blocks) - set(NAMES)}"


@pytest.mark.parametrize("name", NAMES)
def test_readme_block_is_the_scripts_rendering_of_the_committed_json(name):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--markdown"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rendered = result.stdout.strip()
    assert rendered, "--markdown printed nothing"
    readme = tables.readme_blocks(tables.README.read_text())[name].strip()
    assert readme == rendered, f"README.md's block for {name} differs from `benchmarks/{name}.py --markdown`: {FIX}"


def test_a_changed_figure_is_caught(tmp_path):
    """The comparison can fail: a report with one figure changed renders a different block."""
    report = tables.load_results("engine_overhead")
    report["orchestration_overhead"]["runs"][0]["overhead_ms_per_candidate"] += 1.0
    changed = tmp_path / "engine_overhead.json"
    changed.write_text(json.dumps(report))
    assert tables.render("engine_overhead", changed) != tables.render("engine_overhead")


def test_markdown_runs_nothing(tmp_path):
    """`--markdown` reads the report it is given and writes nothing (no benchmark ran)."""
    report = tables.load_results("edgetpu_estimator")
    path = tmp_path / "edgetpu_estimator.json"
    path.write_text(json.dumps(report))
    before = path.stat().st_mtime_ns
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "edgetpu_estimator.py"), "--markdown", "--out", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mtime_ns == before and list(tmp_path.iterdir()) == [path]
    assert result.stdout.strip() == tables.render("edgetpu_estimator", path)
