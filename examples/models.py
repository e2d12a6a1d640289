"""The convolutional networks of the paper's CIFAR experiments, and 1-D networks for MNIST-1D,
in plain PyTorch.

* :func:`cifar_resnet` -- the CIFAR ResNets of He et al. (2016), e.g. ResNet-20 and ResNet-56,
  with parameter-free "option A" shortcuts; with ``dims=1`` the same network on 1-D signals.
* :func:`vgg16_bn` -- VGG-16 with batch norm, adapted to CIFAR with a global average pool and
  a single linear classifier.
* :func:`cnn1d` and :func:`mlp1d` -- the small CNN and the MLP of the MNIST-1D baselines
  (Greydanus 2024).

Every builder takes ``in_channels`` and ``num_classes`` so the same networks also run on
small single-channel images (e.g. the 8x8 digits upsampled to 16x16 or 32x32).
:data:`MODELS` maps the names used on the command line to these builders; the names in
:data:`SIGNAL_MODELS` take signals of shape (N, C, L), the others images of shape (N, C, H, W).
"""

from functools import partial

import torch.nn.functional as F
from torch import nn


# The layers of a network on inputs with ``dims`` spatial dimensions: signals (1) or images (2).
CONV = {1: nn.Conv1d, 2: nn.Conv2d}
BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
AVERAGE_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


def conv3x3(c_in, c_out, stride=1, dims=2):
    """A 3x3 convolution (3 taps when ``dims`` is 1) with padding 1 and no bias (a batch norm
    always follows)."""
    return CONV[dims](c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class OptionAShortcut(nn.Module):
    """The parameter-free shortcut ("option A") of He et al. (2016).

    The identity when the shape is unchanged; otherwise every ``stride``-th pixel (or sample, on
    signals) is kept and the new channels are filled with zeros, so the shortcut adds no weights
    to the network. It works on any number of spatial dimensions.
    """

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"option-A shortcut cannot reduce channels ({c_in} -> {c_out})")
        self.extra_channels = c_out - c_in
        self.stride = stride

    def forward(self, x):
        """Subsample spatially by ``stride`` and append zero channels."""
        spatial = x.ndim - 2
        if self.stride != 1:
            x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * spatial]
        if self.extra_channels:
            # F.pad pads the last dimensions first: (W left, W right, H top, H bottom, C front, C back).
            x = F.pad(x, (0, 0) * spatial + (0, self.extra_channels))
        return x


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers with a ReLU between them, plus an option-A shortcut."""

    def __init__(self, c_in, c_out, stride=1, dims=2):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride, dims)
        self.bn1 = BATCH_NORM[dims](c_out)
        self.conv2 = conv3x3(c_out, c_out, dims=dims)
        self.bn2 = BATCH_NORM[dims](c_out)
        self.shortcut = OptionAShortcut(c_in, c_out, stride)

    def forward(self, x):
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet: stem, three stages of ``blocks`` basic blocks, global pool, linear head."""

    def __init__(self, blocks, in_channels=3, num_classes=100, dims=2):
        super().__init__()
        self.conv = conv3x3(in_channels, 16, dims=dims)
        self.bn = BATCH_NORM[dims](16)
        stages = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                stages.append(BasicBlock(c_in, c_out, stride if i == 0 else 1, dims))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = AVERAGE_POOL[dims](1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, CONV[dims]):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        """Logits of shape ``(N, num_classes)`` for images of shape ``(N, in_channels, H, W)``
        (signals of shape ``(N, in_channels, L)`` for a 1-D network)."""
        x = F.relu(self.bn(self.conv(x)))
        x = self.stages(x)
        return self.fc(self.pool(x).flatten(1))


def cifar_resnet(depth, in_channels=3, num_classes=100, dims=2):
    """The CIFAR ResNet-``depth`` of He et al. (2016), ``depth = 6n + 2``.

    A 3x3 convolution to 16 channels with batch norm and ReLU, then three stages of ``n``
    basic blocks at 16, 32 and 64 channels (the first block of the second and third stage
    halves the resolution with stride 2), global average pooling and one linear layer.
    Shortcuts are option A (identity, or subsampling plus zero channels), so ResNet-20
    (``n = 3``) has about 0.27M parameters and ResNet-56 (``n = 9``) about 0.85M.

    ``dims=1`` builds the same network for signals of shape (N, C, L): 3-tap convolutions,
    BatchNorm1d, the same stages and shortcuts (ResNet-20 then has about 0.09M parameters).

    Raises:
        ValueError: if ``depth`` is not of the form ``6n + 2`` with ``n >= 1``.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
    return CifarResNet((depth - 2) // 6, in_channels, num_classes, dims)


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_bn(in_channels=3, num_classes=100):
    """VGG-16 with batch norm for CIFAR (Simonyan and Zisserman 2015; Ioffe and Szegedy 2015).

    Thirteen 3x3 convolutions (no bias), each followed by batch norm and ReLU, in five groups
    of 64, 128, 256, 512 and 512 channels separated by 2x2 max pools; then a global average
    pool and a single ``Linear(512, num_classes)`` in place of ImageNet VGG's three
    fully connected layers.
    """
    layers = []
    c_in = in_channels
    for item in VGG16_CONFIG:
        if item == "M":
            # ceil_mode keeps a 1x1 map at 1x1 (floor would give 0x0), so inputs smaller than
            # 32x32 still work; on even sizes it is the same as the usual floor mode.
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers += [conv3x3(c_in, item), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            c_in = item
    model = nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


MNIST1D_LENGTH = 40  # samples per MNIST-1D signal: the default input length of the 1-D networks


def conv1d_length(length, kernel_size, stride, padding):
    """The output length of a 1-D convolution on ``length`` samples."""
    return (length + 2 * padding - kernel_size) // stride + 1


def cnn1d(in_channels=1, num_classes=10, length=MNIST1D_LENGTH, channels=25):
    """The small CNN of the MNIST-1D baselines (Greydanus 2024, about 94% test accuracy there).

    Three 1-D convolutions with bias and ReLU, ``channels`` wide, of 5, 3 and 3 taps, each of
    stride 2 and padding 1 (40 samples shrink to 19, 10 and 5), then one linear layer on the
    flattened features: about 5.2k parameters for 40-sample signals and 10 classes. No batch
    norm and no pooling: the classifier sees where each feature is.
    """
    layers, c_in = [], in_channels
    for kernel_size in (5, 3, 3):
        layers += [nn.Conv1d(c_in, channels, kernel_size, stride=2, padding=1), nn.ReLU()]
        length, c_in = conv1d_length(length, kernel_size, 2, 1), channels
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * length, num_classes))


class SignalMLP(nn.Module):
    """The MLP of the MNIST-1D baselines: flatten, a hidden layer, a residual hidden layer, a
    linear head, ReLU between them."""

    def __init__(self, in_features, num_classes, hidden=100):
        super().__init__()
        self.hidden1 = nn.Linear(in_features, hidden)
        self.hidden2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        """Logits of shape ``(N, num_classes)`` for signals of shape ``(N, C, L)``."""
        h = F.relu(self.hidden1(x.flatten(1)))
        h = h + F.relu(self.hidden2(h))
        return self.head(h)


def mlp1d(in_channels=1, num_classes=10, length=MNIST1D_LENGTH, hidden=100):
    """The MNIST-1D baselines' MLP (Greydanus 2024, about 68% test accuracy there) on signals of
    ``length`` samples: about 15k parameters for 40-sample signals and 10 classes."""
    return SignalMLP(in_channels * length, num_classes, hidden)


# name -> builder(in_channels, num_classes) -> nn.Module
MODELS = {
    "resnet20": partial(cifar_resnet, 20),
    "resnet56": partial(cifar_resnet, 56),
    "vgg16_bn": vgg16_bn,
    "resnet20_1d": partial(cifar_resnet, 20, dims=1),
    "cnn1d": cnn1d,
    "mlp1d": mlp1d,
}
# The models above that take 1-D signals (N, C, L); every other one takes images (N, C, H, W).
SIGNAL_MODELS = ("resnet20_1d", "cnn1d", "mlp1d")
