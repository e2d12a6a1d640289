"""The example models (examples/models.py): forward shapes, parameter shapes, option-A shortcuts, the 1-D
networks of MNIST-1D."""

import pytest
import torch
from torch import nn

from benchmarks.shapes import cifar_resnet as resnet_shapes
from benchmarks.shapes import cifar_vgg16_bn as vgg_shapes
from tests.helpers import load_example

models = load_example("models")
IMAGE_MODELS = sorted(set(models.MODELS) - set(models.SIGNAL_MODELS))


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: the forwards here are tiny, and with several threads on a busy
    machine their synchronisation costs seconds per ResNet-56 pass."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def eligible_shapes(model):
    """Shapes of the parameters with ndim > 1 (conv and linear weights), in order."""
    return [tuple(p.shape) for p in model.parameters() if p.ndim > 1]


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("in_channels, size, num_classes", [(3, 32, 100), (1, 16, 10)])
def test_forward_shape(name, in_channels, size, num_classes):
    torch.manual_seed(0)
    model = models.MODELS[name](in_channels, num_classes)
    x = torch.randn(2, in_channels, size, size)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, num_classes)


@pytest.mark.parametrize("name", models.SIGNAL_MODELS)
def test_signal_models_take_signals(name):
    torch.manual_seed(0)
    model = models.MODELS[name](in_channels=1, num_classes=10)
    x = torch.randn(3, 1, models.MNIST1D_LENGTH)
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    with pytest.raises(RuntimeError):
        model(torch.randn(3, 1, 16, 16))


def test_builders_accept_keywords():
    for name, build in models.MODELS.items():
        model = build(in_channels=1, num_classes=7)
        # The MLP's first weight reads every sample of the signal, the convolutions one channel.
        assert eligible_shapes(model)[0][1] == (models.MNIST1D_LENGTH if name == "mlp1d" else 1)
        assert eligible_shapes(model)[-1][0] == 7


def test_the_mnist1d_baselines_have_their_published_sizes():
    # Greydanus (2024): three 25-channel convolutions of 5, 3, 3 taps, stride 2, and a linear head
    # on 25 x 5 features; the MLP 40 -> 100 -> 100 -> 10.
    cnn = models.cnn1d()
    assert eligible_shapes(cnn) == [(25, 1, 5), (25, 25, 3), (25, 25, 3), (10, 125)]
    assert sum(p.numel() for p in cnn.parameters()) == 5210
    assert eligible_shapes(models.mlp1d()) == [(100, 40), (100, 100), (10, 100)]


def test_resnet20_1d_is_resnet20_with_1d_layers():
    flat = models.MODELS["resnet20_1d"](in_channels=1, num_classes=10)
    image = models.cifar_resnet(20, in_channels=1, num_classes=10)
    # The same layers in the same order; a 3-tap kernel where the image network has 3x3.
    assert [s[:2] for s in eligible_shapes(flat)] == [s[:2] for s in eligible_shapes(image)]
    assert [s[2:] for s in eligible_shapes(flat)] == [(3,)] * 19 + [()]
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in flat.modules())
    assert flat(torch.randn(2, 1, 40)).shape == (2, 10)


@pytest.mark.parametrize("depth", [20, 56])
def test_resnet_eligible_shapes_match_benchmarks(depth):
    assert eligible_shapes(models.cifar_resnet(depth)) == resnet_shapes(depth)


def test_vgg_eligible_shapes_match_benchmarks():
    model = models.vgg16_bn()
    assert eligible_shapes(model) == vgg_shapes()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(m.bias is None for m in convs)


def test_resnet20_option_a_shortcuts_have_no_parameters():
    model = models.cifar_resnet(20, num_classes=10)
    # 19 convolutions and the classifier: a projection shortcut would add 1x1 convolutions.
    assert len(eligible_shapes(model)) == 20
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) and m.bias is None for m in convs)
    # The well-known 0.27M of ResNet-20 on CIFAR-10.
    assert sum(p.numel() for p in model.parameters()) == 269_722


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    shortcut = models.OptionAShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert (out[:, 16:] == 0).all()
    assert list(shortcut.parameters()) == []
    signal = torch.randn(2, 16, 8)
    out = shortcut(signal)
    assert out.shape == (2, 32, 4)
    torch.testing.assert_close(out[:, :16], signal[:, :, ::2])
    assert (out[:, 16:] == 0).all()


@pytest.mark.parametrize("depth", [0, 2, 19, 21, 57, -4])
def test_invalid_resnet_depth_raises(depth):
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.cifar_resnet(depth)
