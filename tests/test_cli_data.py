"""Data checks from the command line: `nasflow validate --data`, and `run` refusing bad data before any flow starts."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from nasflow.registry import Registry

from test_cli import assert_clean_error, nasflow


def _png(value: int, mode: str = "RGB") -> bytes:
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    arr = np.full(shape, value, dtype=np.uint8)
    arr[0, 0] = 255 - value
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, classes=("cat", "dog"), per_class=5, mode="RGB", bad=()):
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{i}.png").write_bytes(_png(40 * c + 9 * i, mode))
    for rel in bad:
        (root / rel).write_bytes(b"not an image")
    return root


def _spec(tmp_path, folder, **dataset) -> str:
    options = "".join(f", {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in dataset.items())
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: data-check\n"
        f"dataset: {{name: image_folder, path: {folder}, cache_dir: {tmp_path / 'cache'}{options}}}\n"
        f"registry: {{path: {tmp_path / 'registry.duckdb'}}}\n"
        f"execution: {{work_dir: {tmp_path / 'runs'}, workers: 1}}\n"
        "search: {budget: 1, batch_size: 1, strategy: random, proxy: {epochs: 1}}\n"
    )
    return path


def test_validate_data_reports_sizes_classes_and_channels(tmp_path):
    spec = _spec(tmp_path, _folder(tmp_path / "grey", classes=("a", "b", "c"), mode="L"))
    result = nasflow("validate", "--data", spec)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{spec}: valid")
    assert lines[1] == "dataset grey: train 9, val 3, test 3 images"
    assert lines[2] == "3 classes: a, b, c"
    assert lines[3].startswith("images: 1 channel, 8x8, ")


def test_validate_without_data_does_not_read_the_images(tmp_path):
    spec = _spec(tmp_path, _folder(tmp_path / "pets", bad=("cat/bad.png",)))
    result = nasflow("validate", spec)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache").exists()


def test_validate_data_lists_unreadable_images(tmp_path):
    spec = _spec(tmp_path, _folder(tmp_path / "pets", bad=("cat/bad.png", "dog/1.png")))
    result = nasflow("validate", "--data", spec)
    assert_clean_error(result, "2 images in", "'cat/bad.png' (not a recognised image format)", "'dog/1.png' (",
                       "dataset.skip_bad_files: true")


def test_validate_data_counts_skipped_images(tmp_path):
    spec = _spec(tmp_path, _folder(tmp_path / "pets", bad=("cat/bad.png",)), skip_bad_files=True)
    result = nasflow("validate", "--data", spec)
    assert result.returncode == 0, result.stderr
    assert "left out 1 unreadable images: 'cat/bad.png'" in result.stdout
    assert result.stderr.count("warning: dataset: left out 1 unreadable image of") == 1


def test_run_refuses_bad_data_before_any_flow_starts(tmp_path):
    spec = _spec(tmp_path, _folder(tmp_path / "pets", bad=("dog/3.png",)))
    result = nasflow("run", spec)
    assert_clean_error(result, "1 image in", "'dog/3.png'")
    assert "prefect" not in result.stderr.lower() and "Crash" not in result.stdout
    # Nothing was started: no run row, not even a registry file.
    assert not (tmp_path / "registry.duckdb").exists(), Registry(tmp_path / "registry.duckdb").query("SELECT * FROM runs")


def test_run_refuses_a_single_class(tmp_path):
    spec = _spec(tmp_path, _folder(tmp_path / "solo", classes=("only",)))
    assert_clean_error(nasflow("run", spec), "only the class 'only'", "at least two class folders")
