"""Data memory benchmark: what holding a real-size image dataset costs in resident memory.

Loads all 60,000 CIFAR-10 images (the archive's `train` folder, 50,000, for training and
validation, and its `test` folder, 10,000, as the test split) and runs one proxy epoch on 10,000
training images, each measurement in a fresh process that reports its peak resident set size
(VmHWM from /proc/self/status, and getrusage's ru_maxrss):

* **cold**: an empty cache, so every JPEG is decoded into one preallocated uint8 array and the
  cache (a raw `.npy` file) is written;
* **warm**: the same dataset again, memory-mapped from that cache.

Each is paired with a **baseline** process that does exactly the same with a few hundred images
(same imports, same archive scan, same model and training loop), so the difference in peak
memory is what the decoded data costs. Target: at most 1.2x the pixels' uint8 size (184 MB for
60,000 32x32 RGB images), for both loads.

Run from the repository root::

    .venv/bin/python benchmarks/data_memory.py                   # full size (a few minutes)
    .venv/bin/python benchmarks/data_memory.py --images 600 --out /tmp/m.json   # CI size
    .venv/bin/python benchmarks/data_memory.py --markdown         # the README table, from the JSON

With fewer than 60,000 images (`--images N`), N images of the `train` folder are used and the
test split is carved from them (`dataset.test_split`); the JSON says which layout was used.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "data_memory.json"
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
FULL_IMAGES = 60_000  # both folders of the CIFAR-10 archive
TARGET_RATIO = 1.2
BATCH_SIZE = 64


# ---------------------------------------------------------------- one measurement (child process)


def _proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Load the dataset of `job`, train one proxy epoch, report memory and times (runs in a fresh process)."""
    import torch

    from nasflow.config import DatasetConfig, TrainConfig
    from nasflow.data import load_dataset
    from nasflow.space import build_model, parse_arch
    from nasflow.train import train_model

    torch.set_num_threads(1)
    snapshots = {"after imports": _proc_status()}
    cfg = DatasetConfig.model_validate(job["dataset"])
    start = time.perf_counter()
    dataset = load_dataset(cfg)
    load_seconds = time.perf_counter() - start
    snapshots["after load"] = _proc_status()
    torch.manual_seed(0)
    model = build_model(parse_arch(job["arch"]), dataset.in_channels, dataset.num_classes)
    train_size = dataset.size("train")
    share = min(1.0, job["epoch_images"] / train_size)
    start = time.perf_counter()
    result = train_model(model, dataset, TrainConfig(batch_size=BATCH_SIZE, epochs=1), epochs=1, subset=share, device="cpu")
    epoch_seconds = time.perf_counter() - start
    snapshots["after epoch"] = _proc_status()
    return {
        "images": sum(dataset.size(s) for s in ("train", "val", "test")),
        "splits": {s: dataset.size(s) for s in ("train", "val", "test")},
        "pixels_uint8_bytes": dataset.nbytes,
        "pixel_dtype": str(dataset.pixels["train"].dtype),
        "memory_mapped": type(dataset.pixels["train"]).__name__ == "memmap",
        "epoch_images": round(share * train_size),
        "val_accuracy": result.val_accuracy,
        "peak_rss_bytes": snapshots["after epoch"]["VmHWM"],
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "snapshots": snapshots,
        "load_seconds": load_seconds,
        "epoch_seconds": epoch_seconds,
    }


def run_fresh(job: dict[str, Any]) -> dict[str, Any]:
    """`measure(job)` in a new Python process, so no memory of an earlier measurement is counted."""
    env = dict(os.environ)
    import nasflow

    # The child imports the same nasflow as this process, whichever checkout that is.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(nasflow.__file__).parent.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"measurement {job['name']} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the benchmark


def dataset_settings(archive: Path, images: int, cache_dir: Path) -> tuple[dict[str, Any], str]:
    common = {"name": "image_folder", "path": str(archive), "cache_dir": str(cache_dir), "split": "train"}
    if images >= FULL_IMAGES:
        return {**common, "test": "test"}, "train folder (train + validation) and test folder (test split)"
    return {**common, "subset": images}, f"{images:,} images of the train folder, test split carved (test_split 0.2)"


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)
    from space_archs import smallest_middle_largest

    macs, arch = smallest_middle_largest()["middle"]
    with tempfile.TemporaryDirectory(prefix="nasflow-data-memory-") as scratch:
        cache = Path(scratch) / "cache"  # always empty at first: the cold load must decode
        full, layout = dataset_settings(args.archive, args.images, cache / "full")
        base, _ = dataset_settings(args.archive, args.baseline_images, cache / "baseline")
        jobs = {"arch": arch, "epoch_images": args.epoch_images}
        runs = {}
        # Cold first (an empty cache decodes), then warm (the cache just written is memory-mapped).
        for load in ("cold", "warm"):
            for kind, settings in (("dataset", full), ("baseline", base)):
                name = f"{load} {kind}"
                print(f"measuring: {name} ...", flush=True)
                runs[name] = run_fresh({**jobs, "name": name, "dataset": settings})
    results = []
    for load, what in (("cold", "decode every JPEG, write the cache"), ("warm", "memory-map the cache")):
        data, baseline = runs[f"{load} dataset"], runs[f"{load} baseline"]
        cost = data["peak_rss_bytes"] - baseline["peak_rss_bytes"]
        pixels = data["pixels_uint8_bytes"] - baseline["pixels_uint8_bytes"]
        ratio = cost / pixels
        results.append({
            "load": load, "what": what, "images": data["images"], "pixels_uint8_bytes": data["pixels_uint8_bytes"],
            "peak_rss_bytes": data["peak_rss_bytes"], "baseline_peak_rss_bytes": baseline["peak_rss_bytes"],
            "data_cost_bytes": cost, "data_cost_ratio": ratio, "meets_target": ratio <= TARGET_RATIO,
            "load_seconds": data["load_seconds"], "epoch_seconds": data["epoch_seconds"],
        })
    return {
        "benchmark": "data_memory",
        "machine": machine_info("torch", "numpy", "pillow"),
        "settings": {
            "archive": str(args.archive), "images": args.images, "layout": layout, "epoch_images": args.epoch_images,
            "baseline_images": base.get("subset"), "arch": arch, "arch_macs": macs, "batch_size": BATCH_SIZE,
            "torch_threads": 1, "device": "cpu",
        },
        "definitions": {
            "peak_rss_bytes": "VmHWM of the process after loading the dataset and one proxy epoch",
            "data_cost_bytes": "peak_rss_bytes minus the baseline process's (same work on baseline_images images)",
            "data_cost_ratio": "data_cost_bytes / (uint8 pixel bytes of the dataset minus the baseline's)",
        },
        "target": {"data_cost_ratio_max": TARGET_RATIO},
        "results": results,
        "runs": runs,
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The README's table for this benchmark, from its JSON report."""
    mb = lambda n: f"{n / 1e6:,.1f} MB"  # noqa: E731
    lines = [
        f"| load | images | uint8 pixels | peak RSS | baseline peak | data cost | ratio (target <= {TARGET_RATIO}) | load s | epoch s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        verdict = "met" if r["meets_target"] else "**not met**"
        lines.append(
            f"| {r['load']}: {r['what']} | {r['images']:,} | {mb(r['pixels_uint8_bytes'])} | {mb(r['peak_rss_bytes'])} "
            f"| {mb(r['baseline_peak_rss_bytes'])} | {mb(r['data_cost_bytes'])} | {r['data_cost_ratio']:.2f}x, {verdict} "
            f"| {r['load_seconds']:.1f} | {r['epoch_seconds']:.1f} |"
        )
    return "\n".join(lines)


def print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    print(f"{settings['layout']}; one proxy epoch on {settings['epoch_images']:,} images of {settings['arch']}")
    print(render_markdown(report))



def markdown(report: dict[str, Any]) -> str:
    """The README block, by the name benchmarks/tables.py looks for."""
    return render_markdown(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="CIFAR-10 JPEG archive (ImageFolder layout, train/ and test/)")
    parser.add_argument("--images", type=int, default=FULL_IMAGES, help="images loaded (default: all 60,000)")
    parser.add_argument("--epoch-images", type=int, default=10_000, help="training images in the proxy epoch (default 10,000)")
    parser.add_argument("--baseline-images", type=int, default=4000, help="images of the baseline process (default 4,000: enough for full training and evaluation batches)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (default benchmarks/results/data_memory.json)")
    parser.add_argument("--markdown", action="store_true", help="print the README table from the JSON report and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    if args.markdown:
        print(render_markdown(json.loads(args.out.read_text())))
        return 0
    if not args.archive.is_file():
        raise SystemExit(f"archive {args.archive} not found (pass --archive)")
    if args.baseline_images >= args.images:
        raise SystemExit("--baseline-images must be smaller than --images")
    report = run_benchmark(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
