"""Input checks shared by every entry point: they raise before anything is modified (docs/guarantees.md)."""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

import torch
from torch import Tensor

from .state import GANState

MODES = ("gan", "center", "gc", "znorm")
_layout = attrgetter("layout")
_device = attrgetter("device")


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
    # One C-level pass per property over the whole list; the element-wise loop that names the
    # offending index runs only when one of them fails.
    valid = (
        all(isinstance(g, Tensor) for g in grads)
        and set(map(_layout, grads)) <= {torch.strided}
        and all(map(Tensor.is_floating_point, grads))
        and len(set(map(_device, grads))) <= 1
    )
    strides = list(map(Tensor.stride, grads)) if valid else []
    if not valid or any(0 in stride and _is_expanded(g) for g, stride in zip(grads, strides)):
        _raise_for_first_invalid(grads)
    _check_disjoint(grads, strides)
    return grads


def _is_expanded(t: Tensor) -> bool:
    """Whether ``t`` has a dimension of stride 0 and size > 1 (writing it would write one
    element several times)."""
    return any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride()))


def _raise_for_first_invalid(grads: list[Tensor]) -> None:
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
        if _is_expanded(g):
            raise ValueError(f"grads[{i}] is an expanded view (stride 0); it cannot be written in place")


def _check_disjoint(grads: list[Tensor], strides: list[tuple[int, ...]]) -> None:
    """Raise if two gradients can touch the same bytes: their [first, last] byte spans overlap."""
    starts = list(map(Tensor.data_ptr, grads))
    sizes = list(map(Tensor.element_size, grads))
    spans = []
    for i, (g, start, stride, size) in enumerate(zip(grads, starts, strides, sizes)):
        if g.numel():
            last = sum((n - 1) * s for n, s in zip(g.shape, stride))
            spans.append((start, start + (last + 1) * size, i))
    spans.sort()
    for (_, end, i), (start, _, j) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(
                f"grads[{min(i, j)}] and grads[{max(i, j)}] overlap in memory; "
                "each gradient must be a distinct tensor"
            )


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
