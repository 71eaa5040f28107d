"""Load image-classification datasets (digits, ImageFolder trees or tar archives) as compact pixels and split indices."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .config import DatasetConfig
from .errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "val", "test")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Bump when the cache layout or decoding changes so stale files are never reused.
_CACHE_VERSION = 2
# wrapper/split/class/file: nothing deeper can be part of a supported layout.
_MAX_PARTS = 4
# Bad files named in one message; the rest are counted.
_BAD_FILES_SHOWN = 10
# Pixels converted to float64 at a time for the channel statistics (about 8 MB).
_STATS_CHUNK_VALUES = 1 << 20


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/validation/test splits as row indices into compact pixel arrays (uint8, or float32 in 0..1).

    Pixels stay as decoded (one array per source, possibly a read-only memory map of the cache);
    `batch` gathers rows and normalises them with the training statistics, so no float copy of
    a whole split exists unless asked for (`train_x`, `val_x`, `test_x` materialise one: fine for
    small data and tests, not for training). Search and selection use the validation split only;
    the test split is for reporting. Instances are shared between callers (see load_dataset).
    """

    name: str
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixels: dict[str, np.ndarray]  # split -> its source array (N, C, H, W); train and val share one
    rows: dict[str, np.ndarray]  # split -> row indices into pixels[split]
    labels: dict[str, np.ndarray]  # split -> int64 label per row of the split
    skipped_files: tuple[str, ...] = ()  # unreadable images left out (dataset.skip_bad_files)
    _norm: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = (1, len(self.mean), 1, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        object.__setattr__(self, "_norm", (mean, std))

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use 'train', 'val' or 'test'")

    def size(self, split: str) -> int:
        self._check_split(split)
        return len(self.rows[split])

    def batch(self, split: str, indices: np.ndarray | slice | Sequence[int] | None = None) -> np.ndarray:
        """Normalised float32 NCHW images of `split` at `indices` (positions within the split; None: all)."""
        self._check_split(split)
        rows = self.rows[split] if indices is None else self.rows[split][indices]
        return self.normalise(self.pixels[split][rows])

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Float32 copy of raw pixels (as stored) with the training split's mean and std applied."""
        x = raw.astype(np.float32)
        if raw.dtype == np.uint8:
            x /= 255.0
        mean, std = self._norm
        x -= mean
        x /= std
        return x

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(normalised images, labels) of the 'train', 'val' or 'test' split, materialised whole."""
        return self.batch(name), self.labels_of(name)

    def labels_of(self, split: str) -> np.ndarray:
        self._check_split(split)
        return self.labels[split]

    @property
    def train_x(self) -> np.ndarray:
        return self.batch("train")

    @property
    def val_x(self) -> np.ndarray:
        return self.batch("val")

    @property
    def test_x(self) -> np.ndarray:
        return self.batch("test")

    @property
    def train_y(self) -> np.ndarray:
        return self.labels["train"]

    @property
    def val_y(self) -> np.ndarray:
        return self.labels["val"]

    @property
    def test_y(self) -> np.ndarray:
        return self.labels["test"]

    @property
    def in_channels(self) -> int:
        return int(self.pixels["train"].shape[1])

    @property
    def image_size(self) -> int:
        return int(self.pixels["train"].shape[2])

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_channels, self.image_size, int(self.pixels["train"].shape[3]))

    @property
    def nbytes(self) -> int:
        """Bytes of decoded pixels held (each source array counted once)."""
        return sum(a.nbytes for a in {id(a): a for a in self.pixels.values()}.values())

    def summary(self) -> list[str]:
        """Lines describing the dataset: sizes, classes, geometry, left-out files."""
        counts = ", ".join(f"{s} {self.size(s):,}" for s in SPLITS)
        shown = ", ".join(self.class_names[:12]) + (f", ... ({self.num_classes} in all)" if self.num_classes > 12 else "")
        lines = [
            f"dataset {self.name}: {counts} images",
            f"{self.num_classes} classes: {shown}",
            f"images: {self.in_channels} channel{'s' if self.in_channels > 1 else ''}, "
            f"{self.image_size}x{self.input_shape[3]}, {self.nbytes / 1e6:.1f} MB decoded",
        ]
        if self.skipped_files:
            names = _listing([repr(f) for f in self.skipped_files])
            lines.append(f"left out {len(self.skipped_files)} unreadable images: {names}")
        return lines


@dataclass(frozen=True)
class _Entry:
    """One image file of the pool before decoding."""

    rel: str  # path inside the dataset, for error messages
    label: int
    ref: object  # Path (directory) or TarInfo (archive)


@dataclass
class _Folder:
    """One decoded ImageFolder split: pixels (N, C, H, W) uint8, labels, and what could not be read."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    bad: list[tuple[str, str]]  # (file, reason) of images that failed to decode, left out of `images`


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
    pool = _image_folder(path, cfg)
    test = None
    bad = list(pool.bad)
    if cfg.test is not None:
        # The whole test folder, never subset: reported accuracy should not depend on `subset`.
        test_folder = _image_folder(path, cfg.model_copy(update={"split": cfg.test, "subset": None}))
        if test_folder.classes != pool.classes:
            raise DatasetError(
                f"test split '{cfg.test}' has classes {test_folder.classes} but split '{cfg.split}' has {pool.classes}"
            )
        if test_folder.images.shape[2:] != pool.images.shape[2:]:
            (ah, aw), (bh, bw) = pool.images.shape[2:], test_folder.images.shape[2:]
            raise DatasetError(
                f"test split '{cfg.test}' has {bw}x{bh} images but split '{cfg.split}' has {aw}x{ah}; "
                "set dataset.image_size to resize both"
            )
        # Any colour image makes the dataset colour: a grey folder is widened to match the other.
        channels = max(pool.images.shape[1], test_folder.images.shape[1])
        pool.images, test_folder.images = _with_channels(pool.images, channels), _with_channels(test_folder.images, channels)
        test = (test_folder.images, test_folder.labels)
        bad += test_folder.bad
    skipped = _apply_bad_file_policy(bad, path, cfg)
    return _assemble(_display_name(path, cfg.split), pool.images, pool.labels, pool.classes, cfg, test, skipped)


def _with_channels(images: np.ndarray, channels: int) -> np.ndarray:
    return images if images.shape[1] == channels else np.repeat(images, channels, axis=1)


def _apply_bad_file_policy(bad: list[tuple[str, str]], where: Path, cfg: DatasetConfig) -> tuple[str, ...]:
    """Refuse unreadable images, all named in one message, unless dataset.skip_bad_files leaves them out."""
    if not bad:
        return ()
    files = [f"'{rel}' ({reason})" for rel, reason in bad]
    if not cfg.skip_bad_files:
        raise DatasetError(
            f"{len(bad)} image{'s' if len(bad) > 1 else ''} in '{where}' cannot be read: {_listing(files)}; "
            "fix or remove them, or set dataset.skip_bad_files: true to leave them out"
        )
    warnings.warn(
        f"dataset: left out {len(bad)} unreadable image{'s' if len(bad) > 1 else ''} of '{where}' "
        f"(dataset.skip_bad_files): {_listing([repr(rel) for rel, _ in bad])}",
        stacklevel=3,
    )
    return tuple(rel for rel, _ in bad)


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_BAD_FILES_SHOWN])
    return shown + (f" and {len(items) - _BAD_FILES_SHOWN} more" if len(items) > _BAD_FILES_SHOWN else "")


# ---------------------------------------------------------------- shared post-processing


def _assemble(
    name: str,
    pixels: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    cfg: DatasetConfig,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    skipped: tuple[str, ...] = (),
) -> Dataset:
    """Split the pool into train/val (and test, unless given) as row indices; statistics from the training rows."""
    _check_classes(labels, classes, name, "the dataset")
    pool_rows = np.arange(len(labels))
    if test is None:
        # The test split is carved first, from its own seeded stream, so changing val_split
        # never moves an image between the test split and the others.
        rest, test_local = _stratified_split(labels, cfg.test_split, _rng(cfg.seed, 2), "test")
        test_pixels, test_rows, test_labels = pixels, test_local, labels[test_local]
        pool_rows, labels = rest, labels[rest]
    else:
        test_pixels, test_labels = test
        _check_classes(test_labels, classes, name, f"test split '{cfg.test}'")
        test_rows = np.arange(len(test_labels))
    train_local, val_local = _stratified_split(labels, cfg.val_split, _rng(cfg.seed, 1), "validation")
    rows = {"train": pool_rows[train_local], "val": pool_rows[val_local], "test": test_rows}
    mean, std = _channel_stats(pixels, rows["train"])
    return Dataset(
        name=name,
        num_classes=len(classes),
        class_names=list(classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        pixels={"train": pixels, "val": pixels, "test": test_pixels},
        rows=rows,
        labels={
            "train": labels[train_local].astype(np.int64),
            "val": labels[val_local].astype(np.int64),
            "test": np.asarray(test_labels, dtype=np.int64),
        },
        skipped_files=skipped,
    )


def _check_classes(labels: np.ndarray, classes: list[str], name: str, what: str) -> None:
    """A classifier needs two classes with images; one class scores every candidate 1.0."""
    if len(classes) < 2:
        found = f"only the class '{classes[0]}'" if classes else "no class"
        raise DatasetError(f"{what} '{name}' has {found}; classification needs at least two class folders")
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"{what} '{name}' has no readable images for class {', '.join(map(repr, empty))}")


def _channel_stats(pixels: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (in 0..1 units) of `rows`, read in chunks so no float copy of the split exists."""
    scale = 1 / 255.0 if pixels.dtype == np.uint8 else 1.0
    channels = pixels.shape[1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    chunk = max(1, _STATS_CHUNK_VALUES // max(1, int(np.prod(pixels.shape[1:]))))
    # float64 accumulation: float32 sums over millions of pixels drift noticeably.
    for start in range(0, len(rows), chunk):
        x = pixels[rows[start : start + chunk]].astype(np.float64)
        x *= scale
        total += x.sum(axis=(0, 2, 3))
        squares += np.square(x).sum(axis=(0, 2, 3))
    count = max(1, len(rows) * pixels.shape[2] * pixels.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
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
    """scikit-learn's 8x8 digits as float32 in 0..1 (16 grey levels: small enough to keep as float)."""
    from sklearn.datasets import load_digits  # sklearn import is slow; only pay for it when used

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    keep = _stratified_pick(labels, cfg.subset or len(labels), _rng(cfg.seed, 0))
    x = (bunch.images[keep] / 16.0).astype(np.float32)[:, None]
    if cfg.image_size and cfg.image_size != x.shape[-1]:
        x = _resize_float(x, cfg.image_size)
    if cfg.channels == 3:
        x = np.repeat(x, 3, axis=1)
    return x, labels[keep], [str(i) for i in range(10)]


def _resize_float(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.numpy()


# ---------------------------------------------------------------- image folders and archives


def _image_folder(path: Path, cfg: DatasetConfig) -> _Folder:
    """One split of an ImageFolder source, from the disk cache when possible."""
    is_dir = _check_path(path)
    cache_file = _cache_file(path, is_dir, cfg)
    cached = _read_cache(cache_file)
    if cached is not None:
        return cached
    folder = _decode_source(path, is_dir, cfg)
    _write_cache(cache_file, folder)
    return folder


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


def _decode_source(path: Path, is_dir: bool, cfg: DatasetConfig) -> _Folder:
    try:
        classes, entries, (images, bad) = _decode_directory(path, cfg) if is_dir else _decode_archive(path, cfg)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        kind = "directory" if is_dir else "archive"
        raise DatasetError(f"cannot read {kind} '{path}': {exc}") from None
    bad_rel = {rel for rel, _ in bad}
    labels = np.array([e.label for e in entries if e.rel not in bad_rel], dtype=np.int64)
    return _Folder(images, labels, classes, bad)


def _decode_directory(path: Path, cfg: DatasetConfig):
    classes, entries = _pool(_scan_directory(path), cfg.split, path)
    entries = _select(entries, cfg)
    return classes, entries, _decode_all(entries, lambda ref: ref.read_bytes(), path, cfg)


def _decode_archive(path: Path, cfg: DatasetConfig):
    with tarfile.open(path, "r:*") as tf:
        classes, entries = _pool(_scan_archive(tf), cfg.split, path)
        entries = _select(entries, cfg)
        # Reading in archive order keeps a compressed stream seeking forward only.
        order = sorted(range(len(entries)), key=lambda i: entries[i].ref.offset_data)
        decoded = _decode_all(entries, lambda m: tf.extractfile(m).read(), path, cfg, order)
    return classes, entries, decoded


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


class _BadImage(Exception):
    """An image file that cannot be decoded; the message is the reason."""


class _Pixels:
    """The preallocated (N, C, H, W) uint8 array images are decoded into, in one place."""

    def __init__(self, n: int, channels: int | None):
        self.n = n
        self.forced = channels
        self.array: np.ndarray | None = None
        self.first: tuple[str, tuple[int, int]] | None = None  # (file, (h, w)) that fixed the size
        self.mismatch: tuple[str, tuple[int, int]] | None = None

    def put(self, row: int, img: np.ndarray, rel: str) -> bool:
        """Store one CHW image at `row`; False when its size differs from the first image's."""
        c, h, w = img.shape
        if self.array is None:
            self.array = np.empty((self.n, c, h, w), dtype=np.uint8)
            self.first = (rel, (h, w))
        elif (h, w) != self.first[1]:
            self.mismatch = self.mismatch or (rel, (h, w))
            return False
        elif c > self.array.shape[1]:
            # The first colour image of a folder read as grayscale so far: widen once, replicating grey.
            wider = np.empty((self.n, c, h, w), dtype=np.uint8)
            wider[:] = self.array[:, :1]
            self.array = wider
        self.array[row] = img  # a grey image broadcasts into every channel of a colour array
        return True


def _decode_all(
    entries: list[_Entry],
    read: Callable[[object], bytes],
    where: Path,
    cfg: DatasetConfig,
    order: list[int] | None = None,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode entries into one preallocated uint8 NCHW array in entry order (reading in `order`).

    Returns the array without the rows of unreadable files, and those files with the reason.
    """
    pixels = _Pixels(len(entries), cfg.channels)
    failed = np.zeros(len(entries), dtype=bool)
    bad: list[tuple[int, str, str]] = []
    for i in order if order is not None else range(len(entries)):
        rel = entries[i].rel
        try:
            img = _decode_image(read(entries[i].ref), rel, where, cfg.image_size, cfg.channels)
        except _BadImage as exc:
            failed[i] = True
            bad.append((i, rel, str(exc)))
            continue
        if not pixels.put(i, img, rel):
            failed[i] = True
    if pixels.mismatch is not None:
        (a_rel, (ah, aw)), (b_rel, (bh, bw)) = pixels.first, pixels.mismatch
        raise DatasetError(
            f"images in '{where}' differ in size ({aw}x{ah} '{a_rel}', {bw}x{bh} '{b_rel}'); "
            "set dataset.image_size to resize them"
        )
    if pixels.array is None:
        raise DatasetError(f"no image in '{where}' can be read ({len(entries)} tried): {_listing([f'{r} ({m})' for _, r, m in bad])}")
    return _compact(pixels.array, failed), [(rel, reason) for _, rel, reason in sorted(bad)]


def _compact(images: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """Move the good rows down over the failed ones, in place (no second array), and cut the tail."""
    if not failed.any():
        return images
    good = np.flatnonzero(~failed)
    for dst, src in enumerate(good):
        if dst != src:
            images[dst] = images[src]
    return images[: len(good)]


# Stored as one grey band: PIL modes whose pixels carry no colour.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _is_grey(img) -> bool:
    if img.mode in _GREY_MODES:
        return True
    if img.mode in ("P", "PA"):
        rgb = np.asarray(img.convert("RGB"))
        return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return False


def _decode_image(data: bytes, rel: str, where: Path, size: int | None, channels: int | None = None) -> np.ndarray:
    """One image as uint8 CHW: one channel for grayscale files, three for colour (or `channels` when forced)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            grey = channels == 1 or (channels is None and _is_grey(img))
            converted = img.convert("L" if grey else "RGB")
        if size and converted.size != (size, size):
            converted = converted.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(converted, dtype=np.uint8)
    except UnidentifiedImageError:
        # Pillow's own message only names an anonymous BytesIO object.
        raise _BadImage("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _BadImage(str(exc) or type(exc).__name__) from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _display_name(path: Path, split: str | None) -> str:
    stem = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}/{split}" if split else stem


# ---------------------------------------------------------------- decoded-pixel cache
#
# Two files per key: `<key>.npy` holds the pixels as a plain array, opened as a read-only memory
# map (a load is then nearly free, and processes training on one machine share the page cache);
# `<key>.json`, written last, holds labels, classes and the unreadable files.


def _source_stamp(path: Path, is_dir: bool) -> list:
    """What must change for the cache to be stale: the archive itself, or every image file of a tree."""
    st = path.stat()
    if not is_dir:
        return [st.st_size, st.st_mtime_ns]
    # A file edited or replaced inside a class folder leaves the top folder's mtime alone.
    digest = hashlib.sha256()
    for parts, file in sorted(_scan_directory(path), key=lambda item: item[0]):
        fs = file.stat()
        digest.update(f"{'/'.join(parts)}\0{fs.st_size}\0{fs.st_mtime_ns}\n".encode())
    return [digest.hexdigest()]


def _cache_file(path: Path, is_dir: bool, cfg: DatasetConfig) -> Path:
    """The cache's `.npy` path for this source and decoding settings (the `.json` sits beside it)."""
    key = [_CACHE_VERSION, str(path.resolve()), _source_stamp(path, is_dir), cfg.split, cfg.subset, cfg.image_size,
           cfg.channels, cfg.seed]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    return Path(cfg.cache_dir).expanduser() / f"{_display_name(path, None)}-{digest}.npy"


def _read_cache(file: Path) -> _Folder | None:
    meta_file = file.with_suffix(".json")
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        images = np.load(file, mmap_mode="r", allow_pickle=False)
        labels = np.asarray(meta["labels"], dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"pixels {images.shape} {images.dtype} do not match {len(labels)} labels")
        return _Folder(images, labels, [str(c) for c in meta["class_names"]], [tuple(b) for b in meta["bad"]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # A damaged cache only costs a re-decode; it is rewritten below.
        warnings.warn(f"ignoring unreadable dataset cache '{file}': {exc}", stacklevel=2)
        return None


def _write_cache(file: Path, folder: _Folder) -> None:
    tag = f"{os.getpid()}.{threading.get_ident()}.tmp"
    tmp_npy, tmp_json = file.with_name(f".{file.name}.{tag}"), file.with_name(f".{file.stem}.json.{tag}")
    meta = {"labels": folder.labels.tolist(), "class_names": folder.classes, "bad": [list(b) for b in folder.bad]}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp_npy, "wb") as fh:
            np.save(fh, folder.images, allow_pickle=False)  # writes the array's buffer: no copy
        tmp_json.write_text(json.dumps(meta))
        # Pixels first, metadata last: a reader that finds the .json finds a complete .npy.
        os.replace(tmp_npy, file)
        os.replace(tmp_json, file.with_suffix(".json"))
    except OSError as exc:
        tmp_npy.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
        warnings.warn(f"could not write dataset cache '{file}': {exc}", stacklevel=2)
