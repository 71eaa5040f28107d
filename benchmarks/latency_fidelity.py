"""Latency fidelity benchmark: how well LUT-sum and the calibrated LUT predictor match measurements.

For each device (default: torch-cpu, onnxruntime-cpu, litert at 1 thread; those not usable here
are listed with the reason and skipped):

1. **LUT build.** Every operator of the default search space (``LayerwiseOptions()``) at CIFAR-10
   geometry (3x32x32 input, 10 classes) is timed, as ``nasflow profile`` does: each operator
   ``--passes`` times, interleaved, the fastest median kept. The wall time is reported, and for
   litert the part spent converting to ``.tflite`` (a fresh conversion cache, so it is counted).
2. **Calibration.** ``--calibrate`` whole models spread over the space's LUT-latency range are
   measured the same way and the calibrated predictor is fitted on them (nasflow.predictors).
3. **Evaluation.** ``--archs`` distinct architectures drawn uniformly from the space (none of
   them a calibration model) are measured end to end (fastest of ``--passes``) and compared with
   both predictors: share within +-10 % of the measurement, RMSE, Kendall tau, mean relative error.
4. **Noise floor.** The evaluation architectures are measured a second time, independently; how
   well two measurements agree bounds what any predictor can show on this machine.

Every number comes from the device backends nasflow uses in a search, with their default timing
options (contention windows, ``min_seconds``) apart from the thread count. Results go to one JSON
file (default ``benchmarks/results/latency_fidelity.json``): per device, per predictor,
``within_10pct`` (share, 0-1), ``rmse_ms`` and ``kendall_tau``, plus every architecture's numbers.

Run from the repository root (litert needs ``scripts/setup-litert`` first)::

    .venv/bin/python benchmarks/latency_fidelity.py            # full size (about 25 minutes here)
    .venv/bin/python benchmarks/latency_fidelity.py --quick --devices torch-cpu --out /tmp/f.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nasflow.spaces.layerwise import LayerwiseOptions
from nasflow.lut import build_lut, lut_entries
from nasflow.plugins import get_plugins
from nasflow.predictors import (
    CalibratedLutPredictor,
    LutSumPredictor,
    calibration_archs,
    evaluate,
    measure_archs,
)
from nasflow.space import Arch, LayerwiseSpace, build_model, count_macs, format_arch

import tables  # benchmarks/tables.py: the README rendering
from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latency_fidelity.json"
DEFAULT_DEVICES = ("torch-cpu", "onnxruntime-cpu", "litert")
IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE = 3, 10, 32  # CIFAR-10
TARGETS = {"device": "litert", "predictor": "calibrated", "within_10pct_min": 0.95, "kendall_tau_min": 0.9}
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


def sample_archs(space: LayerwiseSpace, n: int, seed: int, exclude: set[str]) -> list[Arch]:
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


def timed_conversion(device, space: LayerwiseSpace) -> float:
    """Seconds to convert every LUT operator (litert's `prepare`; 0 for devices with nothing to prepare)."""
    ops = lut_entries(space, IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)
    start = time.perf_counter()
    device.prepare([(op.module(), op.input_shape) for op in ops])
    return time.perf_counter() - start


def bench_device(name: str, args: argparse.Namespace, space: LayerwiseSpace, work: Path) -> dict[str, Any]:
    plugins = get_plugins()
    options = device_options(name, args, work / f"{name}-tflite")
    device = plugins.create("device", name, options)
    geometry = (IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE)
    result: dict[str, Any] = {"options": options, "fingerprint": device.fingerprint()}

    log(f"{name}: building the LUT ({args.passes} passes)")
    start = time.perf_counter()
    conversion = timed_conversion(device, space)
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
    cal_archs = calibration_archs(space, lut_sum, n=args.calibrate, seed=args.seed)
    start = time.perf_counter()
    cal_measured = measure_archs(
        device, cal_archs, *geometry, progress=progress_printer("calibration"), passes=args.passes
    )
    calibrated = CalibratedLutPredictor(table, *geometry).fit(cal_archs, cal_measured)
    result["calibration"] = {
        "models": len(cal_archs),
        "seconds": time.perf_counter() - start,
        "fit": calibrated.fit_info,
        "coefficients": calibrated.coefficients,
    }

    archs = sample_archs(space, args.archs, args.seed + 1, {format_arch(a) for a in cal_archs})
    log(f"{name}: measuring {len(archs)} architectures end to end")
    start = time.perf_counter()
    measured = measure_archs(device, archs, *geometry, progress=progress_printer("evaluation"), passes=args.passes)
    result["evaluation_seconds"] = time.perf_counter() - start
    predictions = {"lut_sum": lut_sum.predict_many(archs), "calibrated": calibrated.predict_many(archs)}
    result["predictors"] = {kind: evaluate(pred, measured) for kind, pred in predictions.items()}

    if args.repeat:
        log(f"{name}: measuring them again (noise floor)")
        again = measure_archs(device, archs, *geometry, progress=progress_printer("repeat"), passes=args.passes)
        result["noise_floor"] = evaluate(again, measured)
    else:
        again = None

    # The runtime string of one real measurement: which runtime produced every number above.
    probe = device.measure_model(build_model(archs[0], IN_CHANNELS, NUM_CLASSES), (1, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE))
    result["runtime"] = probe.runtime
    result["latency_range_ms"] = [min(measured), max(measured)]
    result["architectures"] = [
        {
            "arch": format_arch(arch),
            "mmacs": count_macs(arch, IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE) / 1e6,
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


PREDICTOR_NAMES = {"lut_sum": "LUT-sum", "calibrated": "calibrated"}


def _device_label(name: str, device: dict[str, Any]) -> str:
    threads = device["options"].get("threads")
    return f"`{name}`" + (f" ({threads} thread{'s' if threads != 1 else ''})" if threads else "")


def markdown(report: dict) -> str:
    """The README's "Latency fidelity" block, from a report of this script."""
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
    return tables.blocks(*parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default=",".join(DEFAULT_DEVICES), help="comma-separated device names")
    parser.add_argument("--archs", type=int, default=120, help="architectures evaluated per device")
    parser.add_argument("--calibrate", type=int, default=16, help="whole models the calibrated predictor is fitted on")
    parser.add_argument("--passes", type=int, default=5, help="interleaved measurement passes; the fastest is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-repeat", dest="repeat", action="store_false", help="skip the noise-floor remeasurement")
    parser.add_argument("--min-seconds", type=float, default=None, help="override the devices' min_seconds")
    parser.add_argument("--quick", action="store_true", help="CI size: 8 architectures, 4 calibration models, 1 pass")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output; with --markdown, the report to render")
    tables.add_markdown_option(parser)
    args = parser.parse_args(argv)
    if args.markdown:
        return args
    args.device_names = [d.strip() for d in args.devices.split(",") if d.strip()]
    unknown = [d for d in args.device_names if d not in get_plugins().names("device")]
    if unknown:
        parser.error(f"unknown device(s): {', '.join(unknown)}; installed: {', '.join(get_plugins().names('device'))}")
    if args.quick:
        args.archs, args.calibrate, args.passes = 8, 4, 1
        args.min_seconds = 0.0 if args.min_seconds is None else args.min_seconds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        return tables.print_markdown("latency_fidelity", markdown, args.out)
    space = LayerwiseSpace(LayerwiseOptions())
    plugins = get_plugins()
    report: dict[str, Any] = {
        "benchmark": "latency_fidelity",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info("torch", "onnxruntime", "ai-edge-litert", "litert-torch"),
        "settings": {
            "space": "default LayerwiseOptions()",
            "space_size": space.size(),
            "input": [1, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE],
            "num_classes": NUM_CLASSES,
            "archs": args.archs,
            "calibration_models": args.calibrate,
            "passes": args.passes,
            "seed": args.seed,
            "quick": args.quick,
        },
        "targets": TARGETS,
        "anchor": ANCHOR,
        "devices": {},
        "skipped": {},
    }
    with tempfile.TemporaryDirectory(prefix="nasflow-fidelity-") as tmp:
        for name in args.device_names:
            info = plugins.get("device", name)
            reason = info.cls.unavailable_reason(plugins.options("device", name, {}))
            if reason is not None:
                log(f"{name}: skipped: {reason}")
                report["skipped"][name] = reason
                continue
            report["devices"][name] = bench_device(name, args, space, Path(tmp))
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
