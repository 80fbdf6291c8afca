"""MultiMNIST: two overlapping MNIST digits per image; task 0 = left digit, task 1 = right.

The benchmark of Sener & Koltun (2018), "Multi-Task Learning as Multi-Objective
Optimization" (NeurIPS), after the MultiMNIST of Sabour et al. (2017). Each MNIST image
of a split is the *left* digit of one example; its partner, the *right* digit, is drawn
from the same split by a seeded permutation (every image is used once as left and once
as right digit, and no pair mixes train and validation). Both 28×28 digits go on a
36×36 canvas, the left one up-left of the right one; where they overlap a pixel is the
max of the two; the canvas is resized to 28×28. Two layouts (`layout`):

- `sener_koltun` (default): exactly the authors' loader, which the papers' MultiMNIST
  numbers come from: the left digit at the canvas's corner (0, 0), the right one at
  (6, 6), resized by nearest neighbour (PIL's NEAREST: output pixel i reads source pixel
  ⌊(i + ½)·36/28⌋, so 8 of the 36 rows and columns are dropped);
- `shifted`: each digit moved from the centre by an independent random 1..4 pixels per
  axis (relative offset 2..8 instead of the fixed 6), resized by area averaging (each
  output pixel the mean of the 36/28 × 36/28 source area it covers), which keeps every
  stroke; a harder, more varied variant.

Splits: train and validation come from MNIST train (validation: `n_valid` images
carved out by a seeded permutation), test from MNIST t10k. Arrays are plain numpy
(images uint8 [N, 1, 28, 28] or float32 in [0, 1]; labels int64 [N, 2]), so the data
loads where torch is absent. Everything random derives from one `seed`: the same seed
gives byte-identical arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mtlrec import files
from mtlrec.features.errors import DataError

DIGIT = 28  #: MNIST digit side and the output side
MAX_SHIFT = 4  #: largest shift of a digit from the canvas centre, pixels per axis
CANVAS = DIGIT + 2 * MAX_SHIFT  #: 36
SPLITS = ("train", "valid", "test")
TASKS = ("left", "right")
_CACHE_VERSION = 2  # bump when the construction changes, so old caches are not reused
# (left up, left left, right down, right right) from the centred position: left at (0, 0),
# right at (6, 6) of the canvas, as in Sener & Koltun's loader
SENER_KOLTUN_SHIFTS = (MAX_SHIFT, MAX_SHIFT, 2, 2)
_CHUNK = 8192  # examples composed at once (bounds the float32 canvas memory)


@dataclass(frozen=True)
class MultiMnistSplit:
    """One split; row n is one example.

    images: uint8 [N, 1, 28, 28] (or float32 in [0, 1] when loaded with as_float).
    labels: int64 [N, 2], (left digit, right digit).
    sources: int64 [N, 2], indices of the left and right digit in the MNIST file.
    shifts: int64 [N, 4], (left up, left left, right down, right right) in pixels, 1..4.
    """

    images: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    shifts: np.ndarray

    def __len__(self) -> int:
        return self.labels.shape[0]


# ---------------------------------------------------------------- MNIST idx files


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx array (the MNIST format), gzip-compressed when named *.gz.

    Checks the magic number (0x0000 08 <ndim>: unsigned bytes with `ndim` dimensions)
    and that the payload has exactly the size the header declares; errors name the file.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    expected_magic = 0x0800 | ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected_magic:
        found = "a file shorter than 4 bytes" if magic is None else f"0x{magic:08x}"
        raise DataError(f"{path}: idx magic number is {found}, expected 0x{expected_magic:08x} "
                        f"(unsigned bytes, {ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    payload = len(raw) - header
    if payload != int(np.prod(shape)):
        raise DataError(f"{path}: header declares shape {shape} ({int(np.prod(shape))} bytes) "
                        f"but the file holds {payload} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _mnist_file(mnist_dir: Path, name: str) -> Path:
    for candidate in (mnist_dir / f"{name}.gz", mnist_dir / name):
        if candidate.exists():
            return candidate
    raise DataError(f"{mnist_dir}: MNIST file {name}(.gz) is missing")


def read_mnist(mnist_dir: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST `part` ("train" or "t10k"): images uint8 [N, 28, 28], labels int64 [N]."""
    mnist_dir = Path(mnist_dir)
    images_path = _mnist_file(mnist_dir, f"{part}-images-idx3-ubyte")
    labels_path = _mnist_file(mnist_dir, f"{part}-labels-idx1-ubyte")
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1).astype(np.int64)
    if images.shape[1:] != (DIGIT, DIGIT):
        raise DataError(f"{images_path}: images are {images.shape[1]}×{images.shape[2]}, "
                        f"expected {DIGIT}×{DIGIT}")
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images "
                        f"in {images_path.name}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} is not a digit 0..9")
    return images, labels


# ---------------------------------------------------------------- construction


def overlay(left: np.ndarray, right: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Digits [N, 28, 28] → canvases uint8 [N, 36, 36], left up-left, right down-right.

    shifts [N, 4] = (left up, left left, right down, right right), each in 0..4 pixels
    from the centred position (the builder draws 1..4); overlapping pixels take the max.
    """
    if shifts.size and (shifts.min() < 0 or shifts.max() > MAX_SHIFT):
        raise ValueError(f"shifts must lie in 0..{MAX_SHIFT}")
    origin = np.concatenate([MAX_SHIFT - shifts[:, :2], MAX_SHIFT + shifts[:, 2:]], axis=1)
    return np.maximum(_place(left, origin[:, 0], origin[:, 1]),
                      _place(right, origin[:, 2], origin[:, 3]))


def _place(digits: np.ndarray, top: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Each digit [28, 28] on an empty canvas with its top-left corner at (top, left)."""
    n = digits.shape[0]
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    rows = (top[:, None] + np.arange(DIGIT))[:, :, None]
    cols = (left[:, None] + np.arange(DIGIT))[:, None, :]
    canvas[np.arange(n)[:, None, None], rows, cols] = digits
    return canvas


def _area_matrix(src: int, dst: int) -> np.ndarray:
    """R [dst, src]: R[i, j] = share of output pixel i's source interval covered by pixel j."""
    scale = src / dst
    lo, hi = np.arange(dst)[:, None] * scale, (np.arange(dst)[:, None] + 1) * scale
    j = np.arange(src)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return (overlap / scale).astype(np.float32)


_RESIZE = _area_matrix(CANVAS, DIGIT)


def resize(canvases: np.ndarray) -> np.ndarray:
    """Canvases [N, 36, 36] → uint8 [N, 28, 28] by area averaging (rounded to nearest)."""
    out = _RESIZE @ canvases.astype(np.float32) @ _RESIZE.T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


_NEAREST = ((np.arange(DIGIT) + 0.5) * CANVAS / DIGIT).astype(np.int64)


def resize_nearest(canvases: np.ndarray) -> np.ndarray:
    """Canvases [N, 36, 36] → [N, 28, 28] by nearest neighbour, as PIL's NEAREST does."""
    return canvases[:, _NEAREST][:, :, _NEAREST]


@dataclass(frozen=True)
class Layout:
    """Where the two digits go and how the canvas is resized (module docstring)."""

    shifts: tuple[int, int, int, int] | None  # the same for every example; None: drawn 1..4
    resize: Callable[[np.ndarray], np.ndarray]


LAYOUTS = {"sener_koltun": Layout(SENER_KOLTUN_SHIFTS, resize_nearest), "shifted": Layout(None, resize)}


def _layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {name!r}")
    return LAYOUTS[name]


def compose(left: np.ndarray, right: np.ndarray, shifts: np.ndarray, layout: str = "sener_koltun"
            ) -> np.ndarray:
    """Digits [N, 28, 28] → MultiMNIST images uint8 [N, 28, 28] (overlay, then the
    layout's resize)."""
    return _layout(layout).resize(overlay(left, right, shifts))


def _shifts(rng: np.random.Generator, n: int, layout: str) -> np.ndarray:
    fixed = _layout(layout).shifts
    if fixed is not None:
        return np.tile(np.array(fixed, dtype=np.int64), (n, 1))
    return rng.integers(1, MAX_SHIFT + 1, size=(n, 4), dtype=np.int64)


def split_pools(n_train_images: int, n_valid: int, seed: int) -> dict[str, np.ndarray]:
    """MNIST-train indices of the train and validation pools (ascending, disjoint)."""
    if not 0 < n_valid < n_train_images:
        raise ValueError(f"n_valid must be in 1..{n_train_images - 1}, got {n_valid}")
    order = np.random.default_rng(_seeds(seed)[0]).permutation(n_train_images)
    return {"train": np.sort(order[n_valid:]), "valid": np.sort(order[:n_valid])}


def _seeds(seed: int) -> list[np.random.SeedSequence]:
    """Independent streams: [validation carve, train, valid, test]."""
    return np.random.SeedSequence(seed).spawn(1 + len(SPLITS))


def _build_split(images: np.ndarray, labels: np.ndarray, pool: np.ndarray,
                 seed: np.random.SeedSequence, limit: int | None, layout: str) -> MultiMnistSplit:
    # Draw for the whole pool, then cut: a subset is exactly a prefix of the full split.
    rng = np.random.default_rng(seed)
    partner = rng.permutation(len(pool))
    shifts = _shifts(rng, len(pool), layout)
    n = len(pool) if limit is None else min(limit, len(pool))
    sources = np.stack([pool[:n], pool[partner[:n]]], axis=1).astype(np.int64)
    shifts = shifts[:n]
    out = np.empty((n, 1, DIGIT, DIGIT), dtype=np.uint8)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        out[a:b, 0] = compose(images[sources[a:b, 0]], images[sources[a:b, 1]], shifts[a:b], layout)
    return MultiMnistSplit(out, labels[sources], sources, shifts)


def build_multimnist(mnist_dir: Path, *, seed: int = 0, n_valid: int = 10_000,
                     limit: int | None = None, layout: str = "sener_koltun") -> dict[str, MultiMnistSplit]:
    """Build the three splits (uint8 images) from the MNIST idx files in `mnist_dir`.

    limit: keep only the first `limit` examples per split (identical to the first rows
    of the full build; only those are composed).
    """
    train_images, train_labels = read_mnist(mnist_dir, "train")
    test_images, test_labels = read_mnist(mnist_dir, "t10k")
    pools = split_pools(len(train_images), n_valid, seed)
    pools["test"] = np.arange(len(test_images))
    seeds = _seeds(seed)[1:]
    source = {"train": (train_images, train_labels), "valid": (train_images, train_labels),
              "test": (test_images, test_labels)}
    return {name: _build_split(*source[name], pools[name], split_seed, limit, layout)
            for name, split_seed in zip(SPLITS, seeds)}


# ---------------------------------------------------------------- cache + entry point


def cache_folder(cache_dir: Path, mnist_dir: Path, seed: int, n_valid: int,
                  limit: int | None, layout: str = "sener_koltun") -> Path:
    """One folder per (construction version, layout, source bytes, seed, n_valid, limit)."""
    digest = hashlib.sha256()
    for part in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            digest.update(_mnist_file(mnist_dir, f"{part}-{kind}-ubyte").read_bytes())
    size = "all" if limit is None else str(limit)
    return Path(cache_dir) / (f"multimnist-v{_CACHE_VERSION}-{layout}-{digest.hexdigest()[:12]}"
                              f"-seed{seed}-valid{n_valid}-n{size}")


def _save(path: Path, split: MultiMnistSplit) -> None:
    """Atomic (files.atomic_file): a crashed write never leaves a half file behind."""
    with files.atomic_file(path) as tmp, open(tmp, "wb") as fh:  # a handle: savez adds no suffix
        np.savez(fh, images=split.images, labels=split.labels, sources=split.sources,
                 shifts=split.shifts)


def _load(path: Path) -> MultiMnistSplit:
    try:
        with np.load(path, allow_pickle=False) as f:
            return MultiMnistSplit(f["images"], f["labels"], f["sources"], f["shifts"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: unreadable MultiMNIST cache file ({e}); "
                        "delete it to rebuild") from e


def load_multimnist(mnist_dir: Path, *, seed: int = 0, n_valid: int = 10_000,
                    limit: int | None = None, cache_dir: Path | None = None,
                    as_float: bool = False, layout: str = "sener_koltun") -> dict[str, MultiMnistSplit]:
    """The MultiMNIST splits {"train", "valid", "test"}, built or read from the cache.

    mnist_dir: folder with the four MNIST idx(.gz) files (e.g. ../shared/data/mnist).
    limit: first `limit` examples per split (a prefix of the full split).
    cache_dir: a git-ignored folder (e.g. <repo>/data_cache); the splits are stored
      there as .npz (no pickles) under a name holding the construction version, a hash
      of the MNIST files, layout, seed, n_valid and limit, and reused on the next call.
    as_float: images as float32 in [0, 1] instead of uint8.
    layout: "sener_koltun" or "shifted" (module docstring).
    """
    if cache_dir is None:
        splits = build_multimnist(mnist_dir, seed=seed, n_valid=n_valid, limit=limit, layout=layout)
    else:
        folder = cache_folder(cache_dir, Path(mnist_dir), seed, n_valid, limit, layout)
        paths = {name: folder / f"{name}.npz" for name in SPLITS}
        if all(p.exists() for p in paths.values()):
            splits = {name: _load(p) for name, p in paths.items()}
        else:
            splits = build_multimnist(mnist_dir, seed=seed, n_valid=n_valid, limit=limit, layout=layout)
            folder.mkdir(parents=True, exist_ok=True)
            for name, split in splits.items():
                _save(paths[name], split)
    if as_float:
        splits = {name: replace(split, images=split.images.astype(np.float32) / 255.0)
                  for name, split in splits.items()}
    return splits
