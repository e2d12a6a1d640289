"""The example models (examples/models.py): forward shapes, parameter shapes, option-A shortcuts."""

import pytest
import torch
from torch import nn

from benchmarks.shapes import cifar_resnet as resnet_shapes
from benchmarks.shapes import cifar_vgg16_bn as vgg_shapes
from tests.helpers import load_example

models = load_example("models")


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


@pytest.mark.parametrize("name", sorted(models.MODELS))
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


def test_builders_accept_keywords():
    for build in models.MODELS.values():
        model = build(in_channels=1, num_classes=7)
        assert eligible_shapes(model)[0][1] == 1
        assert eligible_shapes(model)[-1][0] == 7


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


@pytest.mark.parametrize("depth", [0, 2, 19, 21, 57, -4])
def test_invalid_resnet_depth_raises(depth):
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.cifar_resnet(depth)
