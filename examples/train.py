"""Train a small CNN on scikit-learn's 8x8 digits with Gradient Autoscaled Normalization.

The digits data set ships with scikit-learn, so this demo needs no download and
finishes in well under a minute on a laptop CPU. Compare the gradient transforms
against plain AdamW with, for example::

    python examples/train.py                  # AdamW wrapped in GAN (mode="gan")
    python examples/train.py --method adamw   # plain AdamW, no wrapper
    python examples/train.py --method gc      # gradient centralization
"""

import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from gan_kernels import GAN

METHODS = ("adamw", "gan", "gc", "znorm")


def positive_int(text):
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None):
    """Parse command-line options; ``argv=None`` reads ``sys.argv``."""
    parser = argparse.ArgumentParser(
        description="Train a small CNN on 8x8 digits with Gradient Autoscaled Normalization.")
    parser.add_argument("--method", choices=METHODS, default="gan",
                        help="plain AdamW, or AdamW wrapped in GAN with this mode")
    parser.add_argument("--epochs", type=positive_int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda"')
    return parser.parse_args(argv)


def load_data(seed, device):
    """Return ``(x_train, y_train, x_test, y_test)`` from an 80/20 seeded split.

    Images are float32 tensors of shape (N, 1, 8, 8), scaled to [0, 1] and then
    standardised with the training set's mean and std only, so no test
    statistics leak into training.
    """
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)

    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    train_idx, test_idx = perm[:n_train], perm[n_train:]

    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return (x[train_idx].to(device), y[train_idx].to(device),
            x[test_idx].to(device), y[test_idx].to(device))


def conv_block(c_in, c_out):
    """3x3 convolution (size-preserving), batch norm and ReLU."""
    return nn.Sequential(
        # The bias would be cancelled by the batch norm that follows.
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def make_model():
    """A tiny CNN: two conv blocks at 8x8, pool to 4x4, one more block, global pool."""
    return nn.Sequential(
        conv_block(1, 16),
        conv_block(16, 32),
        nn.MaxPool2d(2),
        conv_block(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def make_optimizer(model, method, lr, weight_decay):
    """AdamW, wrapped in :class:`GAN` unless ``method`` is ``"adamw"``."""
    adamw = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if method == "adamw":
        return adamw
    return GAN(adamw, mode=method)


def train_epoch(model, opt, x, y, batch_size, generator):
    """Run one shuffled pass over ``(x, y)``; return the mean training loss."""
    model.train()
    perm = torch.randperm(len(y), generator=generator).to(x.device)
    # Accumulate on-device so the loop never forces a host synchronisation.
    total = torch.zeros((), device=x.device)
    for start in range(0, len(y), batch_size):
        idx = perm[start:start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
        total += loss.detach() * len(idx)
    return total.item() / len(y)


@torch.no_grad()
def evaluate(model, x, y):
    """Return the classification accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def main(argv=None):
    """Train and evaluate the model; return the final test accuracy."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    x_train, y_train, x_test, y_test = load_data(args.seed, device)
    model = make_model().to(device)
    opt = make_optimizer(model, args.method, args.lr, args.weight_decay)
    shuffle = torch.Generator().manual_seed(args.seed)

    print(f"method={args.method} train={len(y_train)} test={len(y_test)} device={device}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(model, opt, x_train, y_train, args.batch_size, shuffle)
        acc = evaluate(model, x_test, y_test)
        line = f"epoch {epoch:2d}  loss {loss:.4f}  test acc {acc:.4f}"
        if isinstance(opt, GAN) and opt.last_stats is not None:
            stats = opt.last_stats
            line += f"  alpha {stats.alpha.item():.4g}  grad std {stats.global_std.item():.4g}"
        print(line)
    print(f"final test acc {acc:.4f} in {time.perf_counter() - start:.1f}s")
    return acc


if __name__ == "__main__":
    main()
