"""Compare AdamW, Gradient Centralization, ZNorm and GAN on the paper's models, and draw the
gradient dynamics behind them.

    python examples/train.py                       # ResNet-20 on the embedded digits: about a minute on a 2-core CPU
    python examples/train.py --dataset mnist1d                     # the small 1-D CNN on MNIST-1D's 1-D signals
    python examples/train.py --dataset cifar100 --data-dir DIR --model resnet56 --epochs 200 --device cuda --amp bf16
    torchrun --nproc-per-node 8 examples/train.py --dataset cifar100 --data-dir DIR --batch-size 512
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id RUN \\
        examples/train.py --dataset cifar100 --data-dir DIR --out /shared/run     # on every node

Every method trains the same model from the same seed on the same batches: ``adamw`` is plain
AdamW; ``gc`` (Gradient Centralization as its authors define it: one mean per output channel),
``center`` (one mean per tensor: GAN without the autoscale), ``znorm`` and ``gan`` wrap it in
``gan_kernels.GAN`` with that mode, and ``gan-fused`` is ``gan_kernels.GANAdamW`` (GAN inside
the AdamW update); ``adafom`` is AdaFom (``gan_kernels.AdaFom``: Adam's first moment over the
average of all past squared gradients) and ``gan-adafom`` wraps it in GAN. The default is the
paper's comparison: AdamW, GC, ZNorm and GAN.

Every run records the gradient coherence cos(g_t, g_{t-m}) at lags m = 1 and 5 over the eligible
gradients the optimizer used, and every ``--probe-every`` steps the function-space step size: the
root-mean-square distance of the model's outputs on a fixed probe batch (the first 256 test
images) since the previous probe. The GAN-wrapped runs also record, at no extra pass over the
gradients, every eligible layer's gradient std, the global std and alpha.

``--dataset mnist1d`` is MNIST-1D (Greydanus 2024) as the ``mnist1d`` package generates it, the
standard 4000 train and 1000 test signals of 40 samples (``--samples N`` generates N signals,
split 80/20 the same way); it takes the 1-D models (``resnet20_1d``, ``cnn1d``, ``mlp1d``) and its
own defaults: ``--model cnn1d``, MNIST1D_DEFAULTS below. The other datasets take the 2-D models.

``--deficit-epochs A:B`` blurs the training inputs during epochs A to B (counted from 1, both
included) with a fixed Gaussian blur of std side/8 pixels (2 on the 16x16 digits, 4 on CIFAR),
the deficit of the critical-period protocol; the test images are never blurred. It is defined
for images only.

Checkpoints: at the end of every epoch, and every ``--checkpoint-every`` steps, each method's
whole state (model, optimizer with GAN's state, LR schedule, loss scaler, every random state,
the data order and the position in it, the curves and the recorder) is written atomically to
``OUT/checkpoints/<method>.pt``, the one before kept as ``<method>.prev.pt``; each holds the
SHA-256 of its payload. ``--resume`` continues every method from its last checkpoint (the
previous one, with a warning, if the last is torn or corrupt) and loads the finished ones, so a
run killed at any moment and resumed ends bit for bit where it would have ended on the CPU
(the seconds aside). A checkpoint from a run with other options (model, method, dataset, data
size, epochs, batch size, lr, weight decay, seed, telemetry, deficit, ``--amp``, number of
processes) is refused; ``--device``, ``--compile``, ``--channels-last`` and
``--checkpoint-every`` may change between a run and its resumption. docs/training.md has more.

Timing: before the first method, every method takes two steps on a throwaway model, so the
process's one-time costs (CUDA's start, cuDNN's and cuBLAS's first calls, Triton's kernel
compilation, ``torch.compile``'s first compilation, the thread pools) are paid and reported
apart as the warm-up; a method's seconds are its training and evaluation only, checkpoint
writes excluded.

Under ``torchrun`` (DistributedDataParallel, NCCL on CUDA with synchronised BatchNorm, Gloo on
the CPU with BatchNorm statistics per process) every process takes its share of each batch of
``--batch-size`` images, drawn in the same order on every process from the seed, so GAN and
the telemetry see the same all-reduced gradients everywhere; process 0 alone prints and writes.
``--amp bf16|fp16`` trains under autocast (fp16 with a gradient scaler, which unscales before
GAN), ``--compile`` compiles the model and ``--channels-last`` keeps images and weights in
channels-last order. The data sets are held on the training device for the whole run.

``--out`` receives ``metrics.json`` (final accuracies, per-epoch curves, the per-step coherence
and function-space step size, the warm-up's seconds and the number of processes), one
``gradients_<method>.csv`` per recorded run, ``dynamics.png`` and ``checkpoints/``. Bad input
(an unknown model, method, dataset or device, a device this machine lacks, a repeated method, an
option out of its range, an ``--out`` that cannot be created or written, ``--data-dir`` without
``--dataset cifar100``, a ``--data-dir`` without the archive, a deficit outside the epochs, a
model of the other kind of input than the dataset's, a checkpoint of another run) ends with a
one-line error, and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from gan_kernels import GAN, AdaFom, GANAdamW
from gan_kernels.telemetry import DEFAULT_LAGS, GradientRecorder


def _load_sibling(name):
    """Import examples/<name>.py (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"gan_examples_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


models = _load_sibling("models")
data = _load_sibling("data")
checkpoints = _load_sibling("checkpoints")

METHODS = ("adamw", "gc", "center", "znorm", "gan", "gan-fused", "adafom", "gan-adafom")
# The paper's comparison.
DEFAULT_METHODS = ("adamw", "gc", "znorm", "gan")
DATASETS = ("digits", "cifar100", "mnist1d")
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# MNIST-1D's defaults in place of the digits' (an explicit option still wins), the same for every
# method: the 8000 steps and the learning rate of the MNIST-1D baselines (Adam, 1e-2), which bring
# AdamW's small CNN to 92-93% (the baselines report about 94%) in about 20 s on one CPU thread.
MNIST1D_DEFAULTS = {"model": "cnn1d", "epochs": 100, "batch_size": 50, "lr": 1e-2}
DIGITS_SIZE = 16  # the 8x8 digits upsampled, so that ResNet's three stages keep a 4x4 map
PROBE_SIZE = 256  # test images whose outputs measure the function-space step size
# The options that change what a run computes: a checkpoint of a run that differs in one of them
# is refused. --device, --compile, --channels-last and --checkpoint-every only change how.
RUN_OPTIONS = ("model", "dataset", "epochs", "batch_size", "lr", "weight_decay", "seed", "no_coherence",
               "probe_every", "deficit_epochs", "amp")


class UsageError(Exception):
    """Bad input: reported as one line, before anything is written."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", help=f"one of {', '.join(models.MODELS)}")
    parser.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", type=Path, help="with --dataset cifar100 only: the folder with cifar-100-python(.tar.gz)")
    parser.add_argument("--samples", type=int, metavar="N",
                        help=f"with --dataset mnist1d only: generate N signals, split 80/20 (default {data.MNIST1D_SAMPLES})")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch, shared by all processes under torchrun")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda, cuda:N, mps, ... (default: cuda when available, else cpu; "
                             "under torchrun cpu or cuda, each process taking cuda:LOCAL_RANK)")
    parser.add_argument("--no-coherence", action="store_true",
                        help="skip the coherence cos(g_t, g_t-m), m = 1 and 5, which keeps 6 copies of the gradients")
    parser.add_argument("--probe-every", type=int, default=10, metavar="N",
                        help="measure the function-space step size every N steps (0: never; default 10)")
    parser.add_argument("--deficit-epochs", metavar="A:B",
                        help="blur the training inputs during epochs A to B, counted from 1 (the critical-period deficit)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                        help="also checkpoint every N steps (0: at the end of every epoch only; default 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue every method from its checkpoint in OUT/checkpoints; finished ones are loaded")
    parser.add_argument("--amp", default="none", help="autocast: none, bf16 or fp16 (fp16 with a gradient scaler)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--channels-last", action="store_true", help="images and convolution weights in channels-last order")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    if parser.parse_known_args(argv)[0].dataset == "mnist1d":
        parser.set_defaults(**MNIST1D_DEFAULTS)
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    return args


def deficit_epochs(text, epochs):
    """``"A:B"`` as the range of epochs A..B (both included), checked against ``epochs``."""
    if text is None:
        return range(0)
    first, sep, last = text.partition(":")
    try:
        first, last = int(first), int(last)
    except ValueError:
        first = last = None
    if not sep or first is None:
        raise UsageError(f"--deficit-epochs takes A:B, two epoch numbers such as 1:5, got {text!r}")
    if not 1 <= first <= last <= epochs:
        raise UsageError(f"--deficit-epochs {text}: need 1 <= A <= B <= --epochs ({epochs})")
    return range(first, last + 1)


def check_args(args, world=None):
    """Raise UsageError, naming what is accepted, for anything the run cannot use; writes nothing.
    ``world`` (None: a single process) is checked against the batch size and the device."""
    world = world or SINGLE
    if args.model not in models.MODELS:
        raise UsageError(f"unknown model {args.model!r}; accepted: {', '.join(models.MODELS)}")
    if args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; accepted: {', '.join(DATASETS)}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        raise UsageError(f"unknown method {', '.join(map(repr, unknown)) or '(none given)'}; accepted: {', '.join(METHODS)}")
    repeated = sorted({m for m in args.methods if args.methods.count(m) > 1})
    if repeated:
        raise UsageError(f"--methods names {', '.join(map(repr, repeated))} more than once; each method runs once")
    if args.dataset == "cifar100" and args.data_dir is None:
        raise UsageError("--dataset cifar100 needs --data-dir DIR holding cifar-100-python.tar.gz or cifar-100-python/")
    if args.dataset != "cifar100" and args.data_dir is not None:
        raise UsageError(f"--data-dir is only read with --dataset cifar100 (the {args.dataset} data are embedded)")
    if args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.batch_size < world.size:
        raise UsageError(f"--batch-size {args.batch_size} is smaller than the {world.size} processes sharing each batch")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number above 0, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UsageError(f"--weight-decay must be a finite number of at least 0, got {args.weight_decay}")
    if args.probe_every < 0:
        raise UsageError("--probe-every must be 0 (never) or a number of steps")
    if args.checkpoint_every < 0:
        raise UsageError("--checkpoint-every must be 0 (epoch ends only) or a number of steps")
    if args.amp not in AMP:
        raise UsageError(f"unknown --amp {args.amp!r}; accepted: {', '.join(AMP)}")
    deficit_epochs(args.deficit_epochs, args.epochs)
    signals = args.dataset == "mnist1d"
    if signals != (args.model in models.SIGNAL_MODELS):
        kind = "1-D signals" if signals else "images"
        accepted = [name for name in models.MODELS if (name in models.SIGNAL_MODELS) == signals]
        raise UsageError(f"model {args.model!r} does not take the {kind} of --dataset {args.dataset}; "
                         f"accepted: {', '.join(accepted)}")
    if args.samples is not None and (not signals or args.samples < 10 or args.samples % 10):
        raise UsageError("--samples N takes a positive multiple of 10 and only with --dataset mnist1d"
                         + (f", got {args.samples}" if signals else ""))
    if signals and args.deficit_epochs is not None:
        raise UsageError("--deficit-epochs blurs images; --dataset mnist1d holds 1-D signals")
    check_device(args.device)
    if world.size > 1:
        device = torch.device(args.device)
        if device.type not in ("cpu", "cuda") or device.index is not None:
            raise UsageError(f"under torchrun --device is cpu or cuda (each process takes cuda:LOCAL_RANK), got {args.device!r}")
        if device.type == "cuda" and world.local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {world.local_rank} has no GPU: this node has {torch.cuda.device_count()}")
    check_out(args.out)


def check_out(out):
    """Raise UsageError unless ``out`` is a writable folder or can be created as one, looking
    only: the folder is made when the first file is written."""
    path = Path(out).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise UsageError(f"--out {out} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} is not writable: no permission to write in {existing}")


def available_devices():
    """The devices this machine can train on, as --device accepts them."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices
def check_device(name):
    """Raise UsageError unless ``name`` is a device this machine has."""
    available = f"available here: {', '.join(available_devices())}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"unknown device {name!r}; {available}") from None
    if device.type == "meta":
        raise UsageError(f"device {name!r} holds no data and cannot train; {available}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device {name!r} is not available: this machine has no usable CUDA device; {available}")
        if device.index is not None and device.index >= count:
            raise UsageError(f"device {name!r} is not available: this machine has {count} CUDA device(s); {available}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r} is not available: this machine has no usable MPS device; {available}")
    backend = getattr(torch, device.type, None)
    if device.type not in ("cpu", "cuda", "mps") and callable(getattr(backend, "is_available", None)) and not backend.is_available():
        raise UsageError(f"device {name!r} is not available on this machine; {available}")
    try:
        torch.empty(1, device=device)
    except Exception as error:  # noqa: BLE001 -- each backend reports a missing device its own way
        reason = str(error).strip().split(". ")[0].splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UsageError(f"device {name!r} is not available ({reason}); {available}") from None


def load(args):
    """The data of ``args.dataset`` and whether its training batches are augmented."""
    if args.dataset == "digits":
        return data.load_digits_images(DIGITS_SIZE, args.seed), False
    if args.dataset == "mnist1d":
        return data.load_mnist1d(args.samples or data.MNIST1D_SAMPLES), False
    try:
        return data.load_cifar100(args.data_dir), True
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None


class World(NamedTuple):
    """This process's place among the processes ``torchrun`` started (one process without it)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls):
        """The world torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def writer(self):
        """Whether this process prints and writes the outputs (process 0)."""
        return self.rank == 0

    def shard(self, batch):
        """This process's contiguous share of a global batch (the first ``len % size`` shares are one longer)."""
        return batch if self.size == 1 else batch.tensor_split(self.size)[self.rank]

    def all_sum(self, tensor):
        """The sum of ``tensor`` over the processes (``tensor`` itself in one process)."""
        if self.size == 1:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total


SINGLE = World()


def check_shards(train_size, batch_size, world):
    """Raise UsageError if some batch, the last one included, would leave a process no image."""
    last = train_size % batch_size or batch_size
    if min(batch_size, last) < world.size:
        raise UsageError(f"the last batch of {last} images (of {train_size}, in batches of {batch_size}) "
                         f"cannot be shared by {world.size} processes")


def training_device(args, world):
    """``--device``, where each process under torchrun takes the GPU of its local rank."""
    device = torch.device(args.device)
    return torch.device("cuda", world.local_rank) if world.size > 1 and device.type == "cuda" else device


def elapsed_since(start, device):
    """Seconds since ``start`` (a ``time.perf_counter()``), once ``device`` has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model, x, y, batch_size=512):
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum() for i in range(0, len(y), batch_size))
    return (correct / len(y)).item()


def make_optimizer(method, model, args):
    """The optimizer of ``method`` for ``model``'s parameters."""
    if method == "gan-fused":
        return GANAdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if method in ("adafom", "gan-adafom"):
        opt = AdaFom(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if method in ("adamw", "adafom"):
        return opt
    return GAN(opt, mode="gan" if method == "gan-adafom" else method)


def runs_gan(method):
    return method not in ("adamw", "adafom")


def run_identity(args, method, images, world):
    """What a checkpoint of this method's run must match to be resumed (see RUN_OPTIONS)."""
    return {"method": method, **{key: getattr(args, key) for key in RUN_OPTIONS},
            "train_size": len(images.train_y), "test_size": len(images.test_y), "world_size": world.size}


class MethodRun:
    """One method's training from the seed: the model, its optimizer, LR schedule, loss scaler and
    gradient recorder, the data order and the position in it. :meth:`state_dict` is what a
    checkpoint holds and :meth:`load_state_dict` continues from it exactly.

    The model, the optimizer and the data live on ``device``; under torchrun the model is
    wrapped in DistributedDataParallel (with synchronised BatchNorm on CUDA), and every process
    runs this same object on its share of each batch.
    """

    def __init__(self, method, args, images, augmented, device, world=SINGLE):
        self.method, self.args, self.images, self.augmented, self.device, self.world = method, args, images, augmented, device, world
        torch.manual_seed(args.seed)
        module = models.MODELS[args.model](in_channels=images.in_channels, num_classes=images.num_classes)
        if world.size > 1 and device.type == "cuda":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        self.module = module.to(device)
        if args.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(method, self.module, args)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=args.epochs)
        self.scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
        self.steps_taken = 0  # optimizer steps run: a step the loss scaler skips does not count
        self.opt.register_step_post_hook(self._count_step)
        model = self.module
        if world.size > 1:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        self.model = torch.compile(model) if args.compile else model
        # Held on the device for the whole run: a batch is a gather there, with no copy per step.
        self.x_train, self.y_train = images.train_x.to(device), images.train_y.to(device)
        self.x_test, self.y_test = images.test_x.to(device), images.test_y.to(device)
        lags = () if args.no_coherence else DEFAULT_LAGS
        probe = {"probe": self.x_test[:PROBE_SIZE], "probe_every": args.probe_every} if args.probe_every else {}
        self.with_stats = runs_gan(method)  # the steps produce GAN's statistics
        self.recorder = None
        if self.with_stats or lags or probe:
            self.recorder = GradientRecorder.for_optimizer(self.opt, self.module, coherence=lags, **probe)
        self.deficit = deficit_epochs(args.deficit_epochs, args.epochs)
        self.sigma = data.deficit_sigma(self.x_train.shape[-1])
        self.shuffle = torch.Generator().manual_seed(args.seed)  # the data order and the augmentation
        self.steps_per_epoch = -(-len(self.y_train) // args.batch_size)
        self.epoch = 0  # epochs completed
        self.step = 0  # steps completed in the current epoch
        self.order = None  # the current epoch's order of the training images, on the device
        self.loss_sum = torch.zeros((), device=device)  # this process's summed loss in the current epoch
        self.curves = {"loss": [], "test_accuracy": []}
        self.seconds = 0.0

    def _count_step(self, optimizer, args, kwargs):
        self.steps_taken += 1

    def autocast(self):
        """The autocast context of ``--amp`` (none: a no-op)."""
        dtype = AMP[self.args.amp]
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def begin_epoch(self):
        self.order = torch.randperm(len(self.y_train), generator=self.shuffle).to(self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.step = 0

    def train_step(self, index):
        """Step ``index`` of the current epoch: forward, backward, optimizer step, telemetry."""
        batch = self.order[index * self.args.batch_size:(index + 1) * self.args.batch_size]
        x, y = self.x_train[batch], self.y_train[batch]
        if self.augmented:
            x = data.augment(x, self.shuffle)  # the whole batch: the same random draws on every process
        x, y = self.world.shard(x), self.world.shard(y)
        if self.epoch + 1 in self.deficit:
            x = data.gaussian_blur(x, self.sigma)
        if self.args.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            shard_loss = F.cross_entropy(self.model(x), y, reduction="sum")
        # DDP averages the processes' gradients: each share's sum times processes / batch makes
        # that average the gradient of the batch's mean loss, whatever the shares' sizes.
        loss = shard_loss * self.world.size / len(batch)
        self.opt.zero_grad()
        taken = self.steps_taken
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)  # unscales the gradients before GAN sees them
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        if self.recorder is not None and self.steps_taken > taken:  # a step the scaler skipped records no row
            self.recorder.record(self.opt.last_stats if self.with_stats else None)
        self.loss_sum += shard_loss.detach().float()
        self.step = index + 1

    def evaluate(self):
        """The test accuracy of the current weights."""
        with self.autocast():
            return accuracy(self.model, self.x_test, self.y_test)

    def end_epoch(self):
        """Advance the LR schedule, extend the curves and print the epoch's line (process 0)."""
        self.scheduler.step()
        self.curves["loss"].append(self.world.all_sum(self.loss_sum).item() / len(self.y_train))
        self.curves["test_accuracy"].append(self.evaluate())
        self.epoch += 1
        self.step = 0
        self.order = None
        if not self.world.writer:
            return
        line = (f"{self.method:>10}  epoch {self.epoch:3d}  loss {self.curves['loss'][-1]:.4f}  "
                f"test acc {self.curves['test_accuracy'][-1]:.4f}")
        if self.recorder is not None and self.with_stats:
            row = self.recorder.flush()[-1]
            line += f"  alpha {row['alpha']:.3g}  global grad std {row['global_std']:.3g}"
        if self.epoch in self.deficit:
            line += "  (blurred inputs)"
        tqdm.write(line, file=sys.stdout)

    def run(self, checkpoint=None):
        """Train from the current position to the last epoch; return (curves with the seconds spent
        training and evaluating, the recorder or None). With ``checkpoint`` (a path), process 0
        saves there at every epoch end and every ``--checkpoint-every`` steps, untimed."""
        every, steps = self.args.checkpoint_every, self.steps_per_epoch
        with tqdm(total=self.args.epochs * steps, initial=self.epoch * steps + self.step, desc=f"{self.method:>10}",
                  unit="step", leave=False, file=sys.stderr, disable=not self.world.writer) as bar:
            while self.epoch < self.args.epochs:
                start = time.perf_counter()
                if self.step == 0:
                    self.begin_epoch()
                self.model.train()
                for index in range(self.step, steps):
                    self.train_step(index)
                    bar.update()
                    if every and (self.epoch * steps + self.step) % every == 0 and self.step < steps:
                        self.seconds += elapsed_since(start, self.device)
                        self.save(checkpoint)
                        start = time.perf_counter()
                self.end_epoch()
                self.seconds += elapsed_since(start, self.device)
                self.save(checkpoint)
        return {**self.curves, "seconds": self.seconds}, self.recorder

    def save(self, checkpoint):
        if checkpoint is not None and self.world.writer:
            checkpoints.save(checkpoint, self.state_dict())

    def state_dict(self):
        """Everything the run needs to continue exactly: tensors (on the CPU where small), dicts,
        lists, numbers and strings only, so a checkpoint loads with ``weights_only=True``."""
        return {
            "identity": run_identity(self.args, self.method, self.images, self.world),
            "position": {"epoch": self.epoch, "step": self.step},
            "model": self.module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": checkpoints.rng_state({"data": self.shuffle}, cuda=self.device.type == "cuda"),
            "order": None if self.order is None else self.order.cpu(),
            "loss_sum": self.loss_sum.cpu(),
            "curves": {key: list(values) for key, values in self.curves.items()},
            "seconds": self.seconds,
            "recorder": None if self.recorder is None else self.recorder.state_dict(),
        }

    def load_state_dict(self, state):
        """Continue from :meth:`state_dict` (whose identity the caller has checked)."""
        self.module.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        checkpoints.set_rng_state(state["rng"], {"data": self.shuffle})
        self.epoch, self.step = state["position"]["epoch"], state["position"]["step"]
        self.order = None if state["order"] is None else state["order"].to(self.device)
        self.loss_sum = state["loss_sum"].to(self.device)
        self.curves = {key: list(values) for key, values in state["curves"].items()}
        self.seconds = state["seconds"]
        if self.recorder is not None:
            self.recorder.load_state_dict(state["recorder"], device=self.device)


def train_method(method, args, images, augmented, device, world=SINGLE, checkpoint=None, resume=None):
    """Train one method from the seed, or from the checkpoint payload ``resume``; return its
    per-epoch curves (with ``seconds``) and its recorder (or None). ``checkpoint``: the path
    that process 0 saves to (None: no checkpoints)."""
    run = MethodRun(method, args, images, augmented, device, world)
    if resume is not None:
        run.load_state_dict(resume)
    return run.run(checkpoint)


def warm_up(args, images, augmented, device, world=SINGLE):
    """Pay the process's one-time costs before any method is timed: every method builds its model
    and takes two steps on the first batches, and evaluates once, on a throwaway model. The torch
    random states are restored afterwards; return the seconds it took."""
    start = time.perf_counter()
    first = slice(0, 2 * args.batch_size)
    small = dataclasses.replace(images, train_x=images.train_x[first], train_y=images.train_y[first],
                                test_x=images.test_x[:512], test_y=images.test_y[:512])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for method in args.methods:
            run = MethodRun(method, args, small, augmented, device, world)
            run.begin_epoch()
            run.model.train()
            for index in range(run.steps_per_epoch):
                run.train_step(index)
            run.evaluate()
    return elapsed_since(start, device)


def checkpoint_path(args, method):
    return args.out / "checkpoints" / f"{method}.pt"


def resume_points(args, images, world, device):
    """With ``--resume``: {method: the payload of its newest usable checkpoint}, for the methods
    that have one; all read and checked by process 0 and shared with the others.

    Raises:
        UsageError: if a method's checkpoints are all unusable, or one is from another run.
    """
    if not args.resume:
        return {}
    found, problem = {}, None
    if world.writer:
        try:
            for method in args.methods:
                path = checkpoint_path(args, method)
                payload = checkpoints.latest(path, lambda line: print(f"train.py: warning: {line}", file=sys.stderr))
                if payload is None:
                    continue
                expected = run_identity(args, method, images, world)
                differ = [key for key in expected if payload["identity"].get(key) != expected[key]]
                if differ:
                    key = differ[0]
                    raise UsageError(f"checkpoint {path} is from another run: {key} {payload['identity'].get(key)!r} "
                                     f"there, {expected[key]!r} here; resume with its options or choose another --out")
                found[method] = payload
        except (checkpoints.CheckpointError, UsageError) as error:
            problem = str(error)
    if world.size > 1:
        shared = [(found, problem)]
        dist.broadcast_object_list(shared, src=0, device=device if device.type == "cuda" else None)
        found, problem = shared[0]
    if problem is not None:
        raise UsageError(problem)
    return found


DYNAMICS = tuple(f"coherence/{m}" for m in DEFAULT_LAGS) + ("function_step",)


def dynamics(recorder):
    """The recorder's per-step coherence and function-space step size, NaN as None (valid JSON)."""
    series = {"step": recorder.column("step")}
    for key in DYNAMICS:
        if any(key in row for row in recorder.flush()):
            series[key] = [None if v != v else v for v in recorder.column(key)]
    return series


SMOOTHING = 25  # steps in the moving average of the coherence curves drawn (the CSV keeps every step)


def moving_average(values, window=SMOOTHING):
    """At each step, the mean of the finite values among the last ``window`` steps (NaN if none)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    count = counts[ends] - counts[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (sums[ends] - sums[starts]) / count, np.nan)


def recorded(recorders, key):
    """{method: (steps, values)} of the runs that recorded ``key`` at some step (NaN elsewhere)."""
    found = {}
    for method, recorder in recorders.items():
        rows = recorder.flush()
        if any(key in row and row[key] == row[key] for row in rows):
            found[method] = (recorder.column("step"), recorder.column(key))
    return found


def dynamics_figure(results, recorders, model_name):
    """The gradient dynamics of the GAN run (else of the first run with GAN's stats), the coherence
    at both lags and the function-space step size of every run that recorded them, and every
    method's test accuracy: one panel each, none left empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    method_colors = {method: f"C{i}" for i, method in enumerate(METHODS)}  # the same in every panel
    with_stats = [m for m, r in recorders.items() if any("alpha" in row for row in r.flush())]
    shown = "gan" if "gan" in with_stats else next(iter(with_stats), None)
    coherent = {m: recorded(recorders, f"coherence/{m}") for m in DEFAULT_LAGS}
    coherent = {lag: runs for lag, runs in coherent.items() if runs}
    probed = recorded(recorders, "function_step")
    panels = ((["layers", "scale"] if shown is not None else []) + (["coherence"] if coherent else [])
              + (["function"] if probed else []) + ["accuracy"])
    cols = 1 if len(panels) == 1 else 2 if len(panels) in (2, 4) else 3
    rows = -(-len(panels) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    for extra in grid.flat[len(panels):]:
        fig.delaxes(extra)
    axes = dict(zip(panels, grid.flat))
    if shown is not None:
        layers, scale = axes["layers"], axes["scale"]
        recorder = recorders[shown]
        steps = recorder.column("step")
        names = recorder.names
        colors = plt.cm.viridis([i / max(len(names) - 1, 1) for i in range(len(names))])
        for name, color in zip(names, colors):
            layers.plot(steps, recorder.column(f"std/{name}"), color=color, lw=0.8, label=name)
        layers.plot(steps, recorder.column("global_std"), color="red", lw=2, label="global")
        layers.set(yscale="log", xlabel="step", ylabel="gradient std",
                   title=f"{shown}: layer-wise gradient std (input layer dark, output layer yellow)")
        if len(names) <= 16:
            layers.legend(fontsize=6, ncol=2)
        scale.plot(steps, recorder.column("global_std"), color="red", label="global std sigma")
        scale.plot(steps, recorder.column("alpha"), color="black", label="alpha")
        scale.set(yscale="log", xlabel="step", title=f"{shown}: global gradient std and alpha")
        scale.legend()
    if coherent:
        coherence = axes["coherence"]
        styles = dict(zip(DEFAULT_LAGS, ("-", "--")))
        for lag, runs in coherent.items():
            for method, (steps, values) in runs.items():
                coherence.plot(steps, moving_average(values), ls=styles[lag], lw=1, color=method_colors[method],
                               label=f"{method}, m={lag}")
        coherence.axhline(0.0, color="gray", lw=0.5)
        coherence.set(xlabel="step", ylabel="cos(g_t, g_t-m)",
                      title=f"gradient coherence at lags m = 1 and 5 ({SMOOTHING}-step moving average)")
        coherence.legend(fontsize=7, ncol=2)
    if probed:
        function = axes["function"]
        for method, (steps, values) in probed.items():
            points = [(s, v) for s, v in zip(steps, values) if v == v]
            function.plot(*zip(*points), marker=".", lw=0.8, color=method_colors[method], label=method)
        function.set(yscale="log", xlabel="step", ylabel="RMS output distance",
                     title="function-space step size (probe batch, since the previous probe)")
        function.legend()
    accuracy_ax = axes["accuracy"]
    for method, curves in results.items():
        epochs = range(1, len(curves["test_accuracy"]) + 1)
        accuracy_ax.plot(epochs, curves["test_accuracy"], marker="o", color=method_colors[method], label=method)
    accuracy_ax.set(xlabel="epoch", ylabel="test accuracy", title=f"{model_name}: test accuracy per method")
    accuracy_ax.legend()
    fig.tight_layout()
    return fig


def plot(path, results, recorders, model_name):
    """Write :func:`dynamics_figure` to ``path`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = dynamics_figure(results, recorders, model_name)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def listing(paths):
    """'a', 'a and b', 'a, b and c'."""
    paths = [str(p) for p in paths]
    return paths[0] if len(paths) == 1 else f"{', '.join(paths[:-1])} and {paths[-1]}"


def comparison_table(results):
    lines = [f"{'method':<10} {'final acc':>9} {'best acc':>9} {'final loss':>10} {'seconds':>8}"]
    for method, c in results.items():
        lines.append(f"{method:<10} {c['test_accuracy'][-1]:>9.4f} {max(c['test_accuracy']):>9.4f} {c['loss'][-1]:>10.4f} {c['seconds']:>8.1f}")
    return "\n".join(lines)


def main(argv=None):
    """Run the comparison; return {method: final test accuracy}."""
    args = parse_args(argv)
    world = World.from_env()
    try:
        check_args(args, world)
        images, augmented = load(args)
        check_shards(len(images.train_y), args.batch_size, world)
    except UsageError as error:
        sys.exit(f"train.py: error: {error}")
    device = training_device(args, world)
    if world.size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return compare(args, world, images, augmented, device)
    finally:
        if world.size > 1:
            dist.destroy_process_group()


def compare(args, world, images, augmented, device):
    """Train every method (resuming where asked), then process 0 writes the outputs."""
    try:
        resumed = resume_points(args, images, world, device)
    except UsageError as error:
        sys.exit(f"train.py: error: {error}")
    say = print if world.writer else (lambda *_, **__: None)
    say(f"{args.model} on {args.dataset} ({len(images.train_y)} train, {len(images.test_y)} test), "
        f"{args.epochs} epochs, methods {', '.join(args.methods)}, device {device}"
        + (f", {world.size} processes" if world.size > 1 else "")
        + (f", inputs blurred in epochs {args.deficit_epochs}" if args.deficit_epochs else ""))
    images = dataclasses.replace(images, train_x=images.train_x.to(device), train_y=images.train_y.to(device),
                                 test_x=images.test_x.to(device), test_y=images.test_y.to(device))
    unfinished = [m for m in args.methods if resumed.get(m, {}).get("position", {}).get("epoch") != args.epochs]
    pending = argparse.Namespace(**{**vars(args), "methods": unfinished})
    warm_up_seconds = warm_up(pending, images, augmented, device, world) if unfinished else 0.0
    say(f"warm-up (the process's one-time costs, in no method's seconds): {warm_up_seconds:.1f} s")
    results, recorders = {}, {}
    for method in args.methods:
        if method in resumed:
            position = resumed[method]["position"]
            say(f"{method}: resuming from epoch {position['epoch']}, step {position['step']}"
                if method in unfinished else f"{method}: finished, results loaded from its checkpoint")
        results[method], recorder = train_method(method, args, images, augmented, device, world,
                                                 checkpoint=checkpoint_path(args, method), resume=resumed.get(method))
        if recorder is not None:
            recorders[method] = recorder
    if not world.writer:
        return {m: c["test_accuracy"][-1] for m, c in results.items()}
    print(comparison_table(results))

    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "world_size": world.size,
        "warm_up_seconds": warm_up_seconds,
        "final_accuracy": {m: c["test_accuracy"][-1] for m, c in results.items()},
        "best_accuracy": {m: max(c["test_accuracy"]) for m, c in results.items()},
        "curves": results,
        "dynamics": {method: dynamics(recorder) for method, recorder in recorders.items()},
    }
    written = [args.out / "metrics.json"]
    written[-1].write_text(json.dumps(metrics, indent=2) + "\n")
    for method, recorder in recorders.items():
        written.append(args.out / f"gradients_{method}.csv")
        recorder.write_csv(written[-1])
    written.append(args.out / "dynamics.png")
    plot(written[-1], results, recorders, args.model)
    written.append(args.out / "checkpoints")
    print(f"wrote {listing(written)}")
    return metrics["final_accuracy"]


if __name__ == "__main__":
    main()
