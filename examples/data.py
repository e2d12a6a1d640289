"""Image and signal data for the examples, without torchvision.

* :func:`load_digits_images` -- scikit-learn's embedded 8x8 digits, upsampled; needs no download.
* :func:`load_cifar100` -- CIFAR-100 from the standard python archive already on disk.
* :func:`load_mnist1d` -- MNIST-1D (Greydanus 2024), 1-D signals made by its procedural
  generator (the ``mnist1d`` package); needs no download.
* :func:`augment` -- the usual CIFAR augmentation (random crop with padding, horizontal flip)
  on a batch tensor, on any device.
* :func:`gaussian_blur` -- the fixed blur of the critical-period deficit (sigma = side / 8).

The image loaders return an :class:`ImageData` of float32 NCHW images and int64 labels; the
signal loader the same with float32 (N, C, L) signals.
"""

import functools
import pickle
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
MNIST1D_SAMPLES = 5000  # the generator's default: the standard 4000 train / 1000 test split
MNIST1D_LENGTH = 40  # samples per signal


@dataclass
class ImageData:
    """A train/test split: float32 images of shape (N, C, H, W) (or signals of shape (N, C, L)) and
    int64 labels of shape (N,)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_channels: int


def load_digits_images(size, seed):
    """scikit-learn's 8x8 digits (1797 images, 10 classes) as ``size`` x ``size`` images.

    Pixels are scaled from 0..16 to [0, 1], resized with bilinear interpolation, split 80/20
    into train and test by a permutation seeded with ``seed``, and standardised with the
    mean and std of the training pixels only, so no test statistics leak into training.

    Raises:
        ValueError: if ``size`` is below 8 (the digits are never downsampled).
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size must be at least 8 (the digits are 8x8), got {size}")
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    train_idx, test_idx = perm[:n_train], perm[n_train:]

    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return ImageData(x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=10, in_channels=1)


def _cifar_split(batch):
    """Images and labels of one unpickled CIFAR-100 split, normalised per channel."""
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    x = torch.from_numpy(data).to(torch.float32).div_(255)
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    x.sub_(mean).div_(std)
    y = torch.tensor(batch[b"fine_labels"], dtype=torch.int64)
    if len(y) != len(x):
        raise ValueError(f"CIFAR-100 split has {len(x)} images but {len(y)} labels")
    return x, y


def load_cifar100(data_dir):
    """CIFAR-100 (50000 train and 10000 test 32x32 RGB images, 100 fine labels) from disk.

    ``data_dir`` must hold the standard python version, either as the archive
    ``cifar-100-python.tar.gz`` or extracted as the folder ``cifar-100-python/`` with the
    files ``train`` and ``test``; the extracted folder is used when both are present.
    Nothing is downloaded. Images are scaled to [0, 1] and normalised with the usual
    CIFAR-100 per-channel mean and std.

    The files are pickles: only load archives from a source you trust.

    Raises:
        FileNotFoundError: if ``data_dir`` holds neither the archive nor the folder.
    """
    data_dir = Path(data_dir)
    folder = data_dir / CIFAR100_FOLDER
    archive = data_dir / CIFAR100_ARCHIVE
    splits = {}
    if folder.is_dir():
        for name in ("train", "test"):
            with open(folder / name, "rb") as f:
                splits[name] = pickle.load(f, encoding="bytes")
    elif archive.is_file():
        with tarfile.open(archive, "r:gz") as tar:
            for name in ("train", "test"):
                with tar.extractfile(f"{CIFAR100_FOLDER}/{name}") as f:
                    splits[name] = pickle.load(f, encoding="bytes")
    else:
        raise FileNotFoundError(
            f"CIFAR-100 not found in {data_dir}: expected {archive.name} or an extracted "
            f"{folder.name}/ folder (with files train and test); this loader never downloads")
    train_x, train_y = _cifar_split(splits["train"])
    test_x, test_y = _cifar_split(splits["test"])
    return ImageData(train_x, train_y, test_x, test_y, num_classes=100, in_channels=3)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples):
    """The generator's numpy arrays for ``num_samples`` signals, made once per process.

    The generator seeds Python's and numpy's global random state; both are put back afterwards,
    so that loading the data changes no other random stream.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    config = get_dataset_args()
    config.num_samples = num_samples
    saved = random.getstate(), np.random.get_state()
    try:
        made = make_dataset(config)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return made["x"], made["y"], made["x_test"], made["y_test"]


def load_mnist1d(num_samples=MNIST1D_SAMPLES):
    """MNIST-1D (Greydanus, *Scaling down deep learning with MNIST-1D*, ICML 2024): 10 classes of
    1-D signals of 40 samples, each a digit-like template padded, shifted, scaled, sheared and
    noised at random.

    The signals are made by the ``mnist1d`` package's generator with its default settings, its
    own fixed seed (42) and its 80/20 split, in its shuffled order: the default ``num_samples``
    of 5000 gives the standard 4000 train and 1000 test signals (the benchmark on which a small
    CNN reaches about 94% and an MLP about 68%), and a larger ``num_samples`` grows both sides of
    the split in the same proportion. The generator makes ``num_samples // 10`` signals per class
    and standardises all signals together (train and test, as the benchmark is defined). Nothing
    is downloaded and nothing is written: the arrays are generated on the first call and kept in
    memory for the process. The split does not depend on any training seed.

    Returns:
        ImageData with float32 signals of shape (N, 1, 40), int64 labels, 10 classes, 1 channel.

    Raises:
        ValueError: if ``num_samples`` is not a positive multiple of 10 (the generator makes
            equally many signals of each class and would silently drop the rest).
    """
    if not isinstance(num_samples, int) or num_samples < 10 or num_samples % 10:
        raise ValueError(f"MNIST-1D needs a positive multiple of 10 samples, got {num_samples!r}")
    arrays = _mnist1d_arrays(num_samples)
    # Fresh tensors every call: a caller may change them without touching the cached arrays.
    x_train, y_train, x_test, y_test = (torch.tensor(a) for a in arrays)
    return ImageData(x_train.float().unsqueeze(1), y_train.long(), x_test.float().unsqueeze(1), y_test.long(),
                     num_classes=10, in_channels=1)


def augment(batch, generator, *, padding=4, flip_prob=0.5):
    """Randomly crop and flip a float batch of shape (N, C, H, W); the shape is kept.

    Each image is zero-padded by ``padding`` pixels on every side, an ``H`` x ``W`` window at a
    random offset is cut out (the "random crop 32 with padding 4" of CIFAR training), and the
    image is mirrored horizontally with probability ``flip_prob``. The random numbers come
    from ``generator`` on its own device and are then moved to the batch's device, so a CPU
    generator gives the same augmentation for CPU and CUDA batches. One gather does all
    images at once.
    """
    if batch.ndim != 4:
        raise ValueError(f"augment expects an (N, C, H, W) batch, got shape {tuple(batch.shape)}")
    n, _, h, w = batch.shape
    offset_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device)
    offset_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device)
    flip = torch.rand(n, generator=generator, device=generator.device) < flip_prob
    offset_y, offset_x, flip = (t.to(batch.device) for t in (offset_y, offset_x, flip))

    padded = F.pad(batch, (padding, padding, padding, padding))
    rows = offset_y[:, None] + torch.arange(h, device=batch.device)  # (N, H)
    # A flipped image reads its window's columns right to left.
    columns = torch.arange(w, device=batch.device).expand(n, w)
    columns = torch.where(flip[:, None], columns.flip(1), columns)
    columns = offset_x[:, None] + columns  # (N, W)
    images = torch.arange(n, device=batch.device)[:, None, None]
    # Index channels-last so the three index tensors are adjacent: (N, H, W, C) out.
    out = padded.permute(0, 2, 3, 1)[images, rows[:, :, None], columns[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def deficit_sigma(side):
    """The blur of the deficit for square images of ``side`` pixels: sigma = side / 8 (2 pixels on
    the 16x16 digits, 4 on CIFAR's 32x32), strong enough to erase detail but not the rough shape."""
    return side / 8


def gaussian_blur(batch, sigma):
    """Blur every channel of an (N, C, H, W) batch with a Gaussian of std ``sigma`` pixels.

    The kernel is separable, truncated at 3 sigma and normalised to sum 1; borders are reflected
    (so a uniform image stays uniform). The shape is kept and the result is deterministic.
    """
    if batch.ndim != 4:
        raise ValueError(f"gaussian_blur expects an (N, C, H, W) batch, got shape {tuple(batch.shape)}")
    if not sigma > 0:
        raise ValueError(f"gaussian_blur needs sigma > 0, got {sigma}")
    radius = max(1, int(3 * sigma + 0.5))
    if radius >= min(batch.shape[-2:]):
        raise ValueError(f"sigma {sigma} is too large for {tuple(batch.shape[-2:])} images (radius {radius})")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)  # on the host: any device takes it
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(batch.device, batch.dtype)
    channels = batch.shape[1]
    padded = F.pad(batch, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
