"""``gan_``: the functional entry point — validation, grouping by dtype, backend dispatch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import fallback
from .state import GANState, GANStats
from .validation import check_grads, check_mode, check_state

BACKENDS = ("auto", "torch", "triton")


def check_backend(backend: str) -> str:
    """Validate a backend name; ``"triton"`` raises until the Triton path is available."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available backends: {', '.join(BACKENDS)}")
    if backend == "triton":
        raise ValueError("backend='triton' is not available yet; use backend='torch' or 'auto'")
    return backend


def group_by_dtype(grads: list[Tensor]) -> dict[torch.dtype, list[int]]:
    """Indices of ``grads`` per dtype, in order of first appearance."""
    groups: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault(g.dtype, []).append(i)
    return groups


def gan_(
    grads: Sequence[Tensor],
    state: GANState | None = None,
    *,
    mode: str = "gan",
    backend: str = "auto",
) -> GANStats:
    """Apply Gradient Autoscaled Normalization to ``grads``, in place, and return the step's stats.

    Every tensor given is transformed (the caller chooses eligibility): each loses its own mean and,
    in mode ``"gan"``, all are multiplied by one factor alpha derived from the global std of the
    centered gradients (SPEC §1). Mode ``"gc"`` only removes the means; ``"znorm"`` divides each
    centered tensor by its own std. If any element is NaN/Inf nothing is modified and
    ``stats.nonfinite`` is True. Never records autograd and never synchronises with the host.

    Args:
        grads: k floating-point tensors (any shapes, strides and dtypes; mixed dtypes allowed) on one
            device. Overwritten in place, each rounded once into its own dtype.
        state: the :class:`GANState` carried between steps (its ``exponent`` is set once, its
            ``step`` counted); ``None`` means a fresh state.
        mode: ``"gan"`` (default), ``"gc"`` or ``"znorm"``.
        backend: ``"auto"``, ``"torch"`` (the multi-tensor PyTorch fallback) or ``"triton"``.

    Returns:
        :class:`GANStats` with 0-d ``alpha``, ``global_std``, ``nonfinite`` and (k,) ``means``,
        ``stds``, on the gradients' device.

    Raises:
        TypeError / ValueError: for bad input (SPEC §3), naming the offending index, before anything
        is modified.
    """
    grads = check_grads(grads)
    mode = check_mode(mode)
    check_backend(backend)
    state = check_state(state)
    with torch.no_grad():
        state.to_(grads[0].device if grads else state.device)
        return fallback.gan_(grads, group_by_dtype(grads), state, mode)
