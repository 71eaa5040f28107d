"""Latency fidelity benchmark: how well LUT-sum and the calibrated LUT predictor match measurements.

For each device (default: torch-cpu, onnxruntime-cpu, litert at 1 thread; those not usable here
are listed with the reason and skipped), on one setting: a registered search space
(``--space``, default ``layerwise``; ``--space-options`` a JSON object of its options) at one
input size (``--image-size``, default CIFAR-10's 32x32, 3 channels, 10 classes), optionally
under a background load this script generates (``--background N``):

1. **LUT build.** Every operator of the space is timed, as ``nasflow profile`` does: each
   ``--passes`` times, interleaved, the fastest median kept (operators whose passes disagree get
   more). The wall time is reported, and for litert the part spent converting to ``.tflite``.
2. **Calibration.** ``--calibrate`` whole models spread over the space's LUT-latency range are
   measured and the calibrated predictor is fitted on them with ``nasflow.predictors.calibrate``
   (its disturbance checks included; the chosen form and the checks go to the JSON).
3. **Evaluation.** ``--archs`` distinct architectures drawn uniformly from the space (none of
   them a calibration model) are measured end to end (fastest of ``--passes``, more where the
   passes disagree, as for the LUT) and compared with both predictors: share within +-10 % of
   the measurement, RMSE, Kendall tau, mean relative error.
4. **Noise floor.** The evaluation architectures are measured a second time, independently; how
   well two measurements agree bounds what any predictor can show on this machine.

``--background N`` starts N processes that each keep one core busy in irregular bursts (busy
and idle spells each drawn uniformly from 0.05-1.5 s, seeded), for the whole run. The machine's
load average is sampled every 10 s during the run and reported with the results either way.

Every number comes from the device backends nasflow uses in a search, with their default timing
options (per-call clock, contention windows, ``min_seconds``) apart from the thread count.
Results go to one JSON file per setting: ``benchmarks/results/latency_fidelity.json`` for the
default setting, ``latency_fidelity_<setting>.json`` for any other (``--setting`` names it;
by default the space's name, then ``_<size>`` for a size other than 32 and ``_background``):
per device, per predictor, ``within_10pct`` (share, 0-1), ``rmse_ms`` and ``kendall_tau``, plus
every architecture's numbers.

Run from the repository root (litert needs ``scripts/setup-litert`` first)::

    .venv/bin/python benchmarks/latency_fidelity.py            # full size (about 25 minutes here)
    .venv/bin/python benchmarks/latency_fidelity.py --space mnasnet --devices litert
    .venv/bin/python benchmarks/latency_fidelity.py --quick --devices torch-cpu --out /tmp/f.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from nasflow.config import SpaceRef
from nasflow.errors import NasflowError
from nasflow.lut import build_lut, lut_entries
from nasflow.plugin_api import Geometry, SearchSpace
from nasflow.plugins import get_plugins
from nasflow.predictors import LutSumPredictor, calibrate, evaluate, measure_archs
from nasflow.space import Arch, build_model, count_macs, format_arch
from nasflow.spaces import make_space

import tables  # benchmarks/tables.py: the README rendering
from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUT = RESULTS / "latency_fidelity.json"
DEFAULT_DEVICES = ("torch-cpu", "onnxruntime-cpu", "litert")
IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE = 3, 10, 32  # CIFAR-10 geometry; --image-size changes the size
BURST_SECONDS = (0.05, 1.5)  # --background: each busy and each idle spell, uniform in this range
LOAD_SAMPLE_SECONDS = 10.0
BURST_CODE = """
import random, sys, time
rng, (low, high) = random.Random(int(sys.argv[1])), map(float, sys.argv[2:4])
while True:
    end = time.monotonic() + rng.uniform(low, high)
    while time.monotonic() < end:
        pass
    time.sleep(rng.uniform(low, high))
"""
TARGETS = {"device": "litert", "predictor": "calibrated", "within_10pct_min": 0.95, "kendall_tau_min": 0.9}
NOISE_FLOOR_TARGET = 0.97  # two measurements of the same models within +-10 % of each other
ANCHOR = "nn-Meter: 99.0 % of models within +-10 % on a mobile CPU (TFLite)"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def progress_printer(label: str, every: float = 30.0):
    """A progress callback that prints at most every `every` seconds, and at the end."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= every:
            last[0] = now
            log(f"  {label}: {done}/{total}")

    return report


def sample_archs(space: SearchSpace, n: int, seed: int, exclude: set[str]) -> list[Arch]:
    """`n` distinct architectures drawn uniformly at random, none of them in `exclude`."""
    rng = random.Random(seed)
    seen: dict[str, Arch] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 1000 * n:
            raise SystemExit(f"the space has fewer than {n} architectures outside the calibration set")
        arch = space.to_arch(space.sample(rng))
        text = format_arch(arch)
        if text not in exclude:
            seen.setdefault(text, arch)
    return list(seen.values())


def device_options(name: str, args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    options: dict[str, Any] = {"threads": 1}
    if name == "litert":
        options["cache_dir"] = str(cache_dir)
    if args.min_seconds is not None:
        options["min_seconds"] = args.min_seconds
    return options


def timed_conversion(device, space: SearchSpace, geometry: tuple[int, int, int]) -> float:
    """Seconds to convert every LUT operator (litert's `prepare`; 0 for devices with nothing to prepare)."""
    ops = lut_entries(space, *geometry)
    start = time.perf_counter()
    device.prepare([(op.module(), op.input_shape) for op in ops])
    return time.perf_counter() - start


def bench_device(
    name: str, args: argparse.Namespace, space: SearchSpace, work: Path, geometry: tuple[int, int, int]
) -> dict[str, Any]:
    plugins = get_plugins()
    options = device_options(name, args, work / f"{name}-tflite")
    device = plugins.create("device", name, options)
    result: dict[str, Any] = {"options": options, "fingerprint": device.fingerprint()}

    log(f"{name}: building the LUT ({args.passes} passes)")
    start = time.perf_counter()
    conversion = timed_conversion(device, space, geometry)
    rows = build_lut(device, space, *geometry, progress=progress_printer("LUT timings"), passes=args.passes)
    lut_seconds = time.perf_counter() - start
    table = {(r["op_key"], r["input_shape"]): r["median_ms"] for r in rows}
    result["lut"] = {
        "entries": len(rows),
        "build_seconds": lut_seconds,
        "conversion_seconds": conversion,
        "timing_seconds": lut_seconds - conversion,
    }
    lut_sum = LutSumPredictor(table, *geometry)

    log(f"{name}: measuring {args.calibrate} calibration models")
    start = time.perf_counter()
    calibrated, cal_archs, _ = calibrate(
        device, space, table, *geometry, n=args.calibrate, seed=args.seed,
        progress=progress_printer("calibration"), passes=args.passes,
    )
    result["calibration"] = {
        "models": len(cal_archs),
        "seconds": time.perf_counter() - start,
        "form": calibrated.fit_info["form"],
        "fit": calibrated.fit_info,
        "coefficients": calibrated.coefficients,
    }

    archs = sample_archs(space, args.archs, args.seed + 1, {format_arch(a) for a in cal_archs})
    log(f"{name}: measuring {len(archs)} architectures end to end")
    start = time.perf_counter()
    measured = measure_archs(
        device, archs, *geometry, progress=progress_printer("evaluation"), passes=args.passes, retries=args.passes
    )
    result["evaluation_seconds"] = time.perf_counter() - start
    result["seconds_per_model"] = result["evaluation_seconds"] / len(archs)
    predictions = {"lut_sum": lut_sum.predict_many(archs), "calibrated": calibrated.predict_many(archs)}
    result["predictors"] = {kind: evaluate(pred, measured) for kind, pred in predictions.items()}

    if args.repeat:
        log(f"{name}: measuring them again (noise floor)")
        start = time.perf_counter()
        again = measure_archs(
            device, archs, *geometry, progress=progress_printer("repeat"), passes=args.passes, retries=args.passes
        )
        result["noise_floor"] = evaluate(again, measured)
        result["repeat_seconds_per_model"] = (time.perf_counter() - start) / len(archs)  # nothing left to convert
    else:
        again = None

    # The runtime string of one real measurement: which runtime produced every number above.
    in_channels, num_classes, size = geometry
    probe = device.measure_model(build_model(archs[0], in_channels, num_classes), (1, in_channels, size, size))
    result["runtime"] = probe.runtime
    result["latency_range_ms"] = [min(measured), max(measured)]
    result["architectures"] = [
        {
            "arch": format_arch(arch),
            "mmacs": count_macs(arch, *geometry) / 1e6,
            "measured_ms": m,
            "measured_again_ms": None if again is None else again[i],
            "lut_sum_ms": predictions["lut_sum"][i],
            "calibrated_ms": predictions["calibrated"][i],
        }
        for i, (arch, m) in enumerate(zip(archs, measured))
    ]
    for kind, metrics in result["predictors"].items():
        log(
            f"{name}: {kind:10s} within 10 %: {metrics['within_10pct']:.0%}  RMSE {metrics['rmse_ms']:.4f} ms  "
            f"Kendall tau {metrics['kendall_tau']:.3f}"
        )
    return result


class Background:
    """`processes` bursty CPU hogs (see BURST_CODE) and a load-average sampler, for a `with` block."""

    def __init__(self, processes: int, seed: int):
        self.processes, self.seed = processes, seed
        self.children: list[subprocess.Popen] = []
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(LOAD_SAMPLE_SECONDS):
                return

    def __enter__(self) -> "Background":
        low, high = BURST_SECONDS
        for i in range(self.processes):
            cmd = [sys.executable, "-c", BURST_CODE, str(self.seed + i), str(low), str(high)]
            self.children.append(subprocess.Popen(cmd))
        self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sampler.join()
        for child in self.children:
            child.kill()
            child.wait()

    def report(self) -> dict[str, Any]:
        return {
            "background_processes": self.processes,
            "burst_seconds": list(BURST_SECONDS),
            "loadavg_1min_mean": sum(self.samples) / len(self.samples),
            "loadavg_1min_max": max(self.samples),
            "loadavg_samples": len(self.samples),
            "sample_seconds": LOAD_SAMPLE_SECONDS,
        }


PREDICTOR_NAMES = {"lut_sum": "LUT-sum", "calibrated": "calibrated"}


def _device_label(name: str, device: dict[str, Any]) -> str:
    threads = device["options"].get("threads")
    return f"`{name}`" + (f" ({threads} thread{'s' if threads != 1 else ''})" if threads else "")


def markdown(report: dict, settings_reports: dict[str, dict] | None = None) -> str:
    """The README's "Latency fidelity" block: the default setting's report, then a table of the
    other settings (`settings_reports`, default: every committed `latency_fidelity_<setting>.json`)."""
    m, settings, targets, devices = report["machine"], report["settings"], report["targets"], report["devices"]
    versions = [f"{dist} {m[dist]}" for dist in ("torch", "onnxruntime", "ai-edge-litert", "litert-torch") if m.get(dist)]
    if "litert" in devices and "XNNPACK" in devices["litert"]["runtime"]:
        versions = [v + " with XNNPACK" if v.startswith("ai-edge-litert") else v for v in versions]
    parts = [tables.paragraph(
        f"{settings['archs']} architectures per device, {settings['calibration_models']} calibration models,",
        f"fastest of {settings['passes']} passes; {m['cpu_model']}, {m['logical_cores']} cores, {', '.join(versions)}:",
    )]
    rows = []
    for name in sorted(devices):
        d = devices[name]
        low, high = d["latency_range_ms"]
        entries = [(PREDICTOR_NAMES[k], d["predictors"][k]) for k in ("lut_sum", "calibrated")]
        if "noise_floor" in d:
            entries.append(("noise floor", d["noise_floor"]))
        for i, (label, metric) in enumerate(entries):
            cells = [label, tables.percent(metric["within_10pct"]), f"{metric['rmse_ms']:.4f} ms", f"{metric['kendall_tau']:.3f}"]
            if name == targets["device"] and label == PREDICTOR_NAMES[targets["predictor"]]:
                cells = [f"**{c}**" for c in cells]
            first = [_device_label(name, d), f"{tables.significant(low)}-{tables.significant(high)} ms"] if i == 0 else ["", ""]
            rows.append(first + cells)
    parts.append(tables.table(["device", "measured range", "predictor", "within +-10 %", "RMSE", "Kendall tau"], rows))
    target = devices.get(targets["device"])
    sentences = []
    if target is not None:
        metric = target["predictors"][targets["predictor"]]
        sentences.append(
            f"Target ({targets['device']}, {targets['predictor']} predictor): at least {tables.percent(targets['within_10pct_min'], 0)}"
            f" within +-10 % and Kendall tau at least {targets['kendall_tau_min']}:"
            f" **{'met' if report['meets_target'] else 'not met'}** ({tables.percent(metric['within_10pct'])}, {metric['kendall_tau']:.3f})"
            + (f"; the noise floor is {tables.percent(target['noise_floor']['within_10pct'])}, {target['noise_floor']['kendall_tau']:.3f}."
               if "noise_floor" in target else ".")
        )
    sentences.append(f"For comparison, {report['anchor']}.")
    if "litert" in devices:
        d = devices["litert"]
        lut, cal = d["predictors"]["lut_sum"], d["predictors"]["calibrated"]
        sentences.append(
            f"On litert LUT-sum ranks models with Kendall tau {lut['kendall_tau']:.3f} (calibrated: {cal['kendall_tau']:.3f}),"
            f" but its mean relative error is {tables.percent(lut['mape'])}, so {tables.percent(lut['within_10pct'])} are within 10 %;"
            f" the calibration's fitted constant is {1000 * d['calibration']['coefficients']['overhead']:+.1f} microseconds."
        )
    if "onnxruntime-cpu" in devices:
        d = devices["onnxruntime-cpu"]
        lut, cal = d["predictors"]["lut_sum"], d["predictors"]["calibrated"]
        floor = f" against a noise floor of {tables.percent(d['noise_floor']['within_10pct'])}" if "noise_floor" in d else ""
        sentences.append(
            "On onnxruntime the plain sum counts the runtime's per-call cost (the empty operator's"
            f" {1000 * d['calibration']['fit']['null_ms']:.0f} microseconds) once per operator and is"
            f" {tables.percent(lut['mape'], 0)} too high on average; calibrated, {tables.percent(cal['within_10pct'])} are"
            f" within 10 %{floor}."
        )
    if "torch-cpu" in devices and "noise_floor" in devices["torch-cpu"]:
        d = devices["torch-cpu"]
        low, high = d["latency_range_ms"]
        sentences.append(
            f"Eager PyTorch spans {tables.significant(low)}-{tables.significant(high)} ms across the space, and"
            f" measurement noise caps the rank agreement (noise floor tau {d['noise_floor']['kendall_tau']:.3f})."
        )
    parts.append(tables.paragraph(*sentences))
    lut_rows = []
    for name in sorted(devices):
        lut = devices[name]["lut"]
        conversion = lut["conversion_seconds"]
        lut_rows.append([
            f"`{name}`", lut["entries"], f"{lut['build_seconds']:.0f} s",
            f"{conversion:.0f} s" if conversion >= 0.5 else "-", f"{lut['timing_seconds']:.0f} s",
            f"{devices[name]['evaluation_seconds']:.0f} s",
        ])
    parts.append(f"Time spent ({settings['passes']} passes per LUT operator; litert converts in worker processes, one per core):")
    parts.append(tables.table(
        ["device", "LUT operators", "LUT build", "of which converting", "of which timing",
         f"measuring the {settings['archs']} architectures"],
        lut_rows,
    ))
    others = tables.setting_reports("latency_fidelity") if settings_reports is None else settings_reports
    if others:
        parts.append(settings_markdown(others))
    return tables.blocks(*parts)


def _cell(metric: dict[str, float]) -> str:
    return f"{tables.percent(metric['within_10pct'])}, {metric['kendall_tau']:.2f}, {tables.percent(metric['mape'])}"


def settings_markdown(reports: dict[str, dict]) -> str:
    """The table of every other setting (`latency_fidelity_<setting>.json`) and where targets are missed."""
    rows, missed = [], []
    for setting, report in sorted(reports.items()):
        s, load, targets = report["settings"], report["load"], report["targets"]
        size = "x".join(str(n) for n in s["input"][2:])
        for name in sorted(report["devices"]):
            d = report["devices"][name]
            low, high = d["latency_range_ms"]
            lut, cal = d["predictors"]["lut_sum"], d["predictors"]["calibrated"]
            floor = d.get("noise_floor")
            rows.append([
                f"`{setting}`", f"`{s['space']}` ({s['space_size']:,}), {size}", _device_label(name, d),
                f"{tables.significant(low)}-{tables.significant(high)} ms", _cell(lut),
                f"{_cell(cal)} ({d['calibration']['form']})", _cell(floor) if floor else "-",
                f"{d['lut']['entries']}, {d['lut']['build_seconds']:.0f} s",
                f"{d['seconds_per_model']:.1f} s" + (f" ({d['repeat_seconds_per_model']:.1f} s)" if "repeat_seconds_per_model" in d else ""),
                f"{s['background_processes']}; {load['loadavg_1min_mean']:.1f} (max {load['loadavg_1min_max']:.1f})",
            ])
            better = max(lut["within_10pct"], cal["within_10pct"])
            if name == targets["device"] and (
                better < targets["within_10pct_min"] or max(lut["kendall_tau"], cal["kendall_tau"]) < targets["kendall_tau_min"]
            ):
                missed.append(
                    f"`{setting}` on {name}: the better predictor has {tables.percent(better)} within +-10 %"
                    f" (target {tables.percent(targets['within_10pct_min'], 0)}) and Kendall tau"
                    f" {max(lut['kendall_tau'], cal['kendall_tau']):.2f} (target {targets['kendall_tau_min']})"
                )
            if floor and floor["within_10pct"] < NOISE_FLOOR_TARGET:
                missed.append(
                    f"`{setting}` on {name}: the noise floor is {tables.percent(floor['within_10pct'])} within +-10 %"
                    f" (target {tables.percent(NOISE_FLOOR_TARGET, 0)})"
                )
    text = ["Other settings (one JSON each, `benchmarks/results/latency_fidelity_<setting>.json`; cells: share within"
            " +-10 % of the measurement, Kendall tau, mean relative error; the calibrated predictor's chosen form in brackets; time per"
            " evaluated model: its passes, export or conversion included, and in brackets the repeat's, where nothing"
            " is left to convert; load average: the machine's 1-minute load average over the run, mean and max):",
            tables.table(
                ["setting", "space (size), input", "device", "measured range", "LUT-sum", "calibrated (form)",
                 "noise floor", "LUT operators, build", "time per evaluated model (repeat)", "background hogs; load average"],
                rows,
            )]
    if missed:
        text.append(tables.paragraph("Targets missed: " + "; ".join(missed) + "."))
    return tables.blocks(*text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default=",".join(DEFAULT_DEVICES), help="comma-separated device names")
    parser.add_argument("--space", default=None, help="registered search space (default: layerwise)")
    parser.add_argument("--space-options", default=None, help="the space's options as a JSON object")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="input height and width (3 channels, 10 classes)")
    parser.add_argument("--background", type=int, default=0, metavar="N", help="bursty CPU hogs to run meanwhile")
    parser.add_argument("--setting", default=None, help="name of this setting: the JSON is latency_fidelity_<setting>.json")
    parser.add_argument("--archs", type=int, default=120, help="architectures evaluated per device")
    parser.add_argument("--calibrate", type=int, default=16, help="whole models the calibrated predictor is fitted on")
    parser.add_argument("--passes", type=int, default=5, help="interleaved measurement passes; the fastest is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-repeat", dest="repeat", action="store_false", help="skip the noise-floor remeasurement")
    parser.add_argument("--min-seconds", type=float, default=None, help="override the devices' min_seconds")
    parser.add_argument("--quick", action="store_true", help="CI size: 8 architectures, 4 calibration models, 1 pass")
    parser.add_argument("--out", type=Path, default=None, help="JSON output; with --markdown, the report to render")
    tables.add_markdown_option(parser)
    args = parser.parse_args(argv)
    if args.markdown:
        args.out = args.out or DEFAULT_OUT
        return args
    plugins = get_plugins()
    args.device_names = [d.strip() for d in args.devices.split(",") if d.strip()]
    unknown = [d for d in args.device_names if d not in plugins.names("device")]
    if unknown:
        parser.error(f"unknown device(s): {', '.join(unknown)}; installed: {', '.join(plugins.names('device'))}")
    if args.space is not None and args.space not in plugins.names("space"):
        parser.error(f"unknown space {args.space!r}; registered: {', '.join(plugins.names('space'))}")
    try:
        args.space_options_dict = json.loads(args.space_options) if args.space_options else {}
    except json.JSONDecodeError as exc:
        parser.error(f"--space-options is not JSON: {exc}")
    if not isinstance(args.space_options_dict, dict):
        parser.error("--space-options must be a JSON object")
    if args.image_size < 8:
        parser.error(f"--image-size must be at least 8, got {args.image_size}")
    if args.background < 0:
        parser.error(f"--background must be 0 or more, got {args.background}")
    if args.setting is not None and not args.setting.replace("-", "").replace("_", "").isalnum():
        parser.error(f"--setting must be letters, digits, - and _, got {args.setting!r}")
    if args.space_options and args.setting is None and args.out is None:
        parser.error("with --space-options, name the setting with --setting (or give --out)")
    args.setting = args.setting or default_setting(args)
    args.out = args.out or (RESULTS / (f"latency_fidelity_{args.setting}.json" if args.setting else "latency_fidelity.json"))
    if args.quick:
        args.archs, args.calibrate, args.passes = 8, 4, 1
        args.min_seconds = 0.0 if args.min_seconds is None else args.min_seconds
    return args


def default_setting(args: argparse.Namespace) -> str | None:
    """None for the default setting (the plain file name), else space, size and load in words."""
    if args.space is None and args.image_size == IMAGE_SIZE and not args.background:
        return None
    name = args.space or "layerwise"
    if args.image_size != IMAGE_SIZE:
        name += f"_{args.image_size}"
    return name + ("_background" if args.background else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        return tables.print_markdown("latency_fidelity", markdown, args.out)
    geometry = (IN_CHANNELS, NUM_CLASSES, args.image_size)
    space_name = args.space or "layerwise"
    try:
        space = make_space(SpaceRef(name=space_name, options=args.space_options_dict), Geometry(*geometry))
    except (NasflowError, ValueError) as exc:
        raise SystemExit(f"latency_fidelity: space {space_name!r}: {str(exc).splitlines()[0]}")
    plugins = get_plugins()
    report: dict[str, Any] = {
        "benchmark": "latency_fidelity",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info("torch", "onnxruntime", "ai-edge-litert", "litert-torch"),
        "settings": {
            "setting": args.setting or "default",
            "space": space_name,
            "space_options": space.options.model_dump(mode="json"),
            "space_size": space.size(),
            "input": [1, IN_CHANNELS, args.image_size, args.image_size],
            "num_classes": NUM_CLASSES,
            "archs": args.archs,
            "calibration_models": args.calibrate,
            "passes": args.passes,
            "background_processes": args.background,
            "seed": args.seed,
            "quick": args.quick,
        },
        "targets": TARGETS,
        "anchor": ANCHOR,
        "devices": {},
        "skipped": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nasflow-fidelity-") as tmp, Background(args.background, args.seed) as load:
        for name in args.device_names:
            info = plugins.get("device", name)
            reason = info.cls.unavailable_reason(plugins.options("device", name, {}))
            if reason is not None:
                log(f"{name}: skipped: {reason}")
                report["skipped"][name] = reason
                continue
            report["devices"][name] = bench_device(name, args, space, Path(tmp), geometry)
    report["load"] = load.report()
    report["seconds"] = time.perf_counter() - started
    target_device = report["devices"].get(TARGETS["device"])
    if target_device is not None:
        metrics = target_device["predictors"][TARGETS["predictor"]]
        report["meets_target"] = bool(
            metrics["within_10pct"] >= TARGETS["within_10pct_min"] and metrics["kendall_tau"] >= TARGETS["kendall_tau_min"]
        )
    else:
        report["meets_target"] = None  # the target device was not available
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
