"""The models whose whole training steps ``run.py --training-step`` times, and their batches.

* :func:`gpt2` -- a compact GPT-2 (Radford et al. 2019) in plain PyTorch: token and position
  embeddings, pre-LayerNorm blocks with causal ``F.scaled_dot_product_attention`` and a GELU MLP,
  a final LayerNorm and an LM head tied to the token embedding. GPT-2 small is the default.
* :data:`WORKLOADS` -- per model (``resnet56``, ``gpt2_small``) a ``full`` configuration (the model
  and batch the numbers are quoted for) and a ``tiny`` one of the same architecture that runs in
  seconds on a CPU.

The CIFAR ResNet comes from ``examples/models.py``, loaded by path (the examples folder is not a
package), so the benchmark times the network the examples train.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one ``width -> 3 * width`` projection for queries, keys and
    values, ``F.scaled_dot_product_attention(is_causal=True)``, one output projection."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, sequence, width) -> (batch, sequence, width)``."""
        batch, sequence, width = x.shape
        # (3, batch, heads, sequence, head width): the layout the attention kernels take.
        q, k, v = self.qkv(x).view(batch, sequence, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, sequence, width))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        # GPT-2's GELU is the tanh approximation.
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT2(nn.Module):
    """GPT-2: embeddings, ``layers`` blocks, a final LayerNorm and an LM head tied to the token
    embedding (the head has no weight of its own, so the parameters count it once)."""

    def __init__(self, layers: int, width: int, heads: int, vocabulary: int, context: int):
        super().__init__()
        self.wte = nn.Embedding(vocabulary, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        # GPT-2's initialisation: N(0, 0.02), zero biases, and the projections that add into the
        # residual stream scaled by 1/sqrt(2 * layers) so that its variance does not grow with depth.
        for name, parameter in self.named_parameters():
            if parameter.ndim < 2:
                continue
            residual = name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight")
            nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * layers) if residual else 0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(batch, sequence, vocabulary)`` for token ids ``(batch, sequence)`` (int64)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)


def gpt2(layers: int = 12, width: int = 768, heads: int = 12, vocabulary: int = 50257, context: int = 1024) -> GPT2:
    """GPT-2 small by default: 124,439,808 parameters."""
    return GPT2(layers, width, heads, vocabulary, context)


@functools.cache
def _examples_models():
    spec = importlib.util.spec_from_file_location("examples_models", EXAMPLES / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cifar_resnet(depth: int, num_classes: int) -> nn.Module:
    """``examples/models.py``'s CIFAR ResNet-``depth`` on RGB images."""
    return _examples_models().cifar_resnet(depth, in_channels=3, num_classes=num_classes)


@dataclass(frozen=True)
class Workload:
    """A model and the batch one training step feeds it.

    ``build`` makes the model (float32, on the default device); ``sample(generator)`` makes one
    batch on the CPU: ``(inputs, targets)`` with ``targets`` the class ids (int64) that
    ``F.cross_entropy`` takes against the model's logits flattened to ``(-1, classes)``.
    """

    model: str
    configuration: str
    batch: int
    input: str
    build: Callable[[], nn.Module]
    sample: Callable[[torch.Generator], tuple[Tensor, Tensor]]


def _images(batch: int, size: int, classes: int) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    def sample(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return (torch.randn(batch, 3, size, size, generator=generator),
                torch.randint(0, classes, (batch,), generator=generator))
    return sample


def _tokens(batch: int, sequence: int, vocabulary: int) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    def sample(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        tokens = torch.randint(0, vocabulary, (batch, sequence + 1), generator=generator)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # next-token prediction
    return sample


WORKLOADS: dict[str, dict[str, Workload]] = {
    "resnet56": {
        "full": Workload("resnet56", "full", 128, "3x32x32", lambda: cifar_resnet(56, 100), _images(128, 32, 100)),
        "tiny": Workload("resnet56", "tiny", 8, "3x16x16", lambda: cifar_resnet(8, 10), _images(8, 16, 10)),
    },
    "gpt2_small": {
        "full": Workload("gpt2_small", "full", 8, "seq 512", gpt2, _tokens(8, 512, 50257)),
        "tiny": Workload("gpt2_small", "tiny", 8, "seq 32",
                         lambda: gpt2(layers=2, width=64, heads=2, vocabulary=512, context=32), _tokens(8, 32, 512)),
    },
}
