"""Stage consistency benchmark: does the same model get the same latency in every stage?

1. **Run.** A copy of the spec (default ``examples/quickstart.yaml``) with its registry, work
   directory and deploy folder moved into a scratch directory is run as a real ``nasflow run``
   subprocess, exactly as a user runs it.
2. **Re-measure.** Afterwards, in this process (which never trained a model and never ran a
   flow), every trained and morphed candidate's architecture is rebuilt from its checkpoint and
   timed on every spec device, and every verified deployed artifact on every spec device that
   runs its format, by the stages' own rules (each device's ``passes``, fastest kept);
   ``--repeats`` times, interleaved over all models, the fastest kept: the reference each
   stage's number is held against. The spread between the repeats is reported as well.
   ``--passes N`` sets every device's ``passes`` option for the run and the re-measurement
   (``--passes 1``: one measurement each, as before nasflow measured in passes).
3. **Compare.** Per device and architecture, every pair of numbers for the same model is
   compared: ``search`` (fresh weights, during the search), ``train``, ``morph`` (the live model
   in its stage), ``artifact`` (the deployed file, in the deploy stage), ``end`` and
   ``end-artifact`` (the re-measurement). A pair agrees when its ratio is within 10 % or within
   the two measurements' own 95 % intervals (the registry's ``rel_ci``, summed), whichever is
   wider.

Development and CI machines are often shared, so the report also says how loaded the machine was:
load averages before and after, the CPU time other processes used while the run and the
re-measurement went on (all CPU time of the machine minus this benchmark's own process tree), and
steal time (the hypervisor running other guests on our virtual CPUs).

Run from the repository root::

    .venv/bin/python benchmarks/stage_consistency.py             # the quickstart (a few minutes)
    .venv/bin/python benchmarks/stage_consistency.py --quick --out /tmp/s.json
    .venv/bin/python benchmarks/stage_consistency.py --markdown  # the README table from the JSON
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml

import tables  # benchmarks/tables.py: the README rendering
from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "examples" / "quickstart.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "stage_consistency.json"
TOLERANCE = 0.10  # a pair agrees within 10 % or within its measurements' own 95 % intervals
LABELS = ("search", "train", "morph", "artifact", "end", "end-artifact")  # order of a pair's members
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- machine load


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU time all processes of the machine have used since boot (every core), and steal time
    (the hypervisor running someone else on our virtual CPUs)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS  # guest time is in user


def own_cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (the run and its server)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class LoadMeter:
    """Load averages and other processes' CPU time over a phase of the benchmark."""

    def __init__(self) -> None:
        self.load_before = os.getloadavg()
        (self.busy0, self.steal0), self.own0, self.wall0 = machine_cpu_seconds(), own_cpu_seconds(), time.monotonic()

    def result(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall0
        busy, steal = machine_cpu_seconds()
        own = own_cpu_seconds() - self.own0
        others = max(0.0, busy - self.busy0 - own)
        return {
            "seconds": round(wall, 1),
            "load_average_before": [round(v, 2) for v in self.load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "cpu_seconds_this_benchmark": round(own, 1),
            "cpu_seconds_other_processes": round(others, 1),
            "other_processes_cores": round(others / wall, 2) if wall > 0 else None,
            "steal_seconds": round(steal - self.steal0, 1),
        }


# ---------------------------------------------------------------- run


def scratch_spec(source: Path, work: Path, quick: bool, passes: int | None) -> Path:
    """The spec with registry, work_dir and out_dir moved into `work` (a tiny one with `quick`),
    and with `passes` set on every device when given."""
    if quick:
        sys.path.insert(0, str(ROOT / "tests"))
        from specs import tiny_spec_text

        text = tiny_spec_text(work, name="stage-consistency")
    else:
        text = source.read_text()
    data = yaml.safe_load(text)
    data.setdefault("registry", {})["path"] = str(work / "registry.duckdb")
    data.setdefault("execution", {})["work_dir"] = str(work / "runs")
    data.setdefault("deploy", {})["out_dir"] = str(work / "deploy")
    if passes is not None:
        for device in data.get("devices", []):
            device.setdefault("options", {})["passes"] = passes
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_nasflow(spec_path: Path, timeout: float) -> float:
    """`nasflow run SPEC` as a subprocess from the repository root; seconds it took."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "nasflow.cli", "run", str(spec_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise SystemExit(f"nasflow run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.monotonic() - start


# ---------------------------------------------------------------- re-measure


def stage_numbers(registry, run_id: str) -> tuple[dict, list[dict], list[dict]]:
    """Measured latencies per (device, arch_hash, label), the checkpointed candidates, the artifacts."""
    candidates = [c for stage in ("search", "train", "morph") for c in registry.get_candidates(run_id, stage=stage, status="ok")]
    by_id = {c["candidate_id"]: c for c in candidates}
    artifacts = [a for a in registry.get_artifacts(run_id) if a["verified"]]
    numbers: dict[tuple[str, str, str], dict[str, Any]] = {}
    for m in registry.get_measurements(list(by_id)):
        if m["source"] != "measured" or m["metric"] != "latency" or m["candidate_id"] not in by_id:
            continue
        candidate = by_id[m["candidate_id"]]
        label = "artifact" if m["artifact_id"] else candidate["stage"]
        numbers[(m["device"], candidate["arch_hash"], label)] = {
            "median_ms": m["median_ms"], "rel_ci": m["rel_ci"], "runs": m["runs"],
            "passes_ms": (m.get("extra") or {}).get("passes_ms"),
        }
    trained = [c for c in candidates if c["stage"] in ("train", "morph") and (c.get("extra") or {}).get("checkpoint")]
    for artifact in artifacts:
        artifact["arch_hash"] = by_id[artifact["candidate_id"]]["arch_hash"]
    return numbers, trained, artifacts


def load_model(spec, arch: str, checkpoint: str):
    """The candidate's model with its checkpointed weights, as the stages build it."""
    import torch

    from nasflow.data import load_dataset
    from nasflow.space import build_model, parse_arch

    data = load_dataset(spec.dataset)
    model = build_model(parse_arch(arch), data.in_channels, data.num_classes)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model.eval()


def remeasure(spec, trained: list[dict], artifacts: list[dict], repeats: int) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every checkpointed model on every device and every artifact on every device that runs it,
    by the stages' own rules (nasflow.flows.evaluate), `repeats` times, interleaved; per
    (device, arch_hash, label) the fastest repeat (the best estimate of the uncontended latency,
    by the same rule the stages follow), and every repeat's median."""
    from nasflow.data import load_dataset
    from nasflow.flows.evaluate import measure_artifact_everywhere, measure_everywhere
    from nasflow.plugins import get_plugins

    plugins = get_plugins()
    devices = {cfg.name: plugins.create("device", cfg.name, cfg.options) for cfg in spec.devices}
    shape = load_dataset(spec.dataset).input_shape
    jobs = []
    for c in trained:
        model = load_model(spec, c["arch"], c["extra"]["checkpoint"])
        jobs.append((c["arch_hash"], "end", lambda m=model: measure_everywhere(devices, m, shape)))
    for a in artifacts:
        jobs.append((a["arch_hash"], "end-artifact", lambda a=a: measure_artifact_everywhere(devices, a["path"], a["format"], shape)))
    repeated: dict[tuple[str, str, str], list] = {}
    for index in range(repeats):
        log(f"re-measure {index + 1}/{repeats}: {len(jobs)} models and artifacts on {len(devices)} devices")
        for arch_hash, label, measure in jobs:
            measured, failures = measure()
            if failures:
                raise SystemExit(f"re-measuring {arch_hash} failed: {failures}")
            for m in measured:
                repeated.setdefault((m.device, arch_hash, label), []).append(m.stats)
    out = {}
    for key, stats in repeated.items():
        fastest = min(stats, key=lambda st: st.median_ms)
        out[key] = {"median_ms": fastest.median_ms, "rel_ci": fastest.rel_ci, "runs": fastest.runs, "repeats_ms": [st.median_ms for st in stats]}
    return out


# ---------------------------------------------------------------- compare


def tolerance(rel_ci_a: float | None, rel_ci_b: float | None) -> float:
    """Allowed |ratio - 1|: 10 %, or the two measurements' 95 % intervals together if wider."""
    cis = [c if c is not None else math.inf for c in (rel_ci_a, rel_ci_b)]
    return max(TOLERANCE, sum(cis))


def compare(numbers: dict[tuple[str, str, str], dict[str, Any]], arch_of: dict[str, str]) -> list[dict[str, Any]]:
    """Every pair of numbers for the same (device, architecture), ratio second / first."""
    grouped: dict[tuple[str, str], dict[str, dict]] = {}
    for (device, arch_hash, label), entry in numbers.items():
        grouped.setdefault((device, arch_hash), {})[label] = entry
    pairs = []
    for (device, arch_hash), entries in sorted(grouped.items()):
        for a, b in combinations([label for label in LABELS if label in entries], 2):
            first, second = entries[a], entries[b]
            ratio = second["median_ms"] / first["median_ms"]
            allowed = tolerance(first["rel_ci"], second["rel_ci"])
            pairs.append({
                "device": device, "arch_hash": arch_hash, "arch": arch_of.get(arch_hash, ""), "pair": f"{a} / {b}",
                "first_ms": first["median_ms"], "second_ms": second["median_ms"], "ratio": ratio,
                "first_rel_ci": first["rel_ci"], "second_rel_ci": second["rel_ci"],
                "tolerance": allowed, "within": abs(ratio - 1.0) <= allowed,
            })
    return pairs


def summarise_pairs(pairs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per device and kind of pair: how many, the median and extreme ratios, how many agree."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for p in pairs:
        out.setdefault(p["device"], {}).setdefault(p["pair"], []).append(p)
    for device, kinds in out.items():
        for kind, members in kinds.items():
            ratios = [m["ratio"] for m in members]
            kinds[kind] = {
                "pairs": len(members),
                "median_ratio": statistics.median(ratios),
                "min_ratio": min(ratios),
                "max_ratio": max(ratios),
                "max_tolerance": max(m["tolerance"] for m in members),
                "within": sum(m["within"] for m in members),
            }
    return out


def noise_floor(end: dict[tuple[str, str, str], dict[str, Any]]) -> dict[str, float]:
    """Per device, the largest slowest/fastest ratio between re-measurements of one model."""
    out: dict[str, float] = {}
    for (device, _, _), entry in end.items():
        repeats = entry["repeats_ms"]
        out[device] = max(out.get(device, 1.0), max(repeats) / min(repeats))
    return out


# ---------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    """The README block: one row per device and kind of pair, then the machine's load."""
    order = {f"{a} / {b}": i for i, (a, b) in enumerate(combinations(LABELS, 2))}
    rows = [
        (f"`{device}`", kind, s["pairs"], f"{s['median_ratio']:.3f}", f"{s['min_ratio']:.3f}-{s['max_ratio']:.3f}", f"{s['within']}/{s['pairs']}")
        for device, kinds in report["summary"].items()
        for kind, s in sorted(kinds.items(), key=lambda item: order.get(item[0], len(order)))
    ]
    run, end = report["load"]["run"], report["load"]["remeasure"]
    return tables.blocks(
        tables.table(["device", "pair", "models", "median ratio", "range", "agree (within max(10 %, own 95 % CI))"], rows),
        tables.paragraph(
            f"Ratios are second / first. Load average {run['load_average_before'][0]:.2f} before the run,",
            f"{end['load_average_after'][0]:.2f} after the re-measurement; other processes used",
            f"{run['other_processes_cores']:.2f} cores during the run and {end['other_processes_cores']:.2f} during the re-measurement.",
            "Largest spread between re-measurements of one model: "
            + ", ".join(f"`{d}` {v:.3f}x" for d, v in report["noise_floor"].items()) + ".",
        ),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="spec to run (a scratch copy is used)")
    parser.add_argument("--quick", action="store_true", help="CI size: the tests' tiny spec instead of --spec")
    parser.add_argument("--repeats", type=int, default=3, help="re-measurements of each model at the end (median kept)")
    parser.add_argument("--passes", type=int, default=None, help="set every device's `passes` option (default: the spec's)")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory to keep (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the nasflow run may take")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output; with --markdown, the report to render")
    tables.add_markdown_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.passes is not None and args.passes < 1:
        parser.error("--passes must be at least 1")
    return args


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from nasflow.registry import open_readonly
    from nasflow.spec import load_spec

    spec_path = scratch_spec(args.spec, work, args.quick, args.passes)
    spec = load_spec(spec_path).spec
    log(f"nasflow run {spec_path}")
    run_meter = LoadMeter()
    seconds = run_nasflow(spec_path, args.timeout)
    run_load = run_meter.result()
    log(f"run finished in {seconds:.0f} s")
    registry = open_readonly(spec.registry.path)
    run_id = spec.run_id()
    numbers, trained, artifacts = stage_numbers(registry, run_id)
    end_meter = LoadMeter()
    end = remeasure(spec, trained, artifacts, args.repeats)
    end_load = end_meter.result()
    arch_of = {c["arch_hash"]: c["arch"] for c in trained}
    pairs = compare({**numbers, **end}, arch_of)
    summary = summarise_pairs(pairs)
    return {
        "benchmark": "stage_consistency",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:])]),
        "machine": machine_info("torch", "onnxruntime", "prefect"),
        "settings": {
            "spec": "tests/specs.py tiny_spec_text" if args.quick else str(args.spec),
            "quick": args.quick,
            "repeats": args.repeats,
            "passes": args.passes,
            "devices": [d.name for d in spec.devices],
            "device_options": {d.name: d.options for d in spec.devices},
        },
        "target": {"tolerance": TOLERANCE, "rule": "|ratio - 1| <= max(tolerance, rel_ci_first + rel_ci_second)"},
        "run_id": run_id,
        "load": {"run": run_load, "remeasure": end_load},
        "models": {"checkpointed": len(trained), "artifacts": len(artifacts)},
        "stage_numbers": [{"device": d, "arch_hash": h, "label": label, **v} for (d, h, label), v in sorted({**numbers, **end}.items())],
        "pairs": pairs,
        "summary": summary,
        "noise_floor": noise_floor(end),
        "meets_target": all(p["within"] for p in pairs),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        return tables.print_markdown("stage_consistency", markdown, args.out)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        report = bench(args, args.work.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="nasflow-consistency-") as tmp:
            report = bench(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(markdown(report))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
