"""int8 against float32: test accuracy, latency and size of deployed files, on CIFAR-10.

The setting (issue "What users take home"): one nasflow run, exactly as a user makes it, on
32x32 CIFAR-10 from `../shared/data/cifar10-jpeg.tar.gz` (`--images` stratified training images,
10 % of them for validation; the 10,000 test images for every accuracy reported):

- the models: the zoo's MobileNetV2-CIFAR at each of `--widths` (`train.archs`) and the best model
  of a short search in the `mnasnet` space (`mnasnet` strategy, `--search-budget` candidates,
  reward measured on litert; `--search-arch ARCH` trains that architecture instead), every one
  trained `--epochs` with one recipe;
- deploy: `onnx`, `onnx-int8`, `tflite` and `tflite-int8`, int8 calibrated on
  `--calibration-images` training images. `deploy.max_accuracy_drop` is 1.0 here, so that every
  int8 file passes verification and is timed whatever it loses; the drop is the finding;
- devices: `litert` (the mobile CPU runtime, XNNPACK) and `onnxruntime-cpu`, both at 1 thread.
  The deploy stage times each file on the device that runs its format, after all training.

Per model and int8 format the JSON has `accuracy_drop_points` (the float32 file's test accuracy
minus the int8 file's, in points, on the same runtime), `int8_speedup` (the float32 file's
measured median latency over the int8 file's) and the sizes; every number is read back from the
run's registry (`artifacts`, `measurements` with `source = measured`).

Resumable: the run lives in `--work` (registry, checkpoints, deployed files); running the script
again resumes it where it stopped, as `nasflow run` does.

Run from the repository root::

    .venv/bin/python benchmarks/quantization.py              # the setting (about 45 minutes)
    .venv/bin/python benchmarks/quantization.py --images 600 --epochs 1 --widths 0.35 \\
        --search-budget 2 --work /tmp/q --out /tmp/q.json     # a smoke run
    .venv/bin/python benchmarks/quantization.py --markdown   # the README table, from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import tables  # benchmarks/tables.py: the README rendering
from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)

NAME = "quantization"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / f"{NAME}.json"
DEFAULT_WORK = ROOT / ".cache" / NAME
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
ZOO = "zoo:mobilenet_v2_cifar"
# the int8 format, its float32 counterpart and the device that runs both
PAIRS = {"tflite-int8": ("tflite", "litert"), "onnx-int8": ("onnx", "onnxruntime-cpu")}
TARGET_DROP_POINTS = 1.0  # the target: at most 1 point lost to int8
ANCHOR = "MobileNetV3 paper: its int8 TFLite models lose 1.4 points of ImageNet top-1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- the run


def spec_of(args: argparse.Namespace) -> dict[str, Any]:
    """The nasflow spec of the setting, paths absolute (the run's files stay in `args.work`)."""
    work = args.work.resolve()
    searching = args.search_arch is None
    archs = [f"{ZOO}@{w}" for w in args.widths] + ([] if searching else [args.search_arch])
    return {
        "name": "quantization-bench",
        "dataset": {
            "name": "image_folder", "path": str(args.archive.resolve()), "split": "train", "test": "test",
            "subset": args.images, "val_split": 0.1, "seed": 0, "cache_dir": str(work / "data"),
        },
        "space": {"name": "mnasnet", "options": {"strides": "auto"}},
        "devices": [
            {"name": "litert", "options": {"threads": 1}},
            {"name": "onnxruntime-cpu", "options": {"threads": 1}},
        ],
        # MnasNet's hard constraint (no reward above the target, a steep cut below): the searched
        # model is one of the zoo models' size, not one that trains for hours
        "objectives": {"device": "litert", "reward": "mnasnet", "target_ms": args.target_ms,
                       "alpha": 0.0, "beta": -1.0},
        "search": {
            "enabled": searching, "strategy": "mnasnet", "budget": args.search_budget, "batch_size": 2,
            "proxy": {"epochs": 1, "subset": 0.3},
        },
        "train": {
            "top_k": 1, "archs": archs,
            "config": {"epochs": args.epochs, "batch_size": 64, "optimizer": "sgd", "lr": 0.05,
                       "label_smoothing": 0.1, "augment": True},
        },
        "morph": {"enabled": False},
        "deploy": {
            "formats": ["onnx", "onnx-int8", "tflite", "tflite-int8"],
            "options": {f: {"calibration_images": args.calibration_images} for f in PAIRS},
            "top_k": len(archs) + (1 if searching else 0),
            "max_accuracy_drop": 1.0,
            "out_dir": str(work / "deploy"),
        },
        "registry": {"path": str(work / "registry.duckdb")},
        "execution": {"runner": "process", "workers": 2, "seed": 0, "work_dir": str(work / "runs")},
    }


def run_nasflow(spec_path: Path) -> float:
    """`nasflow run SPEC` as a subprocess, its progress on this terminal; seconds it took."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "nasflow.cli", "run", str(spec_path)], cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"nasflow run {spec_path} failed ({result.returncode}); run this script again to resume")
    return time.monotonic() - start


# ---------------------------------------------------------------- reading the registry


def model_label(arch: str, widths: list[float]) -> str:
    """'MobileNetV2-CIFAR 0.35' for a zoo width, 'searched (mnasnet)' for the search's model."""
    from nasflow.arch import format_arch, resolve_arch

    for w in widths:
        if format_arch(resolve_arch(f"{ZOO}@{w}")) == arch:
            return f"MobileNetV2-CIFAR {w}"
    return "searched (mnasnet)"


def artifact_rows(registry, run_id: str) -> list[dict[str, Any]]:
    """Per deployed file: its model, format, accuracies, size and measured latency."""
    trained = {c["candidate_id"]: c for c in registry.get_candidates(run_id, stage="train", status="ok")}
    latency: dict[str, dict[str, Any]] = {}
    for m in registry.get_measurements(list(trained)):
        if m["artifact_id"] and m["metric"] == "latency" and m["source"] == "measured" and m["median_ms"] is not None:
            latency[m["artifact_id"]] = m
    rows = []
    for a in registry.get_artifacts(run_id):
        candidate = trained.get(a["candidate_id"])
        if candidate is None:
            continue
        m = latency.get(a["artifact_id"])
        rows.append({
            "candidate_id": a["candidate_id"], "arch": candidate["arch"], "macs": candidate["macs"],
            "params": candidate["params"], "format": a["format"], "verified": bool(a["verified"]),
            "accuracy": a["accuracy"], "reference_accuracy": a["reference_accuracy"],
            "top1_agreement": a["top1_agreement"], "size_bytes": a["size_bytes"],
            "device": m["device"] if m else None, "runtime": m["runtime"] if m else None,
            "latency_ms": m["median_ms"] if m else None, "latency_rel_ci": m["rel_ci"] if m else None,
            "latency_source": m["source"] if m else None,
        })
    return rows


def pairs_of(rows: list[dict[str, Any]], widths: list[float]) -> list[dict[str, Any]]:
    """Per model and int8 format: the int8 file against its float32 counterpart on the same runtime."""
    by_key = {(r["candidate_id"], r["format"]): r for r in rows}
    out = []
    for (candidate_id, fmt), q in by_key.items():
        if fmt not in PAIRS:
            continue
        f = by_key.get((candidate_id, PAIRS[fmt][0]))
        if f is None:
            continue
        both_timed = f["latency_ms"] is not None and q["latency_ms"] is not None
        both_scored = f["accuracy"] is not None and q["accuracy"] is not None
        out.append({
            "model": model_label(q["arch"], widths), "arch": q["arch"], "macs": q["macs"], "params": q["params"],
            "int8_format": fmt, "fp32_format": f["format"], "device": PAIRS[fmt][1], "runtime": q["runtime"],
            "pytorch_test_accuracy": q["reference_accuracy"],
            "fp32_test_accuracy": f["accuracy"], "int8_test_accuracy": q["accuracy"],
            "accuracy_drop_points": 100 * (f["accuracy"] - q["accuracy"]) if both_scored else None,
            "top1_agreement": q["top1_agreement"],
            "fp32_latency_ms": f["latency_ms"], "int8_latency_ms": q["latency_ms"], "latency_source": "measured",
            "int8_speedup": f["latency_ms"] / q["latency_ms"] if both_timed else None,
            "fp32_size_bytes": f["size_bytes"], "int8_size_bytes": q["size_bytes"],
            "size_ratio": f["size_bytes"] / q["size_bytes"],
        })
    return sorted(out, key=lambda p: (p["macs"], p["int8_format"]))


def summary_of(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    drops = [p["accuracy_drop_points"] for p in pairs if p["accuracy_drop_points"] is not None]
    litert = [p["int8_speedup"] for p in pairs if p["int8_format"] == "tflite-int8" and p["int8_speedup"]]
    ort = [p["int8_speedup"] for p in pairs if p["int8_format"] == "onnx-int8" and p["int8_speedup"]]
    return {
        "max_accuracy_drop_points": max(drops) if drops else None,
        "mean_accuracy_drop_points": sum(drops) / len(drops) if drops else None,
        # accuracies are image counts over the test split: a drop of exactly 1 point must not miss by 1e-15
        "drop_target_met": bool(drops) and max(drops) <= TARGET_DROP_POINTS + 1e-9,
        "litert_int8_speedup": {"min": min(litert), "max": max(litert)} if litert else None,
        "onnxruntime_int8_speedup": {"min": min(ort), "max": max(ort)} if ort else None,
    }


# ---------------------------------------------------------------- the README


def markdown(report: dict[str, Any]) -> str:
    s = report["setting"]
    header = ["model", "MMACs", "format", "runtime (1 thread)", "fp32 test acc", "int8 test acc", "drop (points)",
              "top-1 agreement", "fp32 ms", "int8 ms", "int8 speedup", "fp32 / int8 size"]
    rows = []
    for p in report["pairs"]:
        rows.append([
            p["model"], tables.number(p["macs"] / 1e6, 1), p["int8_format"], p["device"],
            tables.percent(p["fp32_test_accuracy"]), tables.percent(p["int8_test_accuracy"]),
            f"{p['accuracy_drop_points']:+.2f}", tables.percent(p["top1_agreement"]),
            tables.significant(p["fp32_latency_ms"]), tables.significant(p["int8_latency_ms"]),
            f"{p['int8_speedup']:.2f}x", f"{tables.number(p['fp32_size_bytes'] / 1e3, 0)} / "
            f"{tables.number(p['int8_size_bytes'] / 1e3, 0)} kB",
        ])
    summary = report["summary"]
    verdict = "met" if summary["drop_target_met"] else "missed"
    litert = summary["litert_int8_speedup"]
    ort = summary["onnxruntime_int8_speedup"]
    return tables.blocks(
        tables.table(header, rows),
        tables.paragraph(
            f"CIFAR-10 at 32x32, {s['images']:,} training images (10 % for validation), {s['epochs']} epochs,",
            f"int8 calibrated on {s['calibration_images']} training images; accuracy on the official test split,",
            "latency `measured` (median) on this machine's CPU by the deploy stage of one `nasflow run`.",
            f"Largest drop {summary['max_accuracy_drop_points']:+.2f} points (target at most {TARGET_DROP_POINTS:g}: {verdict};",
            f"{ANCHOR}).",
            f"int8 speedup on litert {litert['min']:.2f}x to {litert['max']:.2f}x" if litert else "",
            f"and on ONNX Runtime {ort['min']:.2f}x to {ort['max']:.2f}x." if ort else "",
            f"`{report['command']}` ({report['run_seconds'] / 60:.0f} min in its last invocation).",
        ),
    )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--images", type=int, default=5000, help="stratified CIFAR-10 training images (10 %% validation)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.35, 0.5], help="MobileNetV2-CIFAR width multipliers")
    parser.add_argument("--search-budget", type=int, default=8, help="candidates the mnasnet search evaluates")
    parser.add_argument("--search-arch", help="train this architecture (string or zoo name) instead of searching")
    parser.add_argument("--target-ms", type=float, default=0.5, help="the search's litert latency target")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="the run's folder (registry, checkpoints, files)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    tables.add_markdown_option(parser)
    args = parser.parse_args(argv)
    if args.markdown:
        return tables.print_markdown(NAME, markdown, args.out)
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: this benchmark needs the CIFAR-10 JPEG archive (../shared/data)")

    from nasflow.registry import open_readonly
    from nasflow.spec import load_spec

    args.work.mkdir(parents=True, exist_ok=True)
    spec_path = args.work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_of(args), sort_keys=False))
    log(f"nasflow run {spec_path}")
    seconds = run_nasflow(spec_path)  # this invocation's: a resumed run counts only its last part
    spec = load_spec(spec_path).spec
    rows = artifact_rows(open_readonly(spec.registry.path), spec.run_id())
    pairs = pairs_of(rows, args.widths)
    if not pairs:
        raise SystemExit("the run deployed no int8 file next to its float32 one: see its `nasflow report`")
    command = " ".join(["python benchmarks/quantization.py", *(sys.argv[1:] if argv is None else argv)])
    report = {
        "benchmark": NAME,
        "setting": {
            "images": args.images, "epochs": args.epochs, "widths": args.widths, "search_budget": args.search_budget,
            "search_arch": args.search_arch, "target_ms": args.target_ms, "calibration_images": args.calibration_images,
            "threads": 1,
        },
        "target": {"max_accuracy_drop_points": TARGET_DROP_POINTS, "anchor": ANCHOR},
        "run_id": spec.run_id(), "run_seconds": seconds, "command": command,
        "pairs": pairs, "artifacts": rows, "summary": summary_of(pairs),
        "machine": machine_info("torch", "onnxruntime", "ai-edge-litert", "litert-torch"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
