"""The multi-tensor PyTorch fallback: GAN on any device, with batched ops and no device sync.

Statistics (per-tensor count, mean, M2 about the mean) take one read of every gradient from main
memory, with two-pass numerics:

* small tensors (up to ``STACK_MAX`` elements) of equal size are stacked into one matrix, so each
  size class costs a handful of row-wise reductions however many tensors it holds;
* larger tensors are cut into tiles of ``TILE`` elements, small enough to stay in cache between
  the tile's sum and its squared deviations; tiles are combined with Chan's formula.

The apply computes ``(g - shift) * scale`` in place, rounded once into each tensor's dtype (float16
and bfloat16 through float32). On the CPU, where reading a scalar on the host costs nothing, each
tensor takes one fused pass; on an accelerator the factors stay on the device and
``torch._foreach_*`` ops cover the whole list, each result written through a ``torch.where`` on
the non-finite flag, so that a non-finite step leaves every bit as it was without a host-side
branch.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from .rule import ZNORM_EPS, autoscale
from .state import GANState, GANStats
from .validation import arithmetic_dtype, stats_dtype

STACK_MAX = 1 << 16
# 2**18 float32 elements (1 MiB) stay in a core's L2 between a tile's two passes.
TILE = 1 << 18
TILED = -1


def _device_tensor(values: list, device: torch.device, dtype: torch.dtype = torch.int64) -> Tensor:
    """``torch.tensor(values)`` on ``device``; to a GPU through pinned memory and a non-blocking
    copy, since a copy from pageable memory would synchronise the host with the device."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _segment_sum(values: Tensor, lengths: Tensor) -> Tensor:
    return torch.segment_reduce(values, "sum", lengths=lengths, unsafe=True)


def _stacked_stats(rows: list[Tensor], acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """Means and M2 of equally sized 1-D tensors, stacked as the rows of one matrix."""
    matrix = torch.stack(rows).to(acc)
    mean = matrix.sum(dim=1) / matrix.shape[1]
    matrix.sub_(mean[:, None])
    return mean, matrix.square_().sum(dim=1)


def _tiled_stats(flats: list[Tensor], acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """Means and M2 of large 1-D tensors, each tile two-pass in cache, tiles combined by Chan."""
    device = flats[0].device
    scratch = torch.empty(min(TILE, max(f.numel() for f in flats)), dtype=acc, device=device)
    tile_means, tile_m2, tile_counts, tiles_per_tensor = [], [], [], []
    for flat in flats:
        for start in range(0, flat.numel(), TILE):
            tile = flat[start : start + TILE]
            count = tile.numel()
            deviation = scratch[:count]
            if tile.dtype == acc:
                mean = tile.mean()
                torch.sub(tile, mean, out=deviation)
            else:
                mean = deviation.copy_(tile).mean()
                deviation.sub_(mean)
            tile_means.append(mean)
            tile_m2.append(torch.dot(deviation, deviation))
            tile_counts.append(count)
        tiles_per_tensor.append(-(-flat.numel() // TILE))
    means_t = torch.stack(tile_means)
    counts_t = _device_tensor(tile_counts, device, acc)
    lengths = _device_tensor(tiles_per_tensor, device)
    counts = _device_tensor([f.numel() for f in flats], device, acc)
    mean = _segment_sum(counts_t * means_t, lengths) / counts
    spread = means_t - mean.repeat_interleave(lengths, output_size=len(tile_means))
    m2 = _segment_sum(torch.stack(tile_m2), lengths) + _segment_sum(counts_t * spread**2, lengths)
    return mean, m2


def tensor_stats(tensors: list[Tensor], acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-tensor mean and M2 (sum of squared deviations about the mean) of one dtype group.

    Args:
        tensors: k tensors of one floating dtype on one device, any shapes and strides.
        acc: the dtype to accumulate in (float32 or float64).

    Returns:
        ``(means, m2)``, each of shape (k,) in ``acc``; 0 and 0 for a zero-size tensor. Reads only.
    """
    device = tensors[0].device
    # Keyed by size for the stacked classes; TILED gathers the tensors too large to stack.
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        by_size[t.numel() if t.numel() <= STACK_MAX else TILED].append(i)
    order, means, m2 = [], [], []
    for size, indices in by_size.items():
        flats = [tensors[i].reshape(-1) for i in indices]
        if size == 0:
            mean = torch.zeros(len(indices), dtype=acc, device=device)
            piece = (mean, mean)
        elif size == TILED:
            piece = _tiled_stats(flats, acc)
        else:
            piece = _stacked_stats(flats, acc)
        order += indices
        means.append(piece[0])
        m2.append(piece[1])
    position = _device_tensor(sorted(range(len(order)), key=order.__getitem__), device)
    return torch.cat(means)[position], torch.cat(m2)[position]


def finalize(
    counts: Tensor, means: Tensor, m2: Tensor, state: GANState, mode: str
) -> tuple[GANStats, Tensor, Tensor]:
    """Turn per-tensor statistics into the step's stats and update ``state``, on the device.

    Args:
        counts, means, m2: shape (k,), one floating dtype: per-tensor sizes, means and sums of
            squared deviations about the means.
        state: ``exponent`` and ``step`` are updated in place, unless the step is non-finite.
        mode: ``"gan"``, ``"gc"`` or ``"znorm"``.

    Returns:
        ``(stats, shift, scale)``: the apply computes ``(g_i - shift[i]) * scale[i]``, both (k,),
        on finite steps only (``stats.nonfinite`` False).
    """
    total = counts.sum()
    sigma = torch.where(total > 1, torch.sqrt(m2.sum() / (total - 1).clamp(min=1)), 0.0)
    stds = torch.where(counts > 1, torch.sqrt(m2 / (counts - 1).clamp(min=1)), 0.0)
    nonfinite = ~(torch.isfinite(sigma) & torch.isfinite(means).all())
    alpha, exponent = autoscale(sigma, state.exponent)
    state.exponent.copy_(torch.where(nonfinite, state.exponent, exponent))
    state.step.add_((~nonfinite).to(state.step.dtype))

    if mode == "gan":
        scale = alpha.expand(len(means))
    elif mode == "znorm":
        scale = 1.0 / (stds + ZNORM_EPS)
    else:
        scale = torch.ones_like(means)
    if mode != "gan":
        alpha = torch.ones_like(alpha)
    stats = GANStats(alpha=alpha, global_std=sigma, means=means, stds=stds, nonfinite=nonfinite)
    return stats, means, scale


def apply_device_(tensors: list[Tensor], shift: Tensor, scale: Tensor, keep: Tensor, mode: str) -> None:
    """In place, ``g_i = (g_i - shift[i]) * scale[i]`` where ``keep`` is True, with every factor and
    the flag left on the device.

    For accelerators, where reading a factor on the host would synchronise: ``torch._foreach_*``
    ops over the list compute the results in the arithmetic dtype (float32 for float16/bfloat16),
    and each tensor is written through ``torch.where(keep, result, g)`` in its own dtype, so that a
    non-finite step (``keep`` False) leaves every bit as it was, NaN payloads included (arithmetic
    or a round trip through float32 would canonicalise them). ``tensors`` share one dtype;
    ``shift`` and ``scale`` have shape (len(tensors),); ``keep`` is a 0-d bool tensor.
    """
    acc = arithmetic_dtype(tensors[0].dtype)
    work = torch._foreach_sub([t.to(acc) for t in tensors], list(shift.unbind()))
    if mode != "gc":
        torch._foreach_mul_(work, list(scale.unbind()))
    for t, w in zip(tensors, work):
        torch.where(keep, w.to(t.dtype), t, out=t)


def apply_host_(tensors: list[Tensor], shift: Tensor, scale: Tensor, mode: str) -> None:
    """In place, ``g_i = scale[i] * g_i - scale[i] * shift[i]``, one fused pass per tensor.

    For CPU tensors, where the factors can be read on the host for free: one ``torch.add`` with a
    scalar ``alpha`` per tensor (float16/bfloat16 through a float32 scratch tile, rounded once).
    ``tensors`` share one dtype; ``shift`` and ``scale`` have shape (len(tensors),). ``mode`` is
    unused: the factors already carry it.
    """
    acc = arithmetic_dtype(tensors[0].dtype)
    scratch = None
    for t, m, a in zip(tensors, shift.tolist(), scale.tolist()):
        if t.numel() == 1:
            # g - mean is exactly 0 here, but scale * g - scale * mean need not cancel exactly.
            a = m = 0.0
        offset = torch.tensor(-m * a, dtype=acc)
        if t.dtype == acc:
            torch.add(offset, t, alpha=a, out=t)
            continue
        if scratch is None:
            scratch = torch.empty(min(TILE, max(x.numel() for x in tensors)), dtype=acc)
        if not t.is_contiguous():
            t.copy_(torch.add(offset, t.to(acc), alpha=a))
            continue
        flat = t.view(-1)
        for start in range(0, flat.numel(), TILE):
            tile = flat[start : start + TILE]
            work = scratch[: tile.numel()]
            torch.add(offset, work.copy_(tile), alpha=a, out=work)
            tile.copy_(work)


def statistics(
    grads: list[Tensor], groups: dict[torch.dtype, list[int]], acc: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-tensor ``(counts, means, m2)`` of ``grads`` (dtype groups: dtype -> indices), each of
    shape (k,) in ``acc``, on ``device`` (the gradients'). Reads only."""
    means = torch.zeros(len(grads), dtype=acc, device=device)
    m2 = torch.zeros_like(means)
    for indices in groups.values():
        index = _device_tensor(indices, device)
        group_means, group_m2 = tensor_stats([grads[i] for i in indices], acc)
        means.index_copy_(0, index, group_means)
        m2.index_copy_(0, index, group_m2)
    return _device_tensor([g.numel() for g in grads], device, acc), means, m2


def host_apply(device: torch.device) -> bool:
    """Whether the apply reads its factors on the host: on the CPU only, where that costs nothing."""
    return device.type == "cpu"


def apply_all_(
    grads: list[Tensor], groups: dict[torch.dtype, list[int]], stats: GANStats, shift: Tensor, scale: Tensor, mode: str
) -> None:
    """``(g_i - shift[i]) * scale[i]`` in place for every gradient, on finite steps only: on the
    CPU one fused pass per tensor, after reading the flag; elsewhere the device-side apply."""
    if not grads:
        return
    if host_apply(grads[0].device):
        if stats.nonfinite.item():
            return
        for indices in groups.values():
            index = _device_tensor(indices, shift.device)
            apply_host_([grads[i] for i in indices], shift[index], scale[index], mode)
        return
    keep = ~stats.nonfinite
    for indices in groups.values():
        index = _device_tensor(indices, shift.device)
        apply_device_([grads[i] for i in indices], shift[index], scale[index], keep, mode)


def gan_(grads: list[Tensor], groups: dict[torch.dtype, list[int]], state: GANState, mode: str) -> GANStats:
    """One GAN step over validated ``grads`` grouped by dtype (``groups``: dtype -> indices)."""
    counts, means, m2 = statistics(grads, groups, stats_dtype(grads), state.device)
    stats, shift, scale = finalize(counts, means, m2, state, mode)
    apply_all_(grads, groups, stats, shift, scale, mode)
    return stats
