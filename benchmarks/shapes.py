"""The eligible gradient shapes (ndim > 1: conv and linear weights) of the models benchmarked."""

from __future__ import annotations

Shape = tuple[int, ...]


def cifar_resnet(depth: int, num_classes: int = 100) -> list[Shape]:
    """CIFAR ResNet-``depth`` (He et al. 2016): 3 stages of 16/32/64 channels, option-A shortcuts
    (no weights), ``(depth - 2) / 6`` basic blocks of two 3x3 convolutions per stage."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    blocks = (depth - 2) // 6
    shapes: list[Shape] = [(16, 3, 3, 3)]
    in_channels = 16
    for channels in (16, 32, 64):
        for _ in range(blocks):
            shapes += [(channels, in_channels, 3, 3), (channels, channels, 3, 3)]
            in_channels = channels
    return shapes + [(num_classes, 64)]


VGG16_LAYERS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def cifar_vgg16_bn(num_classes: int = 100) -> list[Shape]:
    """VGG-16-BN for CIFAR: thirteen 3x3 convolutions and one linear classifier on 512 features."""
    shapes: list[Shape] = []
    in_channels = 3
    for channels in VGG16_LAYERS:
        shapes.append((channels, in_channels, 3, 3))
        in_channels = channels
    return shapes + [(num_classes, 512)]


def gpt2_small() -> list[Shape]:
    """GPT-2 small (124M): token and position embeddings and, per block, the attention and MLP
    projections (Conv1D layout, in x out); the LM head is tied to the token embedding."""
    per_block: list[Shape] = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
    return [(50257, 768), (1024, 768)] + per_block * 12


SYNTHETIC_SHAPES: tuple[Shape, ...] = (
    (64, 64), (128, 64), (64, 3, 3, 3), (256, 32), (32, 32, 3, 3),
    (512, 16), (100, 64), (48, 48), (96, 32, 1, 1), (200, 20),
)


def synthetic(count: int = 400) -> list[Shape]:
    """``count`` small weights cycling through ten shapes: many tensors and little data, the case
    where a step's host side, not memory, sets its time."""
    return [SYNTHETIC_SHAPES[i % len(SYNTHETIC_SHAPES)] for i in range(count)]


SETS = {
    "resnet20": lambda: cifar_resnet(20),
    "resnet56": lambda: cifar_resnet(56),
    "vgg16_bn": cifar_vgg16_bn,
    "gpt2_small": gpt2_small,
    "tensor_64m": lambda: [(8192, 8192)],
    "synthetic_400": synthetic,
}


GPT2_BLOCK_VECTORS: list[Shape] = [(768,), (768,), (2304,), (768,), (768,), (768,), (3072,), (768,)]


def non_eligible_shapes(set_name: str) -> list[Shape]:
    """The 1-D parameters that go with the weights of ``set_name`` in the real model, which an
    optimizer steps but GAN leaves alone: for the CIFAR ResNets and VGG-16-BN a batch-norm weight
    and bias per convolution and the classifier's bias (ResNet-56: 56 weights, 167 parameters); for
    GPT-2 small per block the two layer norms' weights and biases and the four projections' biases,
    and the final layer norm (148 parameters); elsewhere one bias per weight."""
    shapes = SETS[set_name]()
    if set_name.startswith("resnet") or set_name == "vgg16_bn":
        return [(s[0],) for s in shapes[:-1] for _ in range(2)] + [(shapes[-1][0],)]
    if set_name == "gpt2_small":
        return GPT2_BLOCK_VECTORS * 12 + [(768,), (768,)]
    return [(s[0],) for s in shapes]
