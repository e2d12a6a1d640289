"""The example data helpers (examples/data.py): digits, a tiny on-disk CIFAR-100, MNIST-1D, augmentation."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from tests.helpers import load_example

data = load_example("data")

N_DIGITS = 1797


# --- digits -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [8, 16])
def test_digits_shapes_and_labels(size):
    d = data.load_digits_images(size, seed=0)
    n_train = int(0.8 * N_DIGITS)
    assert d.train_x.shape == (n_train, 1, size, size)
    assert d.test_x.shape == (N_DIGITS - n_train, 1, size, size)
    assert d.train_x.dtype == d.test_x.dtype == torch.float32
    assert d.train_y.dtype == d.test_y.dtype == torch.int64
    assert d.train_y.shape == (n_train,) and d.test_y.shape == (N_DIGITS - n_train,)
    assert (d.num_classes, d.in_channels) == (10, 1)
    labels = torch.cat([d.train_y, d.test_y])
    assert labels.min() == 0 and labels.max() == 9
    # Train and test together hold every image once: the label counts of the whole set.
    from sklearn.datasets import load_digits
    expected = torch.bincount(torch.as_tensor(load_digits().target), minlength=10)
    assert torch.equal(torch.bincount(labels, minlength=10), expected)


def test_digits_normalised_with_training_statistics():
    d = data.load_digits_images(16, seed=0)
    assert abs(d.train_x.mean().item()) < 1e-4
    assert abs(d.train_x.std().item() - 1) < 1e-4
    # The test set is standardised with the training statistics, so only roughly.
    assert abs(d.test_x.mean().item()) < 0.1
    assert abs(d.test_x.std().item() - 1) < 0.1


def test_digits_split_is_deterministic():
    a = data.load_digits_images(8, seed=3)
    b = data.load_digits_images(8, seed=3)
    c = data.load_digits_images(8, seed=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_y, c.train_y)


def test_digits_too_small_raises():
    with pytest.raises(ValueError, match="at least 8"):
        data.load_digits_images(4, seed=0)


# --- MNIST-1D -----------------------------------------------------------------------------

def test_mnist1d_is_the_standard_split_of_40_sample_signals():
    pytest.importorskip("mnist1d")
    d = data.load_mnist1d()
    assert d.train_x.shape == (4000, 1, 40) and d.test_x.shape == (1000, 1, 40)
    assert d.train_x.dtype == d.test_x.dtype == torch.float32
    assert d.train_y.dtype == d.test_y.dtype == torch.int64
    assert (d.num_classes, d.in_channels) == (10, 1)
    # 500 signals of each class in all, standardised together by the generator.
    assert torch.equal(torch.bincount(torch.cat([d.train_y, d.test_y])), torch.full((10,), 500))
    everything = torch.cat([d.train_x, d.test_x])
    assert abs(everything.mean().item()) < 1e-3 and abs(everything.std().item() - 1) < 1e-2


def test_mnist1d_is_deterministic_grows_with_the_samples_and_leaves_global_randomness_alone():
    pytest.importorskip("mnist1d")
    import random

    np.random.seed(7)
    random.seed(7)
    expected = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    a = data.load_mnist1d(200)
    assert (np.random.rand(), random.random()) == expected
    a.train_x.zero_()  # a caller's change does not reach the cached arrays
    data._mnist1d_arrays.cache_clear()
    b, c = data.load_mnist1d(200), data.load_mnist1d(200)
    assert b.train_x.shape == (160, 1, 40) and b.test_x.shape == (40, 1, 40)
    assert torch.equal(b.train_x, c.train_x) and torch.equal(b.test_y, c.test_y) and b.train_x.abs().sum() > 0


@pytest.mark.parametrize("samples", [0, 5, 25, 20.0])
def test_mnist1d_bad_sample_count_raises(samples):
    with pytest.raises(ValueError, match="positive multiple of 10"):
        data.load_mnist1d(samples)


# --- CIFAR-100 ----------------------------------------------------------------------------

def fake_split(n, seed):
    """A CIFAR-100-style split dict of ``n`` random images, as pickled in the real archive."""
    rng = np.random.default_rng(seed)
    return {
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
        b"fine_labels": rng.integers(0, 100, n).tolist(),
        b"coarse_labels": rng.integers(0, 20, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }


@pytest.fixture
def fake_cifar(tmp_path):
    """(splits, archive dir, folder dir): the same 5 + 3 images as a .tar.gz and extracted."""
    splits = {"train": fake_split(5, 0), "test": fake_split(3, 1)}
    archive_dir, folder_dir = tmp_path / "archive", tmp_path / "folder"
    archive_dir.mkdir()
    (folder_dir / "cifar-100-python").mkdir(parents=True)
    with tarfile.open(archive_dir / "cifar-100-python.tar.gz", "w:gz") as tar:
        for name, split in splits.items():
            payload = pickle.dumps(split)
            (folder_dir / "cifar-100-python" / name).write_bytes(payload)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return splits, archive_dir, folder_dir


def expected_images(split):
    """The reference normalisation, written out per channel."""
    raw = split[b"data"].reshape(-1, 3, 32, 32).astype(np.float64) / 255
    mean = np.array([0.5071, 0.4865, 0.4409]).reshape(1, 3, 1, 1)
    std = np.array([0.2673, 0.2564, 0.2762]).reshape(1, 3, 1, 1)
    return torch.from_numpy((raw - mean) / std).to(torch.float32)


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_cifar100_loads_both_forms(fake_cifar, form):
    splits, archive_dir, folder_dir = fake_cifar
    d = data.load_cifar100(archive_dir if form == "archive" else str(folder_dir))
    assert d.train_x.shape == (5, 3, 32, 32) and d.test_x.shape == (3, 3, 32, 32)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert (d.num_classes, d.in_channels) == (100, 3)
    assert d.train_y.tolist() == splits["train"][b"fine_labels"]
    assert d.test_y.tolist() == splits["test"][b"fine_labels"]
    torch.testing.assert_close(d.train_x, expected_images(splits["train"]))
    torch.testing.assert_close(d.test_x, expected_images(splits["test"]))


def test_cifar100_channel_layout(tmp_path):
    # Channel-major rows: the first 1024 bytes are red. An all-red image: red at its max, blue at 0.
    split = {b"data": np.zeros((1, 3072), dtype=np.uint8), b"fine_labels": [7]}
    split[b"data"][0, :1024] = 255
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps(split))
    x = data.load_cifar100(tmp_path).train_x[0]
    assert torch.allclose(x[0], torch.tensor((1 - 0.5071) / 0.2673))
    assert torch.allclose(x[2], torch.tensor(-0.4409 / 0.2762))


def test_cifar100_missing_raises(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        data.load_cifar100(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "cifar-100-python.tar.gz" in message and "cifar-100-python/" in message
    assert "\n" not in message


# --- augmentation -------------------------------------------------------------------------

def test_augment_keeps_shape_and_is_reproducible():
    batch = torch.randn(16, 3, 32, 32)
    a = data.augment(batch, torch.Generator().manual_seed(0))
    b = data.augment(batch, torch.Generator().manual_seed(0))
    c = data.augment(batch, torch.Generator().manual_seed(1))
    assert a.shape == batch.shape and a.dtype == batch.dtype
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # With 16 images, at least one is shifted or flipped (all unchanged has odds 1 / 162^16).
    assert any(not torch.equal(a[i], batch[i]) for i in range(len(batch)))


def test_augment_crop_is_a_shifted_window_of_the_padded_image():
    batch = torch.randn(32, 2, 32, 32)
    out = data.augment(batch, torch.Generator().manual_seed(0), flip_prob=0.0)
    padded = torch.nn.functional.pad(batch, (4, 4, 4, 4))
    for i in range(len(batch)):
        windows = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert windows, f"image {i} is not a 32x32 window of the padded image"
    # Shifts zero-pad: some image has a zero border row or column.
    assert (out == 0).any()


def test_augment_flip_only():
    batch = torch.randn(4, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    flipped = data.augment(batch, generator, padding=0, flip_prob=1.0)
    assert torch.equal(flipped, torch.flip(batch, dims=[3]))
    assert torch.equal(data.augment(batch, generator, padding=0, flip_prob=0.0), batch)


def test_augment_rejects_non_image_batch():
    with pytest.raises(ValueError):
        data.augment(torch.zeros(3, 32, 32), torch.Generator())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_cpu_generator_on_cuda_matches_cpu():
    batch = torch.randn(8, 3, 32, 32)
    cpu = data.augment(batch, torch.Generator().manual_seed(0))
    cuda = data.augment(batch.cuda(), torch.Generator().manual_seed(0))
    assert torch.equal(cuda.cpu(), cpu)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 4.0])
def test_gaussian_blur_is_scipys_gaussian_filter_with_mirrored_borders(sigma):
    """The same Gaussian, truncated at 3 sigma, with borders reflected about the edge pixel (what
    scipy calls "mirror"), over height and width only."""
    ndimage = pytest.importorskip("scipy.ndimage")
    batch = torch.randn(3, 2, 32, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = ndimage.gaussian_filter(batch.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    blurred = data.gaussian_blur(batch, sigma)
    assert blurred.shape == batch.shape and blurred.dtype == batch.dtype
    np.testing.assert_allclose(blurred.numpy(), expected, rtol=0, atol=1e-12)


def test_gaussian_blur_keeps_uniform_images_and_the_deficit_scale():
    assert data.deficit_sigma(16) == 2.0 and data.deficit_sigma(32) == 4.0
    uniform = torch.full((2, 3, 16, 16), 0.25)
    assert torch.allclose(data.gaussian_blur(uniform, 2.0), uniform, atol=1e-7)
    images = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert data.gaussian_blur(images, 2.0).std() < 0.5 * images.std()  # detail is erased


@pytest.mark.parametrize("batch,sigma,message", [
    (torch.zeros(16, 16), 1.0, "expects an"),
    (torch.zeros(1, 1, 16, 16), 0.0, "sigma > 0"),
    (torch.zeros(1, 1, 16, 16), 6.0, "too large"),
])
def test_gaussian_blur_bad_input(batch, sigma, message):
    with pytest.raises(ValueError, match=message):
        data.gaussian_blur(batch, sigma)
