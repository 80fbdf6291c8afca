"""MultiMNIST (Sener & Koltun 2018): idx parsing, geometry, labels, splits, cache; LeNet."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import shared_file
from mtlrec.features import multimnist as mm
from mtlrec.features.errors import DataError
from mtlrec.models.lenet import MultiLeNet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shared_file(f"mnist/{name}")
    return shared_file("mnist")


@pytest.fixture(scope="module")
def small(mnist_dir: Path) -> dict[str, mm.MultiMnistSplit]:
    return mm.load_multimnist(mnist_dir, seed=3, limit=300)


def _idx_bytes(magic: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    return header + payload


# ---------------------------------------------------------------- idx parsing


def test_read_idx_round_trip_plain_and_gzip(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx_bytes(0x0803, data.shape, data.tobytes())
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(mm.read_idx(tmp_path / "a.idx", 3), data)
    assert np.array_equal(mm.read_idx(tmp_path / "a.idx.gz", 3), data)


@pytest.mark.parametrize("raw, match", [
    (_idx_bytes(0x0801, (4,), bytes(4)), r"magic number is 0x00000801, expected 0x00000803"),
    (_idx_bytes(0x0803, (2, 3, 4), bytes(23)), r"shape \(2, 3, 4\) \(24 bytes\).*23 bytes"),
    (_idx_bytes(0x0803, (2, 3, 4), bytes(25)), r"holds 25 bytes"),
    (b"\x00\x00", r"shorter than 4 bytes"),
    (_idx_bytes(0x0803, (2,), b""), r"truncated idx header"),
])
def test_read_idx_rejects_bad_files_naming_them(tmp_path, raw, match):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=match) as err:
        mm.read_idx(path, 3)
    assert str(path) in str(err.value)


def test_corrupt_gzip_and_missing_file_are_data_errors(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="x.gz: cannot read"):
        mm.read_idx(tmp_path / "x.gz", 1)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*missing"):
        mm.read_mnist(tmp_path, "train")


def test_read_mnist_checks_label_count(tmp_path):
    images = _idx_bytes(0x0803, (3, 28, 28), bytes(3 * 784))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(images)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(0x0801, (2,), bytes(2)))
    with pytest.raises(DataError, match="2 labels for 3 images"):
        mm.read_mnist(tmp_path, "t10k")


# ---------------------------------------------------------------- geometry


def _blob(value: int = 200) -> np.ndarray:
    """A crafted 'digit': a 6×6 square in the middle of a 28×28 image."""
    img = np.zeros((1, 28, 28), dtype=np.uint8)
    img[0, 11:17, 11:17] = value
    return img


def _centroid(img: np.ndarray) -> np.ndarray:
    w = img.astype(float)
    rows, cols = np.indices(w.shape)
    return np.array([(w * rows).sum(), (w * cols).sum()]) / w.sum()


@pytest.mark.parametrize("shift", [1, 2, 4])
def test_left_digit_goes_up_left_and_right_digit_down_right(shift):
    empty = np.zeros_like(_blob())
    shifts = np.array([[shift, shift, shift, shift]])
    canvas_left = mm.overlay(_blob(), empty, shifts)[0]
    canvas_right = mm.overlay(empty, _blob(), shifts)[0]
    centre = (mm.CANVAS - 1) / 2  # a centred blob's centroid
    assert np.allclose(_centroid(canvas_left), centre - shift)
    assert np.allclose(_centroid(canvas_right), centre + shift)
    # after the 36 → 28 resize the left digit is still up-left of the right one
    left, right = mm.resize(canvas_left[None])[0], mm.resize(canvas_right[None])[0]
    assert (_centroid(left) < 13.5 - 0.5 * shift).all()
    assert (_centroid(right) > 13.5 + 0.5 * shift).all()


def test_shifts_move_each_axis_independently():
    empty = np.zeros_like(_blob())
    canvas = mm.overlay(_blob(), empty, np.array([[1, 4, 0, 0]]))[0]
    assert np.allclose(_centroid(canvas), [(mm.CANVAS - 1) / 2 - 1, (mm.CANVAS - 1) / 2 - 4])
    with pytest.raises(ValueError, match="shifts must lie in 0..4"):
        mm.overlay(_blob(), empty, np.array([[5, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shifts must lie in 0..4"):
        mm.overlay(_blob(), empty, np.array([[-1, 0, 0, 0]]))


def test_overlap_takes_the_max_of_the_two_digits():
    left, right = np.full((1, 28, 28), 100, np.uint8), np.full((1, 28, 28), 30, np.uint8)
    right[0, :5, :5] = 250
    canvas = mm.overlay(left, right, np.array([[1, 1, 1, 1]]))[0]
    # left covers canvas rows/cols 3..30, right 5..32
    assert canvas[3, 3] == 100 and canvas[32, 32] == 30 and canvas[0, 0] == 0
    assert canvas[20, 20] == 100  # overlap: max(100, 30)
    assert canvas[5, 5] == 250  # overlap: max(100, 250)


def test_area_resize_keeps_constants_and_mean_intensity():
    rng = np.random.default_rng(0)
    flat = np.full((1, 36, 36), 77, np.uint8)
    assert (mm.resize(flat) == 77).all()
    noise = rng.integers(0, 256, size=(4, 36, 36)).astype(np.uint8)
    out = mm.resize(noise)
    assert out.shape == (4, 28, 28) and out.dtype == np.uint8
    assert np.allclose(out.mean(axis=(1, 2)), noise.mean(axis=(1, 2)), atol=0.6)
    # a one-pixel line survives wherever it is (nearest-neighbour drops 8 of 36 rows)
    lines = np.zeros((36, 36, 36), np.uint8)
    lines[np.arange(36), np.arange(36), :] = 255
    assert (mm.resize(lines).max(axis=(1, 2)) > 0).all()


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize("layout", mm.LAYOUTS)
def test_splits_shapes_dtypes_and_labels_match_their_sources(mnist_dir, layout):
    mnist = {"train": mm.read_mnist(mnist_dir, "train"), "test": mm.read_mnist(mnist_dir, "t10k")}
    splits = mm.load_multimnist(mnist_dir, seed=3, limit=300, layout=layout)
    for name, split in splits.items():
        assert len(split) == 300
        assert split.images.shape == (300, 1, 28, 28) and split.images.dtype == np.uint8
        assert split.labels.shape == (300, 2) and split.labels.dtype == np.int64
        if layout == "shifted":
            assert ((split.shifts >= 1) & (split.shifts <= 4)).all()
        else:
            assert (split.shifts == [4, 4, 2, 2]).all()
        images, labels = mnist["test" if name == "test" else "train"]
        assert np.array_equal(split.labels, labels[split.sources])
        rebuilt = mm.compose(images[split.sources[:, 0]], images[split.sources[:, 1]], split.shifts, layout)
        assert np.array_equal(split.images[:, 0], rebuilt)
    # the two digits of a pair are mostly different images, with both label columns varied
    assert (splits["train"].sources[:, 0] != splits["train"].sources[:, 1]).mean() > 0.99
    assert len(np.unique(splits["train"].labels[:, 1])) == 10


def test_default_layout_is_sener_and_koltuns_loader(mnist_dir, small):
    """Replay of the authors' construction (their multi_mnist_loader, written here with
    PIL as they did): left digit at (0, 0) and right digit at (6, 6) of a 36×36 canvas,
    the overlap the max of the two, resized to 28×28 with PIL's NEAREST."""
    from PIL import Image

    images, _ = mm.read_mnist(mnist_dir, "train")
    split = small["train"]
    for row in range(20):
        left, right = images[split.sources[row, 0]], images[split.sources[row, 1]]
        canvas = np.zeros((36, 36), np.uint8)
        canvas[0:28, 0:28] = left
        canvas[6:34, 6:34] = right
        canvas[6:28, 6:28] = np.maximum(left[6:28, 6:28], right[0:22, 0:22])
        expected = np.array(Image.fromarray(canvas).resize((28, 28), resample=Image.NEAREST))
        assert np.array_equal(split.images[row, 0], expected), row


def test_validation_is_carved_from_train_disjointly():
    pools = mm.split_pools(60_000, 10_000, seed=0)
    assert len(pools["train"]) == 50_000 and len(pools["valid"]) == 10_000
    assert not np.intersect1d(pools["train"], pools["valid"]).size
    assert np.array_equal(np.union1d(pools["train"], pools["valid"]), np.arange(60_000))
    assert not np.array_equal(pools["valid"], mm.split_pools(60_000, 10_000, seed=1)["valid"])
    with pytest.raises(ValueError, match="n_valid"):
        mm.split_pools(100, 100, seed=0)


def test_pairs_never_mix_train_and_validation(mnist_dir, small):
    pools = mm.split_pools(60_000, 10_000, seed=3)
    assert np.isin(small["train"].sources, pools["train"]).all()
    assert np.isin(small["valid"].sources, pools["valid"]).all()


def test_same_seed_gives_identical_bytes_and_a_subset_is_a_prefix(mnist_dir, small):
    again = mm.load_multimnist(mnist_dir, seed=3, limit=300)
    shorter = mm.load_multimnist(mnist_dir, seed=3, limit=120)
    other = mm.load_multimnist(mnist_dir, seed=4, limit=300)
    for name in mm.SPLITS:
        for field in ("images", "labels", "sources", "shifts"):
            a, b = getattr(small[name], field), getattr(again[name], field)
            assert a.tobytes() == b.tobytes()
            assert np.array_equal(getattr(shorter[name], field), a[:120])
        assert not np.array_equal(small[name].images, other[name].images)


def test_cache_writes_npz_and_is_reused(mnist_dir, small, tmp_path, monkeypatch):
    first = mm.load_multimnist(mnist_dir, seed=3, limit=300, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["test.npz", "train.npz", "valid.npz"]

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt instead of reading the cache")

    monkeypatch.setattr(mm, "build_multimnist", no_build)
    cached = mm.load_multimnist(mnist_dir, seed=3, limit=300, cache_dir=tmp_path, as_float=True)
    for name in mm.SPLITS:
        assert np.array_equal(first[name].images, small[name].images)
        assert cached[name].images.dtype == np.float32 and cached[name].images.max() <= 1.0
        assert np.allclose(cached[name].images * 255.0, small[name].images)
        assert np.array_equal(cached[name].labels, small[name].labels)
    with pytest.raises(AssertionError, match="rebuilt"):  # another seed is another cache entry
        mm.load_multimnist(mnist_dir, seed=4, limit=300, cache_dir=tmp_path)


# ---------------------------------------------------------------- model


def test_lenet_shapes_and_parameter_groups():
    torch.manual_seed(0)
    model = MultiLeNet()
    x = torch.rand(5, 1, 28, 28)
    z = model.representation(x)
    logits = model(x)
    assert z.shape == (5, 50) and logits.shape == (5, 2, 10)
    assert torch.equal(model.heads(z), logits)
    assert torch.equal(model.decode(model.encode(x)), logits)
    groups = [model.shared_parameters(), model.task_parameters(0), model.task_parameters(1)]
    ids = [{id(p) for p in g} for g in groups]
    assert all(len(i) == len(g) for i, g in zip(ids, groups))
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == {id(p) for p in model.parameters()}
    model.zero_grad()
    logits[:, 1].sum().backward()  # task 1's loss reaches the encoder and head 1 only
    assert all(p.grad is None or not p.grad.any() for p in groups[1])
    assert all(p.grad is not None and p.grad.any() for p in groups[2])
    assert all(p.grad is not None for p in groups[0])


def test_lenet_overfits_64_multimnist_examples(small):
    torch.manual_seed(0)
    x = torch.from_numpy(small["train"].images[:64]).float() / 255.0
    y = torch.from_numpy(small["train"].labels[:64])
    model = MultiLeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x).reshape(-1, 10), y.reshape(-1))

    start = loss().item()
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    end = loss().item()
    assert start > 2.0 and end < 0.3 * start, (start, end)
