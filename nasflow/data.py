"""Load image-classification datasets (digits, ImageFolder trees or tar archives) into normalised arrays."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .config import DatasetConfig
from .errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Bump when the cache layout or decoding changes so stale files are never reused.
_CACHE_VERSION = 1
# wrapper/split/class/file: nothing deeper can be part of a supported layout.
_MAX_PARTS = 4


@dataclass
class Dataset:
    """Train/validation/test arrays in NCHW float32, normalised with statistics of the training part.

    Search and selection use the validation split only; the test split is for reporting, so the
    accuracy a user reads is not the one candidates were chosen by. Instances are shared between
    callers (see load_dataset): treat the arrays as read-only.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_x: np.ndarray
    test_y: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the 'train', 'val' or 'test' split."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, self.image_size, int(self.train_x.shape[3]))


@dataclass(frozen=True)
class _Entry:
    """One image file of the pool before decoding."""

    rel: str  # path inside the dataset, for error messages
    label: int
    ref: object  # Path (directory) or TarInfo (archive)


# ---------------------------------------------------------------- public entry point

_memo: dict[DatasetConfig, Dataset] = {}
_memo_lock = threading.Lock()
_key_locks: dict[DatasetConfig, threading.Lock] = {}


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Return the dataset described by `cfg`, loading it at most once per process."""
    with _memo_lock:
        if cfg in _memo:
            return _memo[cfg]
        key_lock = _key_locks.setdefault(cfg, threading.Lock())
    # A per-config lock lets parallel workers wait for one load instead of each decoding.
    with key_lock:
        with _memo_lock:
            if cfg in _memo:
                return _memo[cfg]
        dataset = _load(cfg)
        with _memo_lock:
            _memo[cfg] = dataset
    return dataset


def clear_dataset_memo() -> None:
    """Forget datasets loaded in this process (the on-disk cache is kept)."""
    with _memo_lock:
        _memo.clear()
        _key_locks.clear()


def _load(cfg: DatasetConfig) -> Dataset:
    if cfg.name == "digits":
        x, labels, classes = _digits(cfg)
        return _assemble("digits", x, labels, classes, cfg)
    path = Path(cfg.path).expanduser().absolute()
    x, labels, classes = _float_images(*_image_folder(path, cfg))
    test = None
    if cfg.test is not None:
        # The whole test folder, never subset: reported accuracy should not depend on `subset`.
        test_cfg = cfg.model_copy(update={"split": cfg.test, "subset": None})
        test_x, test_y, test_classes = _float_images(*_image_folder(path, test_cfg))
        if test_classes != classes:
            raise DatasetError(
                f"test split '{cfg.test}' has classes {test_classes} but split '{cfg.split}' has {classes}"
            )
        test = (test_x, test_y)
    return _assemble(_display_name(path, cfg.split), x, labels, classes, cfg, test)


def _float_images(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 NHWC -> float NCHW in 0..1, the common input of _assemble."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32)
    x /= 255.0
    return x, labels, classes


# ---------------------------------------------------------------- shared post-processing


def _assemble(
    name: str,
    x: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    cfg: DatasetConfig,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    """Split the pool into train/val (and test, unless given) and normalise all with the training statistics."""
    if test is None:
        # The test split is carved first, from its own seeded stream, so changing val_split
        # never moves an image between the test split and the others.
        rest_idx, test_idx = _stratified_split(labels, cfg.test_split, _rng(cfg.seed, 2), "test")
        test = (x[test_idx], labels[test_idx])
        x, labels = x[rest_idx], labels[rest_idx]
    train_idx, val_idx = _stratified_split(labels, cfg.val_split, _rng(cfg.seed, 1), "validation")
    train_x, val_x, test_x = x[train_idx], x[val_idx], test[0]
    mean, std = _channel_stats(train_x)
    for arr in (train_x, val_x, test_x):
        arr -= mean[None, :, None, None]
        arr /= std[None, :, None, None]
    return Dataset(
        name=name,
        train_x=np.ascontiguousarray(train_x, dtype=np.float32),
        train_y=labels[train_idx].astype(np.int64),
        val_x=np.ascontiguousarray(val_x, dtype=np.float32),
        val_y=labels[val_idx].astype(np.int64),
        num_classes=len(classes),
        class_names=list(classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        test_x=np.ascontiguousarray(test_x, dtype=np.float32),
        test_y=np.asarray(test[1]).astype(np.int64),
    )


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # float64 accumulation: float32 sums over millions of pixels drift noticeably.
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    std[std < 1e-8] = 1.0  # constant channels would otherwise divide by zero
    return mean.astype(np.float32), std.astype(np.float32)


def _rng(seed: int, stream: int) -> np.random.Generator:
    # Separate streams keep the subset choice independent of the split choice.
    return np.random.default_rng([stream, seed % 2**63])


def _stratified_pick(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `limit` items, each class keeping its share of the pool."""
    n = len(labels)
    if limit >= n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * limit / n
    quota = np.floor(exact).astype(int)
    # Largest-remainder rounding so the quotas add up to exactly `limit`.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: limit - quota.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def _stratified_split(
    labels: np.ndarray, share: float, rng: np.random.Generator, held_out: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """Per class, hold out about `share` of the items (at least one, never all) as the `held_out` split."""
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(round(len(idx) * share), 1), len(idx) - 1) if len(idx) > 1 else 0
        val.append(idx[:k])
        train.append(idx[k:])
    val_idx = np.sort(np.concatenate(val))
    if len(val_idx) == 0:
        raise DatasetError(f"too few images per class to hold out a {held_out} split (need 2+ in some class)")
    return np.sort(np.concatenate(train)), val_idx


# ---------------------------------------------------------------- digits


def _digits(cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits  # sklearn import is slow; only pay for it when used

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    keep = _stratified_pick(labels, cfg.subset or len(labels), _rng(cfg.seed, 0))
    x = (bunch.images[keep] / 16.0).astype(np.float32)[:, None]
    if cfg.image_size and cfg.image_size != x.shape[-1]:
        x = _resize_float(x, cfg.image_size)
    return x, labels[keep], [str(i) for i in range(10)]


def _resize_float(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.numpy()


# ---------------------------------------------------------------- image folders and archives


def _image_folder(path: Path, cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 NHWC images, labels and class names, from the disk cache when possible."""
    is_dir = _check_path(path)
    cache_file = _cache_file(path, cfg)
    cached = _read_cache(cache_file)
    if cached is not None:
        return cached
    images, labels, classes = _decode_source(path, is_dir, cfg)
    _write_cache(cache_file, images, labels, classes)
    return images, labels, classes


def _check_path(path: Path) -> bool:
    """True for a directory, False for a tar archive; anything else is a DatasetError."""
    if not path.exists():
        raise DatasetError(f"dataset path '{path}' does not exist")
    if path.is_dir():
        return True
    try:
        if path.is_file() and tarfile.is_tarfile(path):
            return False
    except OSError as exc:
        raise DatasetError(f"cannot read dataset path '{path}': {exc}") from None
    raise DatasetError(f"dataset path '{path}' is neither a directory nor a tar archive (.tar, .tar.gz, .tgz)")


def _decode_source(path: Path, is_dir: bool, cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        classes, entries, images = _decode_directory(path, cfg) if is_dir else _decode_archive(path, cfg)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        kind = "directory" if is_dir else "archive"
        raise DatasetError(f"cannot read {kind} '{path}': {exc}") from None
    labels = np.array([e.label for e in entries], dtype=np.int64)
    return images, labels, classes


def _decode_directory(path: Path, cfg: DatasetConfig) -> tuple[list[str], list[_Entry], np.ndarray]:
    classes, entries = _pool(_scan_directory(path), cfg.split, path)
    entries = _select(entries, cfg)
    return classes, entries, _decode_all(entries, lambda ref: ref.read_bytes(), path, cfg.image_size)


def _decode_archive(path: Path, cfg: DatasetConfig) -> tuple[list[str], list[_Entry], np.ndarray]:
    with tarfile.open(path, "r:*") as tf:
        classes, entries = _pool(_scan_archive(tf), cfg.split, path)
        entries = _select(entries, cfg)
        # Reading in archive order keeps a compressed stream seeking forward only.
        order = sorted(range(len(entries)), key=lambda i: entries[i].ref.offset_data)
        images = _decode_all(entries, lambda m: tf.extractfile(m).read(), path, cfg.image_size, order)
    return classes, entries, images


def _select(entries: list[_Entry], cfg: DatasetConfig) -> list[_Entry]:
    """Apply `subset` before decoding so only the kept files are ever read."""
    if not cfg.subset:
        return entries
    labels = np.array([e.label for e in entries], dtype=np.int64)
    return [entries[i] for i in _stratified_pick(labels, cfg.subset, _rng(cfg.seed, 0))]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _scan_directory(root: Path) -> list[tuple[tuple[str, ...], object]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        # Prune hidden folders and anything too deep to matter for the layout.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if len(rel) < _MAX_PARTS - 1 else []
        found.extend((rel + (f,), Path(dirpath) / f) for f in filenames if _is_image(f))
    return found


def _scan_archive(tf: tarfile.TarFile) -> list[tuple[tuple[str, ...], object]]:
    found = []
    for member in tf.getmembers():
        if not member.isfile():
            continue
        parts = tuple(p for p in PurePosixPath(member.name).parts if p not in (".", "/"))
        # macOS archives carry resource-fork twins (._x.jpg, __MACOSX/) that are not images.
        if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts[:-1]):
            continue
        if _is_image(parts[-1]):
            found.append((parts, member))
    return found


def _pool(files: list[tuple[tuple[str, ...], object]], split: str | None, where: Path) -> tuple[list[str], list[_Entry]]:
    """Resolve the ImageFolder layout of `files` into class names and labelled entries."""
    root = _layout_root(files, split)
    base = root + ((split,) if split else ())
    if split and not any(p[: len(base)] == base for p, _ in files):
        available = sorted({p[len(root)] for p, _ in files if len(p) > len(root) + 1})
        shown = ", ".join(f"'{a}'" for a in available) or "none"
        raise DatasetError(f"split '{split}' not found in '{where}'; available folders: {shown}")
    picked = sorted((p[len(base)], "/".join(p), ref) for p, ref in files if len(p) == len(base) + 2 and p[: len(base)] == base)
    if not picked:
        raise DatasetError(_no_classes_message(files, root, split, where))
    classes = sorted({c for c, _, _ in picked})
    index = {c: i for i, c in enumerate(classes)}
    return classes, [_Entry(rel, index[c], ref) for c, rel, ref in picked]


def _layout_root(files: list[tuple[tuple[str, ...], object]], split: str | None) -> tuple[str, ...]:
    """() when the layout starts at the top, else the single wrapper folder everything sits in."""
    if split:
        matches = any(len(p) >= 3 and p[0] == split for p, _ in files)
    else:
        matches = any(len(p) == 2 for p, _ in files)
    tops = {p[0] for p, _ in files if len(p) > 1}
    if not matches and len(tops) == 1 and all(len(p) > 1 for p, _ in files):
        return (tops.pop(),)
    return ()


def _no_classes_message(files, root: tuple[str, ...], split: str | None, where: Path) -> str:
    msg = f"no class folders with images found in '{where}' (expected <class>/<image>"
    msg += f" under '{split}/')" if split else ")"
    deeper = sorted({p[len(root)] for p, _ in files if len(p) > len(root) + 2})
    if not split and deeper:
        msg += "; found folders " + ", ".join(f"'{d}'" for d in deeper) + " - set dataset.split to one of them?"
    return msg


def _decode_all(
    entries: list[_Entry],
    read: Callable[[object], bytes],
    where: Path,
    size: int | None,
    order: list[int] | None = None,
) -> np.ndarray:
    """Decode entries into one uint8 NHWC array (rows in entry order, reading in `order`)."""
    images: list[np.ndarray | None] = [None] * len(entries)
    for i in order if order is not None else range(len(entries)):
        images[i] = _decode_image(read(entries[i].ref), entries[i].rel, where, size)
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        first = next(e.rel for e, img in zip(entries, images) if img.shape == a)
        other = next(e.rel for e, img in zip(entries, images) if img.shape == b)
        raise DatasetError(
            f"images in '{where}' differ in size ({a[1]}x{a[0]} '{first}', {b[1]}x{b[0]} '{other}'); "
            "set dataset.image_size to resize them"
        )
    return np.stack(images)


def _decode_image(data: bytes, rel: str, where: Path, size: int | None) -> np.ndarray:
    """One image as uint8 HWC RGB, resized to size x size when asked."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
        if size and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)
    except UnidentifiedImageError:
        # Pillow's own message only names an anonymous BytesIO object.
        raise DatasetError(f"cannot decode image '{rel}' in '{where}': not a recognised image format") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot decode image '{rel}' in '{where}': {exc}") from None


def _display_name(path: Path, split: str | None) -> str:
    stem = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}/{split}" if split else stem


# ---------------------------------------------------------------- decoded-array cache


def _cache_file(path: Path, cfg: DatasetConfig) -> Path:
    st = path.stat()
    key = [_CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns, cfg.split, cfg.subset, cfg.image_size, cfg.seed]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    return Path(cfg.cache_dir).expanduser() / f"{_display_name(path, None)}-{digest}.npz"


def _read_cache(file: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            return z["images"], z["labels"].astype(np.int64), [str(c) for c in z["class_names"]]
    except (OSError, ValueError, KeyError, zlib.error) as exc:
        # A damaged cache only costs a re-decode; it is rewritten below.
        warnings.warn(f"ignoring unreadable dataset cache '{file}': {exc}", stacklevel=2)
        return None


def _write_cache(file: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        # Uncompressed: loading is then a plain read, far faster than re-inflating.
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images, labels=labels, class_names=np.array(classes, dtype=str))
        os.replace(tmp, file)  # atomic, so concurrent readers never see half a file
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write dataset cache '{file}': {exc}", stacklevel=2)
