"""The one-shot cost benchmark builds NNI's reference setting, runs at a tiny size and writes a
well-formed report; the README shows its committed table. No speed is asserted: machines differ."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "oneshot_cost.py"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
IMAGES = 64  # two steps of batch 32 (one per half for the bilevel strategies): the report's shape, quickly

sys.path.insert(0, str(ROOT / "benchmarks"))
import oneshot_cost  # noqa: E402


def test_the_space_is_the_reference_setting():
    from nasflow.arch import format_arch

    space = oneshot_cost.reference_space()
    supernet = space.supernet()
    assert len(supernet.layers) == 6
    skeleton = supernet.skeleton
    assert (skeleton.stem, skeleton.stem_stride, skeleton.stem_act, skeleton.head, skeleton.head_act) == (16, 1, "relu6", 128, "relu6")
    shapes = [(b.out, b.stride) for b in skeleton.blocks]
    assert shapes == [(24, 1), (24, 1), (40, 2), (40, 1), (80, 2), (80, 1)]
    for i, layer in enumerate(supernet.layers):
        mbconv = [(b.kernel, b.expansion, b.act) for b in layer.candidates if b.kind == "ir"]
        assert sorted(mbconv) == sorted((k, e, "relu6") for k in (3, 5, 7) for e in (3.0, 6.0))
        skips = [b for b in layer.candidates if b.kind == "skip"]
        assert len(skips) == (1 if i in (1, 3, 5) else 0)  # where stride 1 and channels equal
    assert "head_c128" in format_arch(skeleton)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("oneshot") / "oneshot_cost.json"
    args = ["--images", str(IMAGES), "--batch-size", "32", "--threads", "1", "--out", str(out), "--cache-dir", str(out.parent / "cache")]
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), out


def test_every_strategy_is_measured_against_the_standalone_network(report):
    data, _ = report
    assert set(data["strategies"]) == {"darts", "fbnet", "proxyless"}
    base = data["standalone"]
    assert base["seconds"] > 0 and base["peak_memory_mb"] > 0
    for name, row in data["strategies"].items():
        assert row["time_ratio"] == pytest.approx(row["seconds"] / base["seconds"])
        assert row["memory_ratio"] == pytest.approx(row["peak_memory_mb"] / base["peak_memory_mb"])
        assert row["met"] == all((row[k] <= v) if row["target"]["kind"] == "within" else (row[k] < v)
                                 for k, v in row["target"].items() if k != "kind")
    assert data["strategies"]["proxyless"]["target"]["time_ratio"] == 1.5
    assert data["strategies"]["darts"]["target"]["time_ratio"] == data["nni"]["darts"]["time_ratio"]
    settings = data["settings"]
    assert settings["train_images"] == IMAGES and settings["weight_images"] + settings["arch_images"] == IMAGES
    assert settings["real_data"] == CIFAR.is_file()


def test_markdown_flag_prints_the_table_of_the_json(report):
    data, out = report
    result = subprocess.run([sys.executable, str(SCRIPT), "--markdown", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == oneshot_cost.markdown(data)
    assert "| `proxyless` |" in result.stdout and "| stand-alone k3e6 |" in result.stdout
