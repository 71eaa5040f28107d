"""The quick commands start quickly: listing plugins or validating a spec never imports torch or Prefect.

Checked in real subprocesses by looking at `sys.modules`, never by timing (benchmarks/startup.py
measures the time).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_spec_text

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "prefect", "onnx", "onnxruntime")


def heavy_imports(code: str, *args: str) -> list[str]:
    """Run `code` in a fresh interpreter; the heavy packages it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint('HEAVY=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("HEAVY="))
    return json.loads(line.removeprefix("HEAVY="))


def test_discovering_every_builtin_plugin_imports_no_runtime():
    code = "import nasflow.cli, nasflow.plugins\nassert nasflow.plugins.get_plugins().list('compressor')"
    assert heavy_imports(code) == []


@pytest.mark.parametrize("module", __import__("nasflow.plugins", fromlist=["BUILTIN_MODULES"]).BUILTIN_MODULES)
def test_each_builtin_plugin_module_imports_no_runtime(module):
    assert heavy_imports(f"import {module}") == []


RUN_CLI = "import sys\nfrom nasflow.cli import main\nassert main(sys.argv[1:]) == 0"
"""`nasflow ARGS` run in-process, so the probe sees what the command imported."""


def test_validate_imports_neither_torch_nor_prefect(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny_spec_text(tmp_path))
    heavy = heavy_imports(RUN_CLI, "validate", str(spec))
    assert "torch" not in heavy and "prefect" not in heavy, heavy


def test_plugins_and_sql_import_no_runtime(tmp_path):
    from nasflow.registry import Registry

    registry = tmp_path / "registry.duckdb"
    Registry(registry)
    assert heavy_imports(RUN_CLI, "plugins") == []
    assert heavy_imports(RUN_CLI, "sql", "--registry", str(registry), "SELECT count(*) FROM candidates") == []


def test_startup_benchmark_runs_and_reports_each_command(tmp_path):
    out = tmp_path / "startup.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--runs", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["commands"]) == {"validate", "plugins", "sql"}
    for name, command in report["commands"].items():
        assert command["runs"] == 1 and 0 < command["min_s"] <= command["median_s"] <= command["max_s"], name
        assert "torch" not in command["heavy_modules_imported"] and "prefect" not in command["heavy_modules_imported"]
    assert set(report["meets_target"]) == set(report["commands"]) and report["target_median_s_max"] == 1.5
    assert report["machine"]["cpu_model"] and report["machine"]["nasflow"]
    assert set(report["reference_median_s"]) == {"bare python", "import torch", "import prefect"}
