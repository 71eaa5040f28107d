"""Tests for nasflow.data: digits, ImageFolder directories/archives, subsets, splits, cache, compact
pixels, channel detection, unreadable files and errors."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nasflow import data
from nasflow.config import DatasetConfig
from nasflow.data import Dataset, clear_dataset_memo, load_dataset
from nasflow.errors import DatasetError

CLASSES = ("cat", "dog", "fox")
PER_CLASS = 6
CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _fresh_memo():
    # Each test builds its own files; a memo hit from another test would hide what is tested.
    clear_dataset_memo()
    yield
    clear_dataset_memo()


def _png(value: int, size: int = 10) -> bytes:
    arr = np.full((size, size, 3), value, dtype=np.uint8)
    arr[0, 0] = (255 - value, value, 0)  # some variation so the std is not zero
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _grey_png(value: int, size: int = 10) -> bytes:
    arr = np.full((size, size), value, dtype=np.uint8)
    arr[0, 0] = 255 - value
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(seed: int, size: int = 10) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    return buf.getvalue()


def _tree_files(prefix: str = "", image=_png) -> dict[str, bytes]:
    return {
        f"{prefix}{cls}/{i:02d}.png": image(40 * c + 5 * i)
        for c, cls in enumerate(CLASSES)
        for i in range(PER_CLASS)
    }


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, payload in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)
    return root


def _write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for rel, payload in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def _cfg(path: Path, tmp_path: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="image_folder", path=path, cache_dir=tmp_path / "cache", **kw)


@pytest.fixture
def decode_counter(monkeypatch):
    calls = []
    real = data._decode_image

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "_decode_image", counting)
    return calls


# ---------------------------------------------------------------- digits


def test_digits_shapes_and_normalisation():
    ds = load_dataset(DatasetConfig())
    assert isinstance(ds, Dataset)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    assert ds.train_x.shape[1:] == (1, 8, 8)
    assert len(ds.train_x) + len(ds.val_x) + len(ds.test_x) == 1797
    assert len(ds.test_x) == pytest.approx(0.2 * 1797, abs=10)  # carved first ...
    assert len(ds.val_x) == pytest.approx(0.2 * (1797 - len(ds.test_x)), abs=10)  # ... then validation
    assert ds.test_x.dtype == np.float32 and set(np.unique(ds.test_y)) == set(range(10))
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    assert ds.in_channels == 1 and ds.image_size == 8 and ds.input_shape == (1, 1, 8, 8)
    assert abs(float(ds.train_x.mean())) < 1e-4 and float(ds.train_x.std()) == pytest.approx(1.0, abs=1e-3)
    assert 0 < ds.mean[0] < 1 and 0 < ds.std[0] < 1
    assert set(np.unique(ds.val_y)) == set(range(10))


def test_digits_memoised_and_seeded():
    cfg = DatasetConfig(subset=300, seed=3)
    first = load_dataset(cfg)
    assert load_dataset(DatasetConfig(subset=300, seed=3)) is first
    assert len(first.train_y) + len(first.val_y) + len(first.test_y) == 300
    assert np.bincount(np.concatenate([first.train_y, first.val_y, first.test_y])).min() >= 29  # stratified
    other = load_dataset(DatasetConfig(subset=300, seed=4))
    assert not np.array_equal(first.val_x, other.val_x)
    clear_dataset_memo()
    again = load_dataset(cfg)
    assert again is not first and np.array_equal(again.val_x, first.val_x)


def test_digits_resize():
    ds = load_dataset(DatasetConfig(image_size=16, subset=100))
    assert ds.input_shape == (1, 1, 16, 16)


# ---------------------------------------------------------------- image folders


def test_directory_layout(tmp_path):
    root = _write_tree(tmp_path / "pets", _tree_files())
    ds = load_dataset(_cfg(root, tmp_path))
    assert ds.class_names == list(CLASSES) and ds.num_classes == 3
    assert ds.train_x.shape[1:] == (3, 10, 10) and ds.train_x.dtype == np.float32
    assert len(ds.train_y) + len(ds.val_y) + len(ds.test_y) == 18
    assert np.bincount(ds.test_y).tolist() == [1, 1, 1]  # round(6 * 0.2) per class
    assert np.bincount(ds.val_y).tolist() == [1, 1, 1]  # round(5 * 0.2) of the rest
    assert len(ds.mean) == 3 and ds.name == "pets"


def test_tar_with_wrapper_folder_and_split(tmp_path):
    files = _tree_files("bundle/train/") | _tree_files("bundle/test/")
    archive = _write_tar(tmp_path / "pets.tar.gz", files)
    ds = load_dataset(_cfg(archive, tmp_path, split="train", test="test", image_size=6, val_split=0.5))
    assert ds.input_shape == (1, 3, 6, 6) and ds.test_x.shape[1:] == (3, 6, 6)
    assert ds.class_names == list(CLASSES)
    assert np.bincount(ds.train_y).tolist() == [3, 3, 3] and np.bincount(ds.val_y).tolist() == [3, 3, 3]
    assert np.bincount(ds.test_y).tolist() == [6, 6, 6]  # the whole test folder
    assert ds.name == "pets/train"


def test_subset_decodes_only_kept_files(tmp_path, decode_counter):
    archive = _write_tar(tmp_path / "pets.tgz", _tree_files())
    ds = load_dataset(_cfg(archive, tmp_path, subset=9))
    assert len(decode_counter) == 9
    labels = np.concatenate([ds.train_y, ds.val_y, ds.test_y])
    assert np.bincount(labels).tolist() == [3, 3, 3]


def test_cache_hit_skips_decoding(tmp_path, decode_counter):
    root = _write_tree(tmp_path / "pets", _tree_files())
    cfg = _cfg(root, tmp_path, subset=12, seed=1)
    first = load_dataset(cfg)
    assert len(decode_counter) == 12
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1 and len(list((tmp_path / "cache").glob("*.json"))) == 1
    clear_dataset_memo()
    second = load_dataset(cfg)
    assert len(decode_counter) == 12  # nothing decoded the second time
    assert np.array_equal(first.train_x, second.train_x) and first.class_names == second.class_names
    load_dataset(_cfg(root, tmp_path, subset=12, seed=2))  # another key: decoded again
    assert len(decode_counter) == 24


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=f"dataset path '{missing}' does not exist"):
        load_dataset(_cfg(missing, tmp_path))


def test_path_that_is_not_dir_or_tar(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    with pytest.raises(DatasetError, match="neither a directory nor a tar archive"):
        load_dataset(_cfg(bogus, tmp_path))


def test_no_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders with images"):
        load_dataset(_cfg(tmp_path / "empty", tmp_path))


def test_nested_split_without_split_option_hints(tmp_path):
    root = _write_tree(tmp_path / "ds", _tree_files("train/") | _tree_files("test/"))
    with pytest.raises(DatasetError, match="'test', 'train' - set dataset.split"):
        load_dataset(_cfg(root, tmp_path))


def test_missing_split_lists_available(tmp_path):
    archive = _write_tar(tmp_path / "pets.tar", _tree_files("train/") | _tree_files("test/"))
    with pytest.raises(DatasetError, match="split 'val' not found .*available folders: 'test', 'train'"):
        load_dataset(_cfg(archive, tmp_path, split="val"))


def test_corrupt_image_named(tmp_path):
    files = _tree_files()
    files["dog/03.png"] = b"\x89PNG\r\n\x1a\n this is not really a png"
    archive = _write_tar(tmp_path / "pets.tar.gz", files)
    with pytest.raises(DatasetError, match="1 image in .* cannot be read: 'dog/03.png' \\(not a recognised image format\\)"):
        load_dataset(_cfg(archive, tmp_path))


def _with_bad_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """Three unreadable images of three kinds: not an image, a truncated JPEG, an empty file."""
    files = dict(files)
    files["cat/02.png"] = b"not an image at all"
    files["dog/04.jpg"] = _jpeg(90)[:-20]  # cut before its last scan lines
    files["fox/05.png"] = b""
    return files


def test_every_unreadable_image_is_named_in_one_message(tmp_path, decode_counter):
    root = _write_tree(tmp_path / "pets", _with_bad_files(_tree_files()))
    with pytest.raises(DatasetError) as info:
        load_dataset(_cfg(root, tmp_path))
    message = str(info.value)
    assert message.startswith(f"3 images in '{root}' cannot be read: ")
    for name in ("'cat/02.png' (not a recognised image format)", "'dog/04.jpg' (", "'fox/05.png' ("):
        assert name in message
    assert "truncated" in message and "dataset.skip_bad_files: true" in message
    assert len(decode_counter) == 19  # the whole folder was read: nothing stopped at the first bad file


def test_many_unreadable_images_are_counted_beyond_the_first_ten(tmp_path):
    files = _tree_files() | {f"cat/bad{i:02d}.png": b"junk" for i in range(15)}
    root = _write_tree(tmp_path / "pets", files)
    with pytest.raises(DatasetError, match=r"^15 images .*'cat/bad09.png' \(not a recognised image format\) and 5 more; fix"):
        load_dataset(_cfg(root, tmp_path))


def test_skip_bad_files_leaves_them_out_and_counts_them(tmp_path):
    root = _write_tree(tmp_path / "pets", _with_bad_files(_tree_files()))
    with pytest.warns(UserWarning, match="left out 3 unreadable images .*'cat/02.png', 'dog/04.jpg', 'fox/05.png'"):
        ds = load_dataset(_cfg(root, tmp_path, skip_bad_files=True))
    assert ds.skipped_files == ("cat/02.png", "dog/04.jpg", "fox/05.png")
    assert sum(ds.size(s) for s in ("train", "val", "test")) == 18 + 1 - 3  # 19 files, 3 unreadable
    assert any("left out 3 unreadable images" in line for line in ds.summary())
    # The cache remembers the bad files: without the option the same folder is still refused ...
    clear_dataset_memo()
    with pytest.raises(DatasetError, match="3 images .* cannot be read"):
        load_dataset(_cfg(root, tmp_path))
    # ... until they are fixed: editing a file inside a class folder invalidates the cache.
    (root / "cat" / "02.png").write_bytes(_png(7))
    (root / "dog" / "04.jpg").unlink()
    (root / "fox" / "05.png").write_bytes(_png(9))
    clear_dataset_memo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = load_dataset(_cfg(root, tmp_path))
    assert fixed.skipped_files == () and sum(fixed.size(s) for s in ("train", "val", "test")) == 18


def test_a_class_whose_images_are_all_unreadable_is_refused(tmp_path):
    files = {k: (b"junk" if k.startswith("fox/") else v) for k, v in _tree_files().items()}
    root = _write_tree(tmp_path / "pets", files)
    with pytest.raises(DatasetError, match="no readable images for class 'fox'"), pytest.warns(UserWarning):
        load_dataset(_cfg(root, tmp_path, skip_bad_files=True))


def test_one_class_is_refused(tmp_path):
    root = _write_tree(tmp_path / "solo", {k: v for k, v in _tree_files().items() if k.startswith("cat/")})
    with pytest.raises(DatasetError, match="only the class 'cat'; classification needs at least two class folders"):
        load_dataset(_cfg(root, tmp_path))


# ---------------------------------------------------------------- compact pixels and channels


def test_pixels_stay_uint8_and_batches_are_normalised_on_demand(tmp_path):
    root = _write_tree(tmp_path / "pets", _tree_files())
    ds = load_dataset(_cfg(root, tmp_path))
    pixels = ds.pixels["train"]
    assert pixels.dtype == np.uint8 and pixels.shape == (18, 3, 10, 10)
    assert ds.pixels["val"] is pixels and ds.pixels["test"] is pixels  # splits are indices, not copies
    assert ds.nbytes == 18 * 3 * 10 * 10
    assert sorted(np.concatenate([ds.rows[s] for s in ("train", "val", "test")]).tolist()) == list(range(18))
    picked = np.array([3, 0, 2])
    batch = ds.batch("train", picked)
    assert batch.dtype == np.float32 and batch.shape == (3, 3, 10, 10)
    expected = (pixels[ds.rows["train"][picked]] / np.float32(255) - np.array(ds.mean, np.float32)[None, :, None, None])
    assert np.allclose(batch, expected / np.array(ds.std, np.float32)[None, :, None, None], atol=1e-6)
    assert np.array_equal(ds.batch("val", slice(0, 2)), ds.val_x[:2])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ds.batch("dev")


def test_cached_pixels_are_memory_mapped(tmp_path):
    archive = _write_tar(tmp_path / "pets.tar.gz", _tree_files())
    first = load_dataset(_cfg(archive, tmp_path))
    clear_dataset_memo()
    second = load_dataset(_cfg(archive, tmp_path))
    assert isinstance(second.pixels["train"], np.memmap) and not second.pixels["train"].flags.writeable
    assert np.array_equal(first.train_x, second.train_x) and first.mean == second.mean


def test_grayscale_folder_stays_single_channel(tmp_path):
    root = _write_tree(tmp_path / "grey", _tree_files(image=_grey_png))
    ds = load_dataset(_cfg(root, tmp_path))
    assert ds.in_channels == 1 and ds.input_shape == (1, 1, 10, 10) and len(ds.mean) == 1
    rgb = load_dataset(_cfg(root, tmp_path, channels=3))
    assert rgb.in_channels == 3 and np.array_equal(rgb.pixels["train"][:, 0], rgb.pixels["train"][:, 2])


def test_any_colour_image_makes_the_folder_colour(tmp_path):
    files = _tree_files(image=_grey_png)
    files["fox/05.png"] = _png(200)  # the last file read is the only colour one
    root = _write_tree(tmp_path / "mixed", files)
    ds = load_dataset(_cfg(root, tmp_path))
    assert ds.in_channels == 3
    grey_row = ds.pixels["train"][0]  # cat/00.png, grey: replicated into every channel
    assert np.array_equal(grey_row[0], grey_row[1]) and np.array_equal(grey_row[1], grey_row[2])
    forced = load_dataset(_cfg(root, tmp_path, channels=1))
    assert forced.in_channels == 1


def test_grey_test_folder_joins_a_colour_training_folder(tmp_path):
    files = _tree_files("train/") | _tree_files("test/", image=_grey_png)
    root = _write_tree(tmp_path / "pets", files)
    ds = load_dataset(_cfg(root, tmp_path, split="train", test="test"))
    assert ds.pixels["test"].shape[1:] == (3, 10, 10) and ds.test_x.shape[1:] == (3, 10, 10)


def test_digits_can_be_given_three_channels():
    ds = load_dataset(DatasetConfig(channels=3, subset=200))
    assert ds.input_shape == (1, 3, 8, 8) and ds.pixels["train"].dtype == np.float32
    assert np.array_equal(ds.pixels["train"][:, 0], ds.pixels["train"][:, 1])


def test_mixed_sizes_need_image_size(tmp_path):
    files = _tree_files()
    files["fox/00.png"] = _png(10, size=12)
    root = _write_tree(tmp_path / "pets", files)
    with pytest.raises(DatasetError, match="differ in size"):
        load_dataset(_cfg(root, tmp_path))
    assert load_dataset(_cfg(root, tmp_path, image_size=8)).image_size == 8


def test_real_cifar_subset(tmp_path):
    if not CIFAR.is_file():
        pytest.skip(f"real CIFAR-10 archive not available at {CIFAR}")
    ds = load_dataset(_cfg(CIFAR, tmp_path, split="train", test="test", subset=200))
    assert ds.input_shape == (1, 3, 32, 32) and ds.num_classes == 10
    assert len(ds.train_y) + len(ds.val_y) == 200
    assert np.bincount(ds.test_y).tolist() == [1000] * 10  # the official test split, never subset
    assert np.bincount(ds.val_y, minlength=10).tolist() == [4] * 10
    assert all(abs(m - ref) < 0.05 for m, ref in zip(ds.mean, (0.4917, 0.4826, 0.4472)))


def test_truncated_archive(tmp_path):
    archive = _write_tar(tmp_path / "pets.tar.gz", _tree_files())
    payload = archive.read_bytes()
    archive.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DatasetError, match="cannot read archive .*pets.tar.gz"):
        load_dataset(_cfg(archive, tmp_path))


def test_test_split_is_disjoint_and_stable_when_val_split_changes():
    # Selection must never see a test image, and tuning val_split must not move the test split.
    a = load_dataset(DatasetConfig(val_split=0.2))
    b = load_dataset(DatasetConfig(val_split=0.3))
    assert len(a.val_y) != len(b.val_y)
    # normalisation follows the training part, so compare labels and raw counts, not pixels
    assert np.array_equal(a.test_y, b.test_y) and len(a.test_y) == len(b.test_y)
    assert len(a.train_y) + len(a.val_y) == len(b.train_y) + len(b.val_y) == 1797 - len(a.test_y)
    # un-normalised, the test images are the same ones
    raw = lambda d: d.test_x * np.array(d.std)[None, :, None, None] + np.array(d.mean)[None, :, None, None]  # noqa: E731
    assert np.allclose(raw(a), raw(b), atol=1e-5)


def test_test_folder_must_match_the_training_classes(tmp_path):
    files = _tree_files("train/") | {k: v for k, v in _tree_files("test/").items() if not k.startswith("test/fox/")}
    root = _write_tree(tmp_path / "pets", files)
    with pytest.raises(DatasetError, match="test split 'test' has classes"):
        load_dataset(_cfg(root, tmp_path, split="train", test="test"))


def test_test_subfolder_options_are_checked():
    with pytest.raises(ValueError, match="needs dataset.name 'image_folder'"):
        DatasetConfig(test="test")
    with pytest.raises(ValueError, match="must be held out"):
        DatasetConfig(name="image_folder", path="x", split="train", test="train")
