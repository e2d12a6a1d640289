"""The convolutional networks of the paper's CIFAR experiments, in plain PyTorch.

* :func:`cifar_resnet` -- the CIFAR ResNets of He et al. (2016), e.g. ResNet-20 and ResNet-56,
  with parameter-free "option A" shortcuts.
* :func:`vgg16_bn` -- VGG-16 with batch norm, adapted to CIFAR with a global average pool and
  a single linear classifier.

Every builder takes ``in_channels`` and ``num_classes`` so the same networks also run on
small single-channel images (e.g. the 8x8 digits upsampled to 16x16 or 32x32).
:data:`MODELS` maps the names used on the command line to these builders.
"""

from functools import partial

import torch.nn.functional as F
from torch import nn


def conv3x3(c_in, c_out, stride=1):
    """A 3x3 convolution with padding 1 and no bias (a batch norm always follows)."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class OptionAShortcut(nn.Module):
    """The parameter-free shortcut ("option A") of He et al. (2016).

    The identity when the shape is unchanged; otherwise every ``stride``-th pixel is kept and
    the new channels are filled with zeros, so the shortcut adds no weights to the network.
    """

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"option-A shortcut cannot reduce channels ({c_in} -> {c_out})")
        self.extra_channels = c_out - c_in
        self.stride = stride

    def forward(self, x):
        """Subsample spatially by ``stride`` and append zero channels."""
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra_channels:
            # F.pad pads the last dimensions first: (W left, W right, H top, H bottom, C front, C back).
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers with a ReLU between them, plus an option-A shortcut."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = OptionAShortcut(c_in, c_out, stride)

    def forward(self, x):
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet: stem, three stages of ``blocks`` basic blocks, global pool, linear head."""

    def __init__(self, blocks, in_channels=3, num_classes=100):
        super().__init__()
        self.conv = conv3x3(in_channels, 16)
        self.bn = nn.BatchNorm2d(16)
        stages = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                stages.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        """Logits of shape ``(N, num_classes)`` for images of shape ``(N, in_channels, H, W)``."""
        x = F.relu(self.bn(self.conv(x)))
        x = self.stages(x)
        return self.fc(self.pool(x).flatten(1))


def cifar_resnet(depth, in_channels=3, num_classes=100):
    """The CIFAR ResNet-``depth`` of He et al. (2016), ``depth = 6n + 2``.

    A 3x3 convolution to 16 channels with batch norm and ReLU, then three stages of ``n``
    basic blocks at 16, 32 and 64 channels (the first block of the second and third stage
    halves the resolution with stride 2), global average pooling and one linear layer.
    Shortcuts are option A (identity, or subsampling plus zero channels), so ResNet-20
    (``n = 3``) has about 0.27M parameters and ResNet-56 (``n = 9``) about 0.85M.

    Raises:
        ValueError: if ``depth`` is not of the form ``6n + 2`` with ``n >= 1``.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
    return CifarResNet((depth - 2) // 6, in_channels, num_classes)


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


# name -> builder(in_channels, num_classes) -> nn.Module
MODELS = {
    "resnet20": partial(cifar_resnet, 20),
    "resnet56": partial(cifar_resnet, 56),
    "vgg16_bn": vgg16_bn,
}
