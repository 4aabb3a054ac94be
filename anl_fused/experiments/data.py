"""Datasets for the paper's experiments, held as tensors, with batched on-device augmentation.

:func:`load` returns ``train`` / ``val`` / ``test`` :class:`Split` s (``uint8`` or ``float32`` in [0, 1], NCHW) of
``cifar10`` / ``cifar100`` (torchvision's files, downloaded only with ``download=True``), ``fashion-mnist`` (four
IDX files: see :func:`find_fashion_mnist`) and ``digits`` (scikit-learn's ``load_digits``, offline: train 897 /
val 300 / test 600, stratified). The others hold out 5,000 training images (seeded, fixed) for validation.

:class:`Batches`: order and augmentation (CIFAR: pad 4, random crop, random flip, sec. 4.2.1) are functions of
``(seed, epoch)`` only, and an epoch can start at any step: what makes ``--resume`` exact.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: where datasets are looked for when no data directory is given (first; then, for Fashion-MNIST, the system's)
DEFAULT_DATA_DIR = "./data"
#: where the Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST's four gzipped IDX files
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not under the data directory (and downloading was not asked for)."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    mean: tuple
    std: tuple
    augment: str  # "crop-flip" or "none"
    val_size: int
    files: tuple  # relative to data_dir, for the error message
    description: str


_CIFAR10 = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
DATASETS: dict[str, DatasetInfo] = {
    i.name: i
    for i in (
        DatasetInfo(
            "cifar10", 10, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop-flip", 5000,
            tuple(f"cifar-10-batches-py/{f}" for f in _CIFAR10), "CIFAR-10 (torchvision.datasets.CIFAR10 layout)",
        ),
        DatasetInfo(
            "cifar100", 100, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop-flip", 5000,
            ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
            "CIFAR-100 (torchvision.datasets.CIFAR100 layout)",
        ),
        DatasetInfo(
            "fashion-mnist", 10, 1, (0.2860,), (0.3530,), "none", 5000,
            tuple(f"FashionMNIST/raw/{f}" for f in FASHION_MNIST_FILES),
            "Fashion-MNIST (four IDX files, gzipped or not)",
        ),
        DatasetInfo(
            "digits", 10, 1, (0.3058,), (0.3759,), "none", 300, (),
            "scikit-learn load_digits: 1,797 real 8x8 handwritten digits, offline",
        ),
    )
}  # fmt: skip
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"}
_ALIASES |= {"cifar-10": "cifar10", "cifar-100": "cifar100"}


@dataclass
class Split:
    """Images ``x`` (N, C, H, W; ``uint8`` 0..255 or ``float32`` 0..1) and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class DataBundle:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    source: str = ""  # where the files were read from ("" for digits)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def in_channels(self) -> int:
        return self.info.in_channels


def canonical_name(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def _missing_error(info: DatasetInfo, data_dir: str, reason: str = "") -> DatasetNotFoundError:
    root = os.path.abspath(data_dir)
    missing = [f for f in info.files if not os.path.exists(os.path.join(root, f))]
    lines = "\n".join(f"  {os.path.join(root, f)}{'  (missing)' if f in missing else ''}" for f in info.files)
    tv = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[info.name]
    return DatasetNotFoundError(
        f"{info.description} not found, incomplete or corrupted in data directory {root!r}"
        f"{f' (torchvision: {reason})' if reason else ''}.\n"
        f"Expected files:\n{lines}\n"
        f"Downloading is off by default (and impossible without internet). On a machine with internet run\n"
        f'  python -c "import torchvision; torchvision.datasets.{tv}({root!r}, download=True)"\n'
        f"and copy the directory here, pass --download, or use --dataset digits (offline, ships with scikit-learn)."
    )


def _split_holdout(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.RandomState(0).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def _load_torchvision(info: DatasetInfo, data_dir: str, download: bool):
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[info.name]
    try:
        train = cls(data_dir, train=True, download=download)
        test = cls(data_dir, train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. ..."
        if download:
            raise
        raise _missing_error(info, data_dir, str(e)) from e

    def to_tensors(ds) -> tuple[Tensor, Tensor]:  # (N, H, W, C) uint8 -> NCHW
        x = torch.as_tensor(np.asarray(ds.data, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    return to_tensors(train), to_tensors(test)


def read_idx(path: str) -> Tensor:
    """An IDX file (LeCun's MNIST format), gzipped when ``path`` ends in ``.gz``, read by torchvision
    (``datasets.utils.extract_archive`` unpacks it, ``datasets.mnist.read_sn3_pascalvincent_tensor`` reads it).
    A file that is not one (truncated, not gzip, a CRC error, no data) raises ``ValueError`` naming it."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    from torchvision.datasets.utils import extract_archive

    with tempfile.TemporaryDirectory(prefix="anl-fused-") as tmp:
        try:
            plain = extract_archive(path, tmp) if path.endswith(".gz") else path
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path!r} is truncated or not a gzip file ({type(e).__name__}: {e})") from None
        try:  # torchvision checks the format with assert
            return read_sn3_pascalvincent_tensor(plain, strict=True)
        except (AssertionError, KeyError, ValueError, RuntimeError) as e:
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise ValueError(f"{path!r} is not an IDX file, or is truncated or empty (torchvision: {why})") from None


def _idx_files_in(folder: str) -> dict[str, str]:
    """The Fashion-MNIST files in ``folder`` by name: each uncompressed, else gzipped."""
    return {n: p for n in FASHION_MNIST_FILES for z in (".gz", "") if os.path.isfile(p := os.path.join(folder, n + z))}


def find_fashion_mnist(data_dir: str | None = None) -> list[str] | None:
    """The paths of Fashion-MNIST's four IDX files (train images, train labels, test images, test
    labels): in ``data_dir`` itself or in torchvision's layout ``data_dir/FashionMNIST/raw``; with no
    ``data_dir`` in ``./data`` (either layout), then the Debian package's :data:`FASHION_MNIST_SYSTEM_DIR`.
    ``None`` when none of them holds all four (an explicit ``data_dir`` never falls back elsewhere)."""
    for folder in [DEFAULT_DATA_DIR, FASHION_MNIST_SYSTEM_DIR] if data_dir is None else [data_dir]:
        for files in (_idx_files_in(folder), _idx_files_in(os.path.join(folder, "FashionMNIST", "raw"))):
            if len(files) == len(FASHION_MNIST_FILES):
                return [files[n] for n in FASHION_MNIST_FILES]
    return None


def _fashion_mnist_missing(data_dir: str | None) -> DatasetNotFoundError:
    names = ", ".join(f + ".gz" for f in FASHION_MNIST_FILES)
    if data_dir is not None:
        root = os.path.abspath(data_dir)
        found = {**_idx_files_in(root), **_idx_files_in(os.path.join(root, "FashionMNIST", "raw"))}
        missing = ", ".join(f for f in FASHION_MNIST_FILES if f not in found)
        state = f"lacks {missing} (gzipped or not)" if os.path.isdir(root) else "does not exist"
        return DatasetNotFoundError(
            f"--data-dir {data_dir!r} {state}: it must hold the four Fashion-MNIST IDX files {names} (in it or in "
            f"its FashionMNIST/raw/); fix the path, pass --download, leave --data-dir out (./data, then "
            f"{FASHION_MNIST_SYSTEM_DIR!r}), or use --dataset digits (offline)"
        )
    root = os.path.abspath(DEFAULT_DATA_DIR)
    return DatasetNotFoundError(
        f"Fashion-MNIST not found (looked in {root!r}, {os.path.join(root, 'FashionMNIST', 'raw')!r} and "
        f"{FASHION_MNIST_SYSTEM_DIR!r}); three ways to provide it: (1) install the Debian package "
        f"(apt-get install dataset-fashion-mnist; found with no flag), (2) --data-dir DIR with the four IDX files "
        f"{names} (gzipped or not) in DIR, (3) --data-dir DIR in torchvision's layout DIR/FashionMNIST/raw/ "
        f"(e.g. torchvision.datasets.FashionMNIST(DIR, download=True) on a machine with internet, or --download); "
        f"or use --dataset digits (offline, ships with scikit-learn)"
    )


def _load_fashion_mnist(data_dir: str | None, download: bool):
    files = find_fashion_mnist(data_dir)
    if files is None and download:
        import torchvision

        torchvision.datasets.FashionMNIST(data_dir or DEFAULT_DATA_DIR, train=True, download=True)
        files = find_fashion_mnist(data_dir or DEFAULT_DATA_DIR)
    if files is None:
        raise _fashion_mnist_missing(data_dir)
    try:
        xtr, ytr, xte, yte = (read_idx(f) for f in files)
    except ValueError as e:
        raise DatasetNotFoundError(f"Fashion-MNIST in {os.path.dirname(files[0])!r} is unreadable: {e}") from e
    for x, y, f, g in ((xtr, ytr, *files[:2]), (xte, yte, *files[2:])):
        shape, labels = f"images {tuple(x.shape)} {x.dtype}, labels {tuple(y.shape)} {y.dtype}", y.unique().tolist()
        if x.dtype != torch.uint8 or x.shape[1:] != (28, 28) or y.shape != x.shape[:1] or not len(y):
            raise DatasetNotFoundError(f"{f!r}: expected 28x28 uint8 images (N > 0) and as many labels, got {shape}")
        if not set(labels) <= set(range(10)):
            raise DatasetNotFoundError(f"{g!r}: labels must be 0..9, found {labels}")
    source = os.path.dirname(os.path.abspath(files[0]))
    return (xtr.unsqueeze(1), ytr.long()), (xte.unsqueeze(1), yte.long()), source


def _load_digits() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=600, random_state=0, stratify=y)
    train, val = train_test_split(rest, test_size=300, random_state=1, stratify=y[rest])
    t = lambda i: (torch.from_numpy(x[np.sort(i)]).contiguous(), torch.from_numpy(y[np.sort(i)]))
    return t(train), t(val), t(test)


def load(
    name: str = "digits",
    data_dir: str | None = None,
    *,
    val_size: int | None = None,
    download: bool = False,
) -> DataBundle:
    """Load dataset ``name`` (see module docstring) from ``data_dir``, or its default places
    (``None``; an explicit directory is used or refused). ``val_size``: how many training images to hold
    out for validation (default: 5,000 for CIFAR / Fashion-MNIST; digits has a fixed 300 split), the same images
    in every run."""
    info = DATASETS[canonical_name(name)]
    if info.name == "digits":
        (xtr, ytr), (xva, yva), (xte, yte) = _load_digits()
        if val_size is not None and val_size != len(yva):
            raise ValueError(f"digits has a fixed validation split of {len(yva)} images; got val_size={val_size}")
        return DataBundle(info, Split(xtr, ytr), Split(xva, yva), Split(xte, yte))
    if info.name == "fashion-mnist":
        (x, y), (xte, yte), source = _load_fashion_mnist(data_dir, download)
    else:
        data_dir = data_dir or DEFAULT_DATA_DIR
        (x, y), (xte, yte) = _load_torchvision(info, data_dir, download)
        source = os.path.abspath(data_dir)
    k = info.val_size if val_size is None else int(val_size)
    if not 0 <= k < len(y):
        raise ValueError(f"val_size must be in [0, {len(y)}), got {k}")
    tr, va = _split_holdout(len(y), k)
    return DataBundle(info, Split(x[tr], y[tr]), Split(x[va], y[va]), Split(xte, yte), source)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    h = 0x345678
    for p in parts:
        h = (h * 1000003) ^ (int(p) & 0xFFFFFFFFFFFF)
        h &= (1 << 63) - 1
    return h


class Batches:
    """Device batches of a split: shuffled per epoch, optionally augmented, normalized.

    ``for x, y in batches.epoch(e, start=k)`` yields the batches of epoch ``e`` from step ``k`` on. Everything random
    depends on ``(seed, epoch)`` only. The split is moved to ``device`` once."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        mean,
        std,
        device="cpu",
        shuffle: bool = True,
        augment: str = "none",
        seed: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if augment not in ("none", "crop-flip"):
            raise ValueError(f"augment must be 'none' or 'crop-flip', got {augment!r}")
        self.device = torch.device(device)
        self.split = split.to(self.device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = drop_last
        self.channels_last = channels_last
        c = split.x.shape[1]
        mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        if mean.numel() == 1:
            mean, std = mean.expand(c), std.expand(c)
        self.mean = mean.view(1, c, 1, 1).to(self.device)
        self.std = std.view(1, c, 1, 1).to(self.device)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 1))
        return torch.randperm(n, generator=g)

    def _aug_params(self, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        n = len(self.split)
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 2))
        oy = torch.randint(0, 9, (n,), generator=g)
        ox = torch.randint(0, 9, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        return oy.to(self.device), ox.to(self.device), flip.to(self.device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.order(epoch).to(self.device)
        aug = self._aug_params(epoch) if self.augment == "crop-flip" else None
        for step in range(start, len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = self.split.x.index_select(0, idx)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            if aug is not None:
                x = crop_flip(x, *(a.index_select(0, idx) for a in aug))
            x = (x - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.split.y.index_select(0, idx)


def crop_flip(x: Tensor, oy: Tensor, ox: Tensor, flip: Tensor, pad: int = 4) -> Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``pad``, crop H x W at per-sample offsets ``(oy, ox)`` in
    [0, 2*pad], and flip horizontally where ``flip``: torchvision's ``RandomCrop(padding=4)`` +
    ``RandomHorizontalFlip`` for a whole batch in three tensor ops."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (oy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = ox.view(n, 1) + torch.arange(w, device=x.device)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols).view(n, 1, 1, w)
    b = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    ch = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return xp[b, ch, rows, cols]
