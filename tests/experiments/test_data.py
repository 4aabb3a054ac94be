"""Datasets: digits split, torchvision layouts (faked on disk), missing-file errors, batches."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from anl_fused.experiments import data


def test_digits_split_is_fixed_and_complete():
    a, b = data.load("digits"), data.load("digits")
    assert (len(a.train), len(a.val), len(a.test)) == (897, 300, 600)
    for s, t in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)
        assert s.x.dtype == torch.float32 and s.x.shape[1:] == (1, 8, 8)
        assert s.x.min() >= 0 and s.x.max() <= 1
        assert s.y.dtype == torch.int64 and set(s.y.tolist()) == set(range(10))  # stratified
    from sklearn.datasets import load_digits

    d = load_digits()
    ours = torch.cat([a.train.x, a.val.x, a.test.x]).flatten(1) * 16
    ref = torch.from_numpy(d.images.reshape(len(d.images), -1).astype(np.float32))
    # the three splits are a partition of the 1,797 images (compare as sorted multisets of rows)
    key = lambda t: sorted(map(tuple, t.round().long().tolist()))
    assert key(ours) == key(ref)
    assert a.num_classes == 10 and a.in_channels == 1


@pytest.mark.parametrize(
    "name,files",
    [
        ("cifar10", ["cifar-10-batches-py", "data_batch_1", "test_batch"]),
        ("cifar100", ["cifar-100-python", "train", "meta"]),
        ("fashion-mnist", ["FashionMNIST", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    ],
)
def test_missing_dataset_error_names_directory_and_files(tmp_path, monkeypatch, name, files):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-debian-package"))
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load(name, str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg
    for f in files:
        assert f in msg
    assert "download" in msg and "digits" in msg


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet")
    assert data.canonical_name("Fashion_MNIST") == "fashion-mnist"


def write_idx(path, array) -> None:
    """An integer ``array`` as a uint8 IDX file (gzipped when ``path`` ends in ``.gz``): fabricated dataset
    files (torchvision reads IDX files but writes none)."""
    array = np.asarray(array)
    if array.dtype.kind not in "iu":
        raise ValueError(f"cannot write dtype {array.dtype} as a uint8 IDX file")
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_raw_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-debian-package"))
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    xtr, ytr = rng.randint(0, 256, (30, 28, 28)), rng.randint(0, 10, 30)
    xte, yte = rng.randint(0, 256, (12, 28, 28)), rng.randint(0, 10, 12)
    write_idx(raw / "train-images-idx3-ubyte", xtr)
    write_idx(raw / "train-labels-idx1-ubyte", ytr)
    write_idx(raw / "t10k-images-idx3-ubyte", xte)
    write_idx(raw / "t10k-labels-idx1-ubyte", yte)
    b = data.load("fashion-mnist", str(tmp_path), val_size=10)
    assert (len(b.train), len(b.val), len(b.test)) == (20, 10, 12)
    assert b.train.x.dtype == torch.uint8 and b.train.x.shape[1:] == (1, 28, 28)
    assert torch.equal(b.test.x[:, 0], torch.from_numpy(xte.astype(np.uint8)))
    allx = torch.cat([b.train.x, b.val.x])[:, 0].flatten(1).tolist()
    assert sorted(allx) == sorted(torch.from_numpy(xtr.astype(np.uint8)).flatten(1).tolist())
    assert b.info.augment == "none" and b.in_channels == 1


def test_cifar10_from_batches(tmp_path, monkeypatch):
    """The torchvision CIFAR layout (checksums bypassed for the fake files): HWC -> CHW, uint8."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta", {**torchvision.datasets.CIFAR10.meta, "md5": None})
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.RandomState(0)
    imgs = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        x = rng.randint(0, 256, (4, 3072)).astype(np.uint8)
        imgs[name] = x
        with open(root / name, "wb") as f:
            pickle.dump({"data": x, "labels": rng.randint(0, 10, 4).tolist()}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    b = data.load("cifar10", str(tmp_path), val_size=5)
    assert (len(b.train), len(b.val), len(b.test)) == (15, 5, 4)
    assert b.test.x.dtype == torch.uint8 and b.test.x.shape == (4, 3, 32, 32)
    assert torch.equal(b.test.x, torch.from_numpy(imgs["test_batch"].reshape(4, 3, 32, 32)))
    assert b.info.augment == "crop-flip" and b.num_classes == 10


def _split(n=23, c=3, size=32):
    g = torch.Generator().manual_seed(0)
    return data.Split(torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


def test_batches_order_is_a_function_of_seed_and_epoch():
    s = _split()
    b = data.Batches(s, 5, mean=(0.5,), std=(0.25,), seed=3, augment="crop-flip")
    assert len(b) == 5
    e0 = list(b.epoch(0))
    e0_again = list(data.Batches(s, 5, mean=(0.5,), std=(0.25,), seed=3, augment="crop-flip").epoch(0))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(e0, e0_again))
    ys = torch.cat([y for _, y in e0])
    assert sorted(ys.tolist()) == sorted(s.y.tolist()) and [len(y) for _, y in e0] == [5, 5, 5, 5, 3]
    assert not torch.equal(b.order(0), b.order(1))
    assert not torch.equal(b.order(0), data.Batches(s, 5, mean=(0.5,), std=(0.25,), seed=4).order(0))
    tail = list(b.epoch(0, start=2))  # resuming mid-epoch gives exactly the remaining batches
    assert len(tail) == 3 and all(torch.equal(a[0], c[0]) for a, c in zip(tail, e0[2:]))
    assert len(data.Batches(s, 5, mean=(0.5,), std=(0.25,), drop_last=True)) == 4


def test_batches_without_augmentation_normalize():
    s = _split()
    b = data.Batches(s, 23, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), shuffle=False)
    ((x, y),) = list(b.epoch(0))
    ref = (s.x.float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / 0.5
    torch.testing.assert_close(x, ref)
    assert torch.equal(y, s.y)


def test_crop_flip_matches_torchvision():
    import torchvision.transforms.functional as TF

    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 32, 32, generator=g)
    oy, ox = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    flip = torch.tensor([True, False, True, True, False, False])
    out = data.crop_flip(x, oy, ox, flip)
    for i in range(6):
        ref = TF.crop(TF.pad(x[i], 4), int(oy[i]), int(ox[i]), 32, 32)
        ref = TF.hflip(ref) if flip[i] else ref
        assert torch.equal(out[i], ref)


def test_augmented_batches_are_crops_of_the_padded_images():
    s = _split(n=8)
    b = data.Batches(s, 8, mean=(0.0,), std=(1.0,), augment="crop-flip", seed=0, shuffle=False)
    ((x, _),) = list(b.epoch(0))
    ((x2, _),) = list(b.epoch(1))
    assert not torch.equal(x, x2)  # new crops each epoch
    assert x.shape == (8, 3, 32, 32) and x.min() >= 0 and x.max() <= 1


def _fake_fashion(folder, gz: bool, seed: int = 0, n_train: int = 30, n_test: int = 12):
    """Four random IDX files (gzipped when ``gz``) in ``folder``; returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, n_test),
    }
    for name, arr in arrays.items():
        write_idx(folder / (name + ".gz" if gz else name), arr)
    return arrays


@pytest.mark.parametrize("layout", ["flat-gz", "flat-raw", "torchvision-gz", "debian"])
def test_fashion_mnist_layouts(tmp_path, monkeypatch, layout):
    """The four IDX files straight in --data-dir (gzipped or not), in torchvision's layout, or with no
    flag where the Debian package puts them."""
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(system))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    folder = {
        "flat-gz": data_dir,
        "flat-raw": data_dir,
        "torchvision-gz": data_dir / "FashionMNIST" / "raw",
        "debian": system,
    }[layout]
    arrays = _fake_fashion(folder, gz=layout != "flat-raw")
    monkeypatch.chdir(tmp_path)  # no --data-dir: ./data (empty here), then the system's
    b = data.load("fashion-mnist", None if layout == "debian" else str(data_dir), val_size=10)
    assert b.source == str(folder)
    assert (len(b.train), len(b.val), len(b.test)) == (20, 10, 12)
    assert b.test.x.dtype == torch.uint8 and b.test.x.shape == (12, 1, 28, 28)
    assert torch.equal(b.test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.uint8)))
    assert torch.equal(b.test.y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))
    labels = torch.cat([b.train.y, b.val.y]).sort().values
    assert torch.equal(labels, torch.from_numpy(np.sort(arrays["train-labels-idx1-ubyte"]).astype(np.int64)))


def test_data_dir_wins_over_the_debian_package(tmp_path, monkeypatch):
    system, mine = tmp_path / "system", tmp_path / "mine"
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(system))
    _fake_fashion(system, gz=True, seed=1)
    arrays = _fake_fashion(mine, gz=True, seed=2)
    b = data.load("fashion-mnist", str(mine), val_size=10)
    assert b.source == str(mine)
    assert torch.equal(b.test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.uint8)))


def test_fashion_mnist_missing_is_one_line_listing_three_ways(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-debian-package"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("fashion-mnist")  # no --data-dir: ./data, then the system's
    msg = str(e.value)
    assert "\n" not in msg
    for part in (
        "dataset-fashion-mnist",
        "--data-dir",
        "train-images-idx3-ubyte.gz",
        "FashionMNIST/raw",
        str(tmp_path / "no-debian-package"),
        str(tmp_path / "data"),
    ):
        assert part in msg
    from anl_fused.cli import main

    rc = main(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--model",
            "lenet5",
            "--eps",
            "0.03",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("anl-fused train: error: Fashion-MNIST not found") and "dataset-fashion-mnist" in err


def test_read_idx_rejects_corrupted_files(tmp_path):
    good = tmp_path / "x-idx3-ubyte"
    write_idx(good, np.arange(2 * 3 * 4).reshape(2, 3, 4))
    assert data.read_idx(str(good)).shape == (2, 3, 4)
    assert torch.equal(data.read_idx(str(good)).flatten(), torch.arange(24, dtype=torch.uint8))
    raw = good.read_bytes()
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(str(tmp_path / "short"))
    (tmp_path / "junk").write_bytes(b"\x1f\x8b" + raw)
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(str(tmp_path / "junk"))
    bad = tmp_path / "d" / "train-images-idx3-ubyte"
    _fake_fashion(tmp_path / "d", gz=False)
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(data.DatasetNotFoundError, match="unreadable"):
        data.load("fashion-mnist", str(tmp_path / "d"))


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_write_idx_round_trips(tmp_path, name):
    """The tests' writer and the library's reader (torchvision's) agree, gzipped or not."""
    x = np.random.RandomState(0).randint(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(str(tmp_path / name), x)
    back = data.read_idx(str(tmp_path / name))
    assert back.dtype == torch.uint8 and torch.equal(back, torch.from_numpy(x))
    with pytest.raises(ValueError, match="cannot write"):
        write_idx(str(tmp_path / "b"), np.zeros(3, dtype=np.complex64))
