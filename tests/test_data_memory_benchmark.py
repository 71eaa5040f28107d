"""The data-memory benchmark runs at a tiny size and reports consistent figures; the README shows its committed table.

Only the shape and consistency of the numbers are checked, never the memory target: at this size
the data is a rounding error next to the process, and machines differ.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "data_memory.py"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
IMAGES, BASELINE, EPOCH = 300, 50, 100  # the report's shape; the benchmark itself uses thousands

sys.path.insert(0, str(ROOT / "benchmarks"))
import data_memory  # noqa: E402


def _synthetic_archive(path: Path) -> Path:
    """CIFAR-10's layout (train/<class>/<n>.jpg) with 60 random 32x32 JPEGs per class."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tf:
        for c in range(10):
            for i in range(60):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
                info = tarfile.TarInfo(f"cifar/train/class{c}/{i}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tf.addfile(info, buf)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data-memory")
    archive = CIFAR if CIFAR.is_file() else _synthetic_archive(folder / "cifar.tar.gz")
    out = folder / "data_memory.json"
    args = ["--archive", archive, "--images", IMAGES, "--baseline-images", BASELINE, "--epoch-images", EPOCH, "--out", out]
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), out


def test_each_load_is_measured_in_its_own_process_against_a_baseline(report):
    data, _ = report
    assert [r["load"] for r in data["results"]] == ["cold", "warm"]
    runs = data["runs"]
    assert set(runs) == {"cold dataset", "cold baseline", "warm dataset", "warm baseline"}
    for name, run in runs.items():
        size = IMAGES if "dataset" in name else BASELINE
        assert run["images"] == sum(run["splits"].values()) == size
        assert run["pixels_uint8_bytes"] == size * 3 * 32 * 32 and run["pixel_dtype"] == "uint8"
        assert run["memory_mapped"] == name.startswith("warm")  # the cold load decoded, the warm one mapped the cache
        assert run["peak_rss_bytes"] >= run["snapshots"]["after load"]["VmRSS"] > 0
        assert run["epoch_images"] == min(EPOCH, run["splits"]["train"])
        assert 0 <= run["val_accuracy"] <= 1


def test_reported_cost_and_ratio_follow_from_the_runs(report):
    data, _ = report
    assert data["target"] == {"data_cost_ratio_max": 1.2}
    for r in data["results"]:
        run, base = data["runs"][f"{r['load']} dataset"], data["runs"][f"{r['load']} baseline"]
        assert r["data_cost_bytes"] == run["peak_rss_bytes"] - base["peak_rss_bytes"]
        assert r["data_cost_ratio"] == pytest.approx(r["data_cost_bytes"] / ((IMAGES - BASELINE) * 3 * 32 * 32))
        assert r["meets_target"] == (r["data_cost_ratio"] <= 1.2)
    assert data["settings"]["images"] == IMAGES and data["settings"]["arch"].startswith("stem_")


def test_markdown_flag_prints_the_table_of_the_json(report):
    data, out = report
    result = subprocess.run([sys.executable, str(SCRIPT), "--markdown", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == data_memory.render_markdown(data)
    assert len(result.stdout.strip().splitlines()) == 4  # header, rule, cold, warm


def test_readme_table_is_the_committed_json_rendered():
    committed = json.loads((ROOT / "benchmarks" / "results" / "data_memory.json").read_text())
    assert data_memory.render_markdown(committed) in (ROOT / "README.md").read_text()
