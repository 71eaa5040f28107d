"""The training-throughput benchmark runs at a tiny size and writes a well-formed report; the README shows its committed table.

No speed is asserted: machines differ. GPU rows appear only where a GPU is present.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

sys.path.insert(0, str(ROOT / "benchmarks"))
import train_throughput  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput") / "train_throughput.json"
    args = ["--images", "160", "--epochs", "2", "--threads", "1", "--out", str(out)]  # two timed batches of 64
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), out


def test_three_architectures_by_macs_on_every_available_device(report):
    data, _ = report
    configs = [("cpu", False)] + ([("cuda", False), ("cuda", True)] if torch.cuda.is_available() else [])
    rows = data["results"]
    assert [(r["device"].split(":")[0], r["amp"]) for r in rows] == [c for c in configs for _ in range(3)]
    for config_rows in (rows[i : i + 3] for i in range(0, len(rows), 3)):
        assert [r["role"] for r in config_rows] == ["smallest", "middle", "largest"]
        assert config_rows[0]["macs"] < config_rows[1]["macs"] < config_rows[2]["macs"]
    for r in rows:
        assert r["images"] == (data["settings"]["train_images"] // 64) * 64  # one timed epoch
        assert r["images_per_second"] == pytest.approx(r["images"] / r["seconds"]) and r["images_per_second"] > 0
        assert r["precision"] == ("float32" if not r["amp"] else r["precision"])
    assert data["settings"]["real_data"] == CIFAR.is_file()
    assert ("CIFAR-10 JPEG" in data["settings"]["data"]) == CIFAR.is_file()
    assert data["machine"]["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def test_markdown_flag_prints_the_table_of_the_json(report):
    data, out = report
    result = subprocess.run([sys.executable, str(SCRIPT), "--markdown", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == train_throughput.render_markdown(data)
    assert "| smallest: `stem_" in result.stdout and "| cpu (" in result.stdout


def test_readme_table_is_the_committed_json_rendered():
    committed = json.loads((ROOT / "benchmarks" / "results" / "train_throughput.json").read_text())
    assert train_throughput.render_markdown(committed) in (ROOT / "README.md").read_text()
