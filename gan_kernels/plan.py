"""Step plans: all that a GAN step needs to know about a list of gradients, worked out once.

Validation, the choice of backend, the size classes of the fallback, the staging of strided tensors
and the kernels' tables depend only on each gradient's data pointer, sizes, strides, dtype and
device. A :class:`Plan` holds the results for one such *layout*, so that a training loop which keeps
its gradient buffers pays, per step, only for reading that metadata back and comparing it (a few
C-level passes over the list), plus the work that depends on the data. Anything that changes a
pointer, a size, a stride, a dtype or a device misses the plan and takes the full path.

Lifetimes. Plans live in a small least-recently-used cache. A plan also stays alive while something
else holds it: a :class:`~gan_kernels.GAN` optimizer holds the plan of its last step, and a plan
used inside CUDA-graph capture is kept until :func:`release_captured_plans` (a captured graph
replays the plan's tables and scratch, which must not be freed or handed to other tensors while
the graph can run). Plans hold no reference to the gradients themselves.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections import OrderedDict
from operator import attrgetter

import torch
from torch import Tensor

from .fallback import FallbackPlan
from .rule import Rule
from .state import GANState, GANStats

CACHE_SIZE = 8
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_data_ptr = Tensor.data_ptr
_size = Tensor.size
_stride = Tensor.stride
_dtype = attrgetter("dtype")
_device = attrgetter("device")


def _metadata(grads: list[Tensor]) -> tuple:
    """Everything about the gradients, besides their data pointers, that a plan depends on."""
    return tuple(map(_size, grads)), tuple(map(_stride, grads)), tuple(map(_dtype, grads)), tuple(map(_device, grads))


class Plan:
    """One layout's plan: the backend's own plan (:class:`~gan_kernels.fallback.FallbackPlan` or
    :class:`~gan_kernels.kernels.launch.KernelPlan`) and the metadata it was built for.

    Attributes:
        backend: the ``backend`` argument the plan was made for (``"auto"``, ``"torch"``, ``"triton"``).
        uses_triton: whether steps run on the Triton kernels.
        device: the gradients' device.
    """

    def __init__(self, grads: list[Tensor], backend: str, uses_triton: bool) -> None:
        self.backend = backend
        self.ptrs = tuple(map(_data_ptr, grads))
        self.metadata = _metadata(grads)
        self.device = grads[0].device
        self.uses_triton = uses_triton
        self.captured = False
        self.row_runner: FallbackPlan | None = None  # mode "gc" on a Triton plan, made on first use
        if uses_triton:
            from .kernels.launch import KernelPlan

            self.runner = KernelPlan(grads, self.device)
        else:
            self.runner = FallbackPlan(grads, self.device)

    def step(self, grads: list[Tensor], state: GANState, mode: str, rule: Rule | None = None, **options) -> GANStats:
        """One step on ``grads``, which must match this plan; ``state`` on the plan's device; ``rule``
        the alpha rule (None: the built-in one). Mode ``"gc"`` (one mean per row, a baseline) runs
        on the fallback on every backend."""
        if self.device.type == "cuda" and not self.captured and torch.cuda.is_current_stream_capturing():
            self.captured = True
            _captured.append(self)
        if mode == "gc" and self.uses_triton:
            if self.row_runner is None:
                self.row_runner = FallbackPlan(grads, self.device)
            return self.row_runner.step(grads, state, mode, rule)
        return self.runner.step(grads, state, mode, rule, **options)


_cache: OrderedDict[tuple, Plan] = OrderedDict()
_captured: list[Plan] = []
_last: Plan | None = None


def lookup(grads: list[Tensor], backend: str, held: Plan | None = None) -> Plan | None:
    """The plan of ``grads`` if one exists, else None: ``held`` (a caller's own plan) is tried
    first, then the plan of the last step, then the cache. Never raises: anything unusual (a
    non-tensor, a sparse tensor, a DTensor) is a miss, left to validation to name."""
    global _last
    try:
        ptrs = tuple(map(_data_ptr, grads))
        plan = held if held is not None else _last
        if plan is None or plan.ptrs != ptrs or plan.backend != backend:
            plan = _cache.get((backend, ptrs))
            if plan is None:
                return None
            _cache.move_to_end((backend, ptrs))
        if _metadata(grads) != plan.metadata:
            return None
    except Exception:  # noqa: BLE001 - the full path validates and raises the proper error
        return None
    _last = plan
    return plan


def build(grads: list[Tensor], backend: str) -> Plan:
    """A new plan for validated, non-empty ``grads`` and a valid ``backend``, cached; may raise a
    ``ValueError`` when ``backend="triton"`` cannot run here."""
    global _last
    plan = _last = Plan(grads, backend, uses_triton(grads, backend))
    _cache[(backend, plan.ptrs)] = plan
    _cache.move_to_end((backend, plan.ptrs))
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return plan


def release_captured_plans() -> int:
    """Let go of the plans kept alive because a step used them inside CUDA-graph capture; call it
    once no captured graph that ran a GAN step will be replayed again (after deleting the graphs).
    Returns how many were released. Plans still held by an optimizer or the cache stay."""
    released = len(_captured)
    for plan in _captured:
        plan.captured = False
    _captured.clear()
    return released


# The finalize's acquire/release atomic needs Volta or newer.
MIN_CAPABILITY = (7, 0)


def triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None when they can: they need Triton and
    an NVIDIA GPU of compute capability 7.0 or newer (or CPU tensors under TRITON_INTERPRET=1)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if device.type == "cuda":
        return _gpu_unsupported(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"the Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), not on {device.type}"


@functools.cache
def _gpu_unsupported(index: int) -> str | None:
    """Why the kernels cannot run on CUDA device ``index``, or None; asked once per device."""
    if torch.version.hip is not None:
        return "the kernels are built and tested for NVIDIA GPUs, and this PyTorch is a ROCm build"
    capability = torch.cuda.get_device_capability(index)
    if capability < MIN_CAPABILITY:
        return (
            f"the kernels need an NVIDIA GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer "
            f"(their finalize uses acquire/release atomics); cuda:{index} ({torch.cuda.get_device_name(index)}) "
            f"is {capability[0]}.{capability[1]}"
        )
    return None


def uses_triton(grads: list[Tensor], backend: str) -> bool:
    """Whether ``grads`` (validated, non-empty) run on the Triton kernels for ``backend``."""
    if backend == "torch":
        return False
    reason = triton_unavailable(grads[0].device)
    if backend == "triton" and reason is not None:
        raise ValueError(f"backend='triton' cannot run here: {reason}; available backends: 'torch', 'auto'")
    if backend == "auto" and (grads[0].device.type != "cuda" or reason is not None):
        return False
    # The kernels take float32/float16/bfloat16; a list with float64 keeps float64 statistics on
    # the fallback.
    return all(g.dtype in TRITON_DTYPES for g in grads)
