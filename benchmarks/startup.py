"""Start-up time of the quick CLI commands (`validate`, `plugins`, `sql`) and the heavy modules each one imports.

Each command runs as a fresh `python -m nasflow.cli` process several times; the median wall time
is reported (machines here are shared and noisy, so single runs mean little), next to the time a
bare interpreter and `import torch` / `import prefect` alone take in the same run. The target is
a median under 1.5 s per command; it is reported, never asserted.

    python benchmarks/startup.py [--runs 7] [--out benchmarks/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.machine import machine_info  # noqa: E402

TARGET_S = 1.5
HEAVY = ("torch", "prefect", "onnx", "onnxruntime", "duckdb", "pyarrow", "numpy")
# Runs the CLI in-process, then reports which heavy top-level packages it pulled in.
_PROBE = """
import json, sys
from nasflow.cli import main
try:
    main(sys.argv[1:])
finally:
    heavy = sorted(m for m in {heavy!r} if m in sys.modules)
    print("HEAVY=" + json.dumps(heavy), file=sys.stderr)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _fixtures(tmp: Path) -> dict[str, list[str]]:
    """A tiny valid spec and a small registry, so each command does its real work."""
    from specs import tiny_spec_text

    from nasflow.registry import Registry

    spec = tmp / "tiny.yaml"
    spec.write_text(tiny_spec_text(tmp))
    registry = tmp / "registry.duckdb"
    Registry(registry)  # migrated, empty
    return {
        "validate": ["validate", str(spec)],
        "plugins": ["plugins"],
        "sql": ["sql", "--registry", str(registry), "SELECT count(*) AS n FROM candidates"],
    }


REFERENCES = {"bare python": "pass", "import torch": "import torch", "import prefect": "import prefect"}


def _time_python(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def time_command(args: list[str], runs: int) -> dict[str, object]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "nasflow.cli", *args], capture_output=True, text=True, env=_env())
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"nasflow {' '.join(args)} failed: {result.stderr.strip()}")
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, env=_env()
    )
    heavy_line = [line for line in probe.stderr.splitlines() if line.startswith("HEAVY=")]
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "runs": runs,
        "heavy_modules_imported": json.loads(heavy_line[-1].removeprefix("HEAVY=")) if heavy_line else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    # Side-by-side references: what a command would cost if it still imported torch or Prefect.
    references = {label: _time_python(code, args.runs) for label, code in REFERENCES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {name: time_command(argv, args.runs) for name, argv in _fixtures(Path(tmp)).items()}
    report = {
        "machine": machine_info("torch", "prefect", "duckdb", "pydantic"),
        "settings": {"runs": args.runs},
        "reference_median_s": references,
        "commands": commands,
        "target_median_s_max": TARGET_S,
        "meets_target": {name: c["median_s"] < TARGET_S for name, c in commands.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'command':<10} {'median s':>9} {'min s':>7} {'max s':>7}  heavy modules imported")
    for name, c in commands.items():
        print(f"{name:<10} {c['median_s']:>9.3f} {c['min_s']:>7.3f} {c['max_s']:>7.3f}  {', '.join(c['heavy_modules_imported'] or []) or '-'}")
    refs = ", ".join(f"{label} {seconds:.3f} s" for label, seconds in references.items())
    print(f"(same run, medians: {refs}; target: median < {TARGET_S} s) -> {args.out}")


if __name__ == "__main__":
    main()
