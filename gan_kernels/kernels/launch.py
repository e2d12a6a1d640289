"""One GAN step on the Triton kernels: the host side that owns grids and meta-parameters.

Per step: one statistics launch per dtype group, one finalize launch, one apply launch per dtype
group (the two-pass form adds one statistics and one finalize launch). The number of launches does
not depend on the number of tensors, nothing is read back to the host, and with the layout cached
nothing is rebuilt, so a step can be captured in a CUDA graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import triton.language as tl
from torch import Tensor

from ..state import GANState, GANStats
from . import apply, finalize, stats
from .layout import Layout, get_layout

STATS_FORMS = ("single_read", "two_pass")
TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
NUM_WARPS = 8  # 256 threads: a 16 KiB tile is 64 bytes, four 16-byte vectors, per thread
FINALIZE_CHUNK = 1024
FINALIZE_WARPS = 4

_launches = [0]


@contextlib.contextmanager
def count_launches() -> Iterator[list[int]]:
    """Count the kernel launches made inside the block: ``with count_launches() as n: ...; n[0]``."""
    start = _launches[0]
    counted = [0]
    try:
        yield counted
    finally:
        counted[0] = _launches[0] - start


def _launch(kernel, grid: int, *args, **meta) -> None:
    _launches[0] += 1
    kernel[(grid,)](*args, **meta)


def is_direct(t: Tensor) -> bool:
    """Whether the kernels can read ``t`` in place: its elements fill one gap-free span of memory
    (any dense strides, e.g. channels_last) that starts 16-byte aligned."""
    if t.data_ptr() % 16:
        return False
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _stats(layout: Layout, outputs: tuple[Tensor, ...], form: int) -> None:
    means = outputs[0]
    for group in layout.groups:
        if group.num_tiles:
            _launch(
                stats.tile_stats_kernel, group.num_tiles,
                group.ptrs, group.numels, group.first_tile, group.tile_tensor, group.index, means,
                layout.part_means, layout.part_m2, group.first_part,
                FORM=form.value, DTYPE=TRITON_DTYPES[group.dtype], BLOCK=group.tile, num_warps=NUM_WARPS,
            )


def _finalize(layout: Layout, outputs: tuple[Tensor, ...], state: GANState, phase: int, mode: str) -> None:
    means, stds, global_std, alpha, nonfinite = outputs
    _launch(
        finalize.finalize_kernel, layout.num_tensors,
        layout.part_means, layout.part_m2, layout.first_part, layout.numels, layout.tile_elems,
        layout.tensor_m2, layout.num_tensors, layout.total_elements,
        means, stds, global_std, alpha, nonfinite, state.exponent, state.step, layout.arrivals,
        PHASE=phase.value, GAN_MODE=mode == "gan", CHUNK=FINALIZE_CHUNK, num_warps=FINALIZE_WARPS,
    )


def _apply(layout: Layout, outputs: tuple[Tensor, ...], mode: str) -> None:
    means, stds, _, alpha, nonfinite = outputs
    for group in layout.groups:
        if group.num_tiles:
            _launch(
                apply.apply_kernel, group.num_tiles,
                group.ptrs, group.numels, group.first_tile, group.tile_tensor, group.index,
                means, stds, alpha, nonfinite,
                MODE=apply.MODES[mode], DTYPE=TRITON_DTYPES[group.dtype], BLOCK=group.tile,
                num_warps=NUM_WARPS,
            )


def gan_(grads: list[Tensor], state: GANState, mode: str, stats_form: str = "single_read") -> GANStats:
    """One GAN step on the kernels, in place, for validated float32/float16/bfloat16 ``grads``.

    Tensors the kernels cannot read in place (gaps between elements, or a data pointer not 16-byte
    aligned) are staged: copied to a contiguous buffer, transformed there, copied back.
    ``stats_form`` is ``"single_read"`` (default: one read for the statistics) or ``"two_pass"``.
    """
    if stats_form not in STATS_FORMS:
        raise ValueError(f"unknown stats_form {stats_form!r}; available: {', '.join(STATS_FORMS)}")
    work = [g if is_direct(g) else g.contiguous() for g in grads]
    layout = get_layout(work)
    device = grads[0].device
    k = len(grads)
    outputs = (
        torch.empty(k, dtype=torch.float32, device=device),
        torch.empty(k, dtype=torch.float32, device=device),
        torch.empty((), dtype=torch.float32, device=device),
        torch.empty((), dtype=torch.float32, device=device),
        torch.empty((), dtype=torch.bool, device=device),
    )
    if stats_form == "single_read":
        _stats(layout, outputs, stats.SINGLE_READ)
        _finalize(layout, outputs, state, finalize.CHAN, mode)
    else:
        _stats(layout, outputs, stats.TILE_SUMS)
        _finalize(layout, outputs, state, finalize.MEANS_ONLY, mode)
        _stats(layout, outputs, stats.DEVIATIONS)
        _finalize(layout, outputs, state, finalize.ABOUT_TENSOR_MEAN, mode)
    _apply(layout, outputs, mode)
    for g, w in zip(grads, work):
        if w is not g:
            g.copy_(w)
    means, stds, global_std, alpha, nonfinite = outputs
    return GANStats(alpha=alpha, global_std=global_std, means=means, stds=stds, nonfinite=nonfinite)
