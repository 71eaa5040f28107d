"""Training throughput benchmark: images per second of proxy training, CPU vs GPU (with and without amp).

Three architectures of the default search space (`LayerwiseSpace(LayerwiseOptions())`: the smallest,
the median and the largest by MACs at CIFAR-10 geometry, 3x32x32 and 10 classes) are trained
with `nasflow.train.train_model`, the function proxy and full training use, on real CIFAR-10
images from `../shared/data/cifar10-jpeg.tar.gz` when it is there and on random uint8 images of
that shape otherwise (the JSON says which). The first epoch warms up (allocator, cuDNN
autotuning); the following epochs are timed from the end of one epoch to the end of the next
(each ends with a device sync), so the figure is training alone, without the final evaluation.
CPU always; `cuda` in float32 and with `execution.amp` when a GPU is present.

Run from the repository root::

    .venv/bin/python benchmarks/train_throughput.py                     # full size
    .venv/bin/python benchmarks/train_throughput.py --images 256 --epochs 2 --out /tmp/t.json   # CI size
    .venv/bin/python benchmarks/train_throughput.py --markdown           # the README table, from the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_throughput.json"
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
ROLES = ("smallest", "middle", "largest")


def cifar_like_dataset(images: int, archive: Path, cache_dir: Path):
    """(Dataset, description): real CIFAR-10 training images when the archive exists, else random ones."""
    from nasflow.config import DatasetConfig
    from nasflow.data import Dataset, load_dataset

    if archive.is_file():
        cfg = DatasetConfig(
            name="image_folder", path=archive, split="train", subset=images, cache_dir=cache_dir,
            val_split=0.05, test_split=0.05,
        )
        return load_dataset(cfg), f"CIFAR-10 JPEG ({archive.name}), {images:,} training-folder images"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, images).astype(np.int64)
    val = max(1, images // 20)
    rows = {"train": np.arange(val, images), "val": np.arange(val), "test": np.arange(val)}
    dataset = Dataset(
        name="random", num_classes=10, class_names=[str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.29,) * 3,
        pixels={s: pixels for s in rows}, rows=rows, labels={s: labels[r] for s, r in rows.items()},
    )
    return dataset, f"random uint8 tensors of CIFAR-10 shape (3x32x32, 10 classes), {images:,} images (archive not found)"


def time_training(arch: str, dataset, device: str, amp: bool, epochs: int, batch_size: int) -> dict[str, Any]:
    """Images per second over epochs 2..`epochs` of `train_model` (epoch 1 is the warm-up)."""
    import torch

    from nasflow.config import TrainConfig
    from nasflow.space import build_model, parse_arch
    from nasflow.train import train_model

    torch.manual_seed(0)
    model = build_model(parse_arch(arch), dataset.in_channels, dataset.num_classes)
    marks: list[float] = []
    config = TrainConfig(batch_size=batch_size, epochs=epochs, augment=True)
    result = train_model(model, dataset, config, device=device, amp=amp, progress=lambda *_: marks.append(time.perf_counter()))
    batch = min(batch_size, dataset.size("train"))
    images = (dataset.size("train") // batch) * batch * (len(marks) - 1)  # fewer epochs if the loss diverged
    seconds = marks[-1] - marks[0]
    return {"images": images, "seconds": seconds, "images_per_second": images / seconds, "epochs_done": result.epochs}


def configurations() -> list[dict[str, Any]]:
    """cpu, plus cuda float32 and cuda amp where a GPU is present."""
    import torch

    configs = [{"device": "cpu", "amp": False}]
    if torch.cuda.is_available():
        configs += [{"device": "cuda", "amp": False}, {"device": "cuda", "amp": True}]
    return configs


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    import torch

    from machine import machine_info  # benchmarks/machine.py (the script's folder is on sys.path)
    from nasflow.train_device import amp_dtype, resolve_device
    from space_archs import smallest_middle_largest

    if args.threads:
        torch.set_num_threads(args.threads)
    archs = smallest_middle_largest()
    with tempfile.TemporaryDirectory(prefix="nasflow-throughput-") as scratch:
        dataset, data = cifar_like_dataset(args.images, args.archive, Path(scratch))
        results = []
        for config in configurations():
            device = resolve_device(config["device"])
            dtype = amp_dtype(device, config["amp"])
            for role in ROLES:
                macs, arch = archs[role]
                print(f"training {role} ({macs / 1e6:.1f} MMACs) on {device}{' amp' if config['amp'] else ''} ...", flush=True)
                timing = time_training(arch, dataset, str(device), config["amp"], args.epochs, args.batch_size)
                results.append({
                    "role": role, "arch": arch, "macs": macs, "device": str(device), "amp": config["amp"],
                    "precision": str(dtype).removeprefix("torch.") if dtype else "float32", **timing,
                })
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "benchmark": "train_throughput",
        "machine": {**machine_info("torch", "numpy"), "gpu": gpu, "torch_threads": torch.get_num_threads()},
        "settings": {
            "data": data, "real_data": args.archive.is_file(), "images": args.images, "train_images": dataset.size("train"),
            "epochs": args.epochs, "timed_epochs": args.epochs - 1, "batch_size": args.batch_size, "augment": True,
            "geometry": "3x32x32, 10 classes",
        },
        "results": results,
    }


def _column(r: dict[str, Any]) -> str:
    return f"{r['device'].split(':')[0]}{' + amp (' + r['precision'] + ')' if r['amp'] else ''}"


def render_markdown(report: dict[str, Any]) -> str:
    """The README's table for this benchmark, from its JSON report."""
    results = report["results"]
    columns = list(dict.fromkeys(_column(r) for r in results))
    threads = report["machine"]["torch_threads"]
    columns_named = [f"{c} ({threads} thread{'s' if threads > 1 else ''}) images/s" if c == "cpu" else f"{c} images/s" for c in columns]
    lines = [
        "| architecture | MMACs | " + " | ".join(columns_named) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for role in ROLES:
        row = [r for r in results if r["role"] == role]
        by_column = {_column(r): r["images_per_second"] for r in row}
        cells = " | ".join(f"{by_column[c]:,.0f}" if c in by_column else "-" for c in columns)
        lines.append(f"| {role}: `{row[0]['arch']}` | {row[0]['macs'] / 1e6:.1f} | {cells} |")
    if report["machine"].get("gpu") is None:
        lines.append("")
        lines.append("No GPU in this run: the CUDA columns appear when one is present.")
    return "\n".join(lines)



def markdown(report: dict[str, Any]) -> str:
    """The README block, by the name benchmarks/tables.py looks for."""
    return render_markdown(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="CIFAR-10 JPEG archive (random images when missing)")
    parser.add_argument("--images", type=int, default=5_000, help="images (default 5,000; 90%% of them train)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first warms up (default 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64, train.config's default)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's, one per core; on a shared machine 1 avoids spinning threads)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (default benchmarks/results/train_throughput.json)")
    parser.add_argument("--markdown", action="store_true", help="print the README table from the JSON report and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(render_markdown(json.loads(args.out.read_text())))
        return 0
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (the first epoch is a warm-up)")
    report = run_benchmark(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(report["settings"]["data"])
    print(render_markdown(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
