"""Input checks shared by every entry point: they raise before anything is modified (SPEC §3)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .state import GANState

MODES = ("gan", "gc", "znorm")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; available modes: {', '.join(MODES)}")
    return mode


def check_state(state: GANState | None, device: torch.device | None = None) -> GANState:
    """``state``, or a fresh :class:`GANState` on ``device`` for ``None`` (created there, so that
    no copy to the device, and no host synchronisation, is needed)."""
    if state is None:
        return GANState(device=device)
    if not isinstance(state, GANState):
        raise TypeError(f"state must be a GANState or None, got {type(state).__name__}")
    return state


def _byte_range(t: Tensor) -> tuple[int, int]:
    """The [start, end) byte interval of storage that ``t`` can touch."""
    start = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + (last + 1) * t.element_size()


def as_list(grads: Iterable[Tensor]) -> list[Tensor]:
    """``grads`` as a list; a single tensor or a non-iterable is a ``TypeError``."""
    if isinstance(grads, Tensor):
        raise TypeError("grads must be a sequence of tensors, not a single Tensor; wrap it in a list")
    try:
        return list(grads)
    except TypeError:
        raise TypeError(f"grads must be a sequence of tensors, got {type(grads).__name__}") from None


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a DTensor (sharded across ranks), without importing torch.distributed early."""
    return type(t).__name__ == "DTensor" and type(t).__module__.startswith("torch.distributed")


def check_grads(grads: Iterable[Tensor]) -> list[Tensor]:
    """Validate a list of gradients and return it as a list.

    Every element must be a dense (strided) floating-point tensor, all on one device; no element
    may write the same memory twice (an expanded tensor) or share memory with another element,
    since each is transformed in place exactly once. Raises ``TypeError`` / ``ValueError`` naming the
    offending index; modifies nothing.
    """
    grads = as_list(grads)
    for i, g in enumerate(grads):
        if not isinstance(g, Tensor):
            raise TypeError(f"grads[{i}] is a {type(g).__name__}, not a torch.Tensor")
        if g.layout != torch.strided:
            raise TypeError(f"grads[{i}] has layout {g.layout}; only dense (strided) tensors are supported")
        if not g.is_floating_point():
            raise TypeError(f"grads[{i}] has dtype {g.dtype}; a floating-point dtype is required")
        if g.device != grads[0].device:
            raise ValueError(
                f"grads[{i}] is on {g.device} but grads[0] is on {grads[0].device}; "
                "all tensors must be on one device"
            )
        if any(stride == 0 and size > 1 for size, stride in zip(g.shape, g.stride())):
            raise ValueError(f"grads[{i}] is an expanded view (stride 0); it cannot be written in place")
    ranges = sorted((_byte_range(g), i) for i, g in enumerate(grads) if g.numel() > 0)
    for ((_, end), i), ((start, _), j) in zip(ranges, ranges[1:]):
        if start < end:
            raise ValueError(
                f"grads[{min(i, j)}] and grads[{max(i, j)}] overlap in memory; "
                "each gradient must be a distinct tensor"
            )
    return grads


def group_by_dtype(grads: list[Tensor]) -> dict[torch.dtype, list[int]]:
    """Indices of ``grads`` per dtype, in order of first appearance."""
    groups: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault(g.dtype, []).append(i)
    return groups


def stats_dtype(grads: list[Tensor]) -> torch.dtype:
    """The dtype every statistic of a step accumulates in: float64 when any gradient is float64
    (so that float64 results keep float64 accuracy, sigma pooling all tensors), else float32."""
    return torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32


def arithmetic_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype elementwise arithmetic on a tensor of ``dtype`` runs in: float32 for float16 and
    bfloat16, else ``dtype`` itself."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
