"""The multi-tensor PyTorch fallback: GAN on any device, with batched ops and no device sync.

A :class:`FallbackPlan` is built once per gradient layout (sizes, strides, dtypes, device) and
owns float32 (or float64) scratch; a step then costs a number of operations that depends on the
number of *distinct sizes* among the small gradients, not on the number of gradients:

* **Small tensors** (up to ``STACK_MAX`` elements) are gathered by one ``torch._foreach_copy_``
  into the plan's scratch, where the tensors of each size form the rows of one matrix (*size
  class*). Per class: the row means, the rows centered in place, the rows' squared norms (M2) —
  two-pass numerics in cache. The apply scales the centered rows in place and one
  ``torch._foreach_copy_`` writes every tensor back, rounded once into its own dtype.
* **Large tensors**, on the CPU, are cut into tiles of ``TILE`` elements, small enough to stay in
  cache between a tile's mean and its squared deviations; tiles are combined with Chan's formula.
  On an accelerator each takes a mean and a variance reduction. The apply takes one fused
  pass per tensor (float16/bfloat16 through float32, rounded once).

Statistics are computed in *slot order* (the small tensors class by class, then the large ones);
the finalize works in that order too, and only the reported means and stds are permuted back to
the order of the list. On the CPU, where reading a scalar costs nothing, the apply reads the
non-finite flag and skips a non-finite step. On an accelerator every factor and the flag stay on
the device: each tensor is written through ``torch.where(keep, result, g)`` in its own dtype, so a
non-finite step leaves every bit as it was (NaN payloads included) without a host-side branch.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from .rule import ZNORM_EPS, Rule, advance, row_means
from .state import GANState, GANStats
from .validation import arithmetic_dtype, stats_dtype

STACK_MAX = 1 << 16
# 2**18 float32 elements (1 MiB) stay in a core's L2 between a tile's two passes.
TILE = 1 << 18


def device_tensor(values: list, device: torch.device, dtype: torch.dtype = torch.int64) -> Tensor:
    """``torch.tensor(values)`` on ``device``; to a GPU through pinned memory and a non-blocking
    copy, since a copy from pageable memory would synchronise the host with the device."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _rows(t: Tensor) -> int:
    """The number of rows (first dimension) of ``t``; each element is a row of a 0-d or 1-D tensor."""
    return t.shape[0] if t.ndim > 1 else t.numel()


def on_host(device: torch.device) -> bool:
    """Whether ``device`` is the host's: statistics of large tensors in cache-sized tiles, and an
    apply that reads its factors on the host (free there). Elsewhere: two reductions per large
    tensor, and every factor left on the device."""
    return device.type == "cpu"


def finalize(
    counts: Tensor, means: Tensor, m2: Tensor, state: GANState, mode: str, rule: Rule | None = None
) -> tuple[GANStats, Tensor]:
    """Turn per-tensor statistics into the step's stats and update ``state``, on the device.

    Args:
        counts, means, m2: shape (k,), one floating dtype: per-tensor sizes, means and sums of
            squared deviations about the means, in any fixed order.
        state: ``exponent`` and ``step`` are updated in place, unless the step is non-finite.
        mode: ``"gan"``, ``"center"``, ``"gc"`` or ``"znorm"``.
        rule: the alpha rule, None for the built-in one (:mod:`gan_kernels.rule`).

    Returns:
        ``(stats, scale)``: ``stats`` with means and stds in the order given; the apply computes
        ``(g_i - means[i]) * scale[i]``, scale of shape (k,), on finite steps only.
    """
    total = counts.sum()
    sigma = torch.where(total > 1, torch.sqrt(m2.sum() / (total - 1).clamp(min=1)), 0.0)
    stds = torch.where(counts > 1, torch.sqrt(m2 / (counts - 1).clamp(min=1)), 0.0)
    nonfinite = ~(torch.isfinite(sigma) & torch.isfinite(means).all())
    alpha = advance(rule, sigma, nonfinite, state)

    if mode == "gan":
        scale = alpha.expand(len(means))
    elif mode == "znorm":
        scale = 1.0 / (stds + ZNORM_EPS)
    else:
        scale = torch.ones_like(means)
    if mode != "gan":
        alpha = torch.ones_like(alpha)
    return GANStats(alpha=alpha, global_std=sigma, means=means, stds=stds, nonfinite=nonfinite), scale


def empty_step(state: GANState, rule: Rule | None = None) -> GANStats:
    """The step of an empty list: sigma 0, alpha as the rule gives it (1 for the built-in one), the
    state's step counted, on its device."""
    nothing = torch.zeros(0, dtype=torch.float32, device=state.device)
    return finalize(nothing, nothing, nothing, state, "gan", rule)[0]


class FallbackPlan:
    """What the fallback needs to know about one list of gradients, worked out once.

    Depends only on the gradients' sizes, strides and dtypes and on the device; it holds no
    reference to the gradients themselves (a cached plan must not keep them alive), only its own
    scratch: ``work`` holds every small gradient, in the statistics dtype, between the statistics
    and the apply of one step.
    """

    def __init__(self, grads: list[Tensor], device: torch.device) -> None:
        self.device = device
        self.acc = stats_dtype(grads)
        # Size classes: equal numbers of elements and of rows (the first dimension, for mode "gc").
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, g in enumerate(grads):
            if 0 < g.numel() <= STACK_MAX:
                by_size[g.numel(), _rows(g)].append(i)
        self.small = [i for indices in by_size.values() for i in indices]
        self.large = [i for i, g in enumerate(grads) if g.numel() > STACK_MAX]
        empty = [i for i, g in enumerate(grads) if g.numel() == 0]
        # Slot order: the small tensors class by class, then the large ones, then the empty ones.
        order = self.small + self.large + empty
        self.order = device_tensor(order, device)
        self.position = device_tensor(sorted(range(len(order)), key=order.__getitem__), device)
        self.counts = device_tensor([grads[i].numel() for i in order], device, self.acc)

        self.work = torch.empty(sum(grads[i].numel() for i in self.small), dtype=self.acc, device=device)
        self.rows = []
        self.blocks = []  # (tensors x rows x columns view of work, first slot, last slot + 1)
        offset = slot = 0
        for (size, rows), indices in by_size.items():
            block = self.work[offset : offset + size * len(indices)].view(len(indices), rows, size // rows)
            self.blocks.append((block, slot, slot + len(indices)))
            self.rows += [self.work[offset + j * size : offset + (j + 1) * size].view(grads[i].shape) for j, i in enumerate(indices)]
            offset += size * len(indices)
            slot += len(indices)
        largest = max((grads[i].numel() for i in self.large), default=0)
        self.scratch = torch.empty(min(TILE, largest), dtype=self.acc, device=device)
        # Per-tensor partials in slot order, rewritten by every step (the empty tensors' stay 0).
        self.slot_means = torch.zeros(len(order), dtype=self.acc, device=device)
        self.slot_m2 = torch.zeros_like(self.slot_means)
        self.local_means: Tensor | None = None

    def partials(self, grads: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-tensor ``(counts, means, m2)`` in slot order, in the statistics dtype: the plan's own
        buffers, overwritten by the next call. Reads the gradients only; leaves every small
        gradient, centered, in ``work`` for :meth:`apply_`."""
        means, m2 = self.slot_means, self.slot_m2
        if self.small:
            torch._foreach_copy_(self.rows, [grads[i] for i in self.small])
        for block, first, last in self.blocks:
            torch.sum(block, (1, 2), out=means[first:last])
        means[: len(self.small)].div_(self.counts[: len(self.small)])
        for block, first, last in self.blocks:
            block.sub_(means[first:last, None, None])
            torch.linalg.vector_norm(block, dim=(1, 2), out=m2[first:last])
        m2[: len(self.small)].square_()
        for slot, i in enumerate(self.large, start=len(self.small)):
            if on_host(self.device):
                means[slot], m2[slot] = self._tiled_partials(grads[i].reshape(-1))
            else:
                # On an accelerator two reductions per tensor beat tiles, each of which would cost
                # several small launches: the mean by a cascade sum (accurate), the variance by a
                # Welford reduction (stable; about its own mean, which differs from ours by far
                # less than the spread, so M2 about ours is the same to first order).
                x = grads[i].to(self.acc)
                means[slot] = x.mean()
                m2[slot] = x.var(correction=0) * x.numel()
        self.local_means = means
        return self.counts, means, m2

    def _tiled_partials(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and M2 of one large flat tensor: each tile two-pass in cache, tiles by Chan."""
        tile_means, tile_m2, tile_counts = [], [], []
        for start in range(0, flat.numel(), TILE):
            tile = flat[start : start + TILE]
            deviation = self.scratch[: tile.numel()]
            if tile.dtype == self.acc:
                mean = tile.mean()
                torch.sub(tile, mean, out=deviation)
            else:
                mean = deviation.copy_(tile).mean()
                deviation.sub_(mean)
            tile_means.append(mean)
            tile_m2.append(torch.dot(deviation, deviation))
            tile_counts.append(tile.numel())
        means = torch.stack(tile_means)
        counts = torch.tensor(tile_counts, dtype=self.acc).to(self.device, non_blocking=True) if len(tile_counts) > 1 else None
        if counts is None:
            return means[0], tile_m2[0]
        mean = (counts * means).sum() / flat.numel()
        return mean, torch.stack(tile_m2).sum() + (counts * (means - mean) ** 2).sum()

    def apply_(self, grads: list[Tensor], scale: Tensor, nonfinite: Tensor, mode: str, center: Tensor | None = None) -> None:
        """``g_i <- (g_i - center_i) * scale_i`` in place unless ``nonfinite`` (mode ``"gc"``:
        ``g_i`` minus its row means), rounded once into each gradient's dtype; runs after
        :meth:`partials` on the same gradients.

        ``scale`` and ``center`` are in slot order; ``center`` defaults to the means that
        :meth:`partials` computed (then the centered tensors in ``work`` are used as they are), and
        is given when the means come from elsewhere (sharded gradients: the whole tensors' means).
        """
        host = on_host(self.device)
        if host and nonfinite.item():
            return
        if center is None:
            center = self.local_means
        else:
            correction = self.local_means - center
            for block, first, last in self.blocks:
                block.add_(correction[first:last, None, None])
        if mode == "gan":
            self.work.mul_(scale[0])
        elif mode == "znorm":
            for block, first, last in self.blocks:
                block.mul_(scale[first:last, None, None])
        elif mode == "gc":
            # The tensors are centered already; removing each row's remaining mean gives g minus
            # its row means.
            for block, _, _ in self.blocks:
                block.sub_(block.mean(2, keepdim=True))
        small = [grads[i] for i in self.small]
        keep = ~nonfinite
        if host:
            if small:
                torch._foreach_copy_(small, self.rows)
        else:
            for g, row in zip(small, self.rows):
                torch.where(keep, row.to(g.dtype), g, out=g)
        for slot, i in enumerate(self.large, start=len(self.small)):
            self._apply_large_(grads[i], center[slot], scale[slot], host, keep, mode)

    def _apply_large_(self, g: Tensor, shift: Tensor, scale: Tensor, host: bool, keep: Tensor, mode: str) -> None:
        acc = arithmetic_dtype(g.dtype)
        if mode == "gc":
            x = g.to(acc)
            result = (x - row_means(x)).to(g.dtype)
            if host:
                g.copy_(result)
            else:
                torch.where(keep, result, g, out=g)
            return
        if not host:
            result = ((g.to(acc) - shift) * scale).to(g.dtype)
            torch.where(keep, result, g, out=g)
            return
        shift, scale = shift.item(), scale.item()
        offset = torch.tensor(-shift * scale, dtype=acc)
        if g.dtype == acc:
            torch.add(offset, g, alpha=scale, out=g)
        elif not g.is_contiguous():
            g.copy_(torch.add(offset, g.to(acc), alpha=scale))
        else:
            flat = g.view(-1)
            for start in range(0, flat.numel(), TILE):
                tile = flat[start : start + TILE]
                work = self.scratch[: tile.numel()]
                torch.add(offset, work.copy_(tile), alpha=scale, out=work)
                tile.copy_(work)

    def step(self, grads: list[Tensor], state: GANState, mode: str, rule: Rule | None = None) -> GANStats:
        """One GAN step over ``grads`` (the list this plan was built for), in place."""
        with torch.no_grad():
            counts, means, m2 = self.partials(grads)
            stats, scale = finalize(counts, means, m2, state, mode, rule)
            self.apply_(grads, scale, stats.nonfinite, mode)
        return self.in_list_order(stats)

    def in_list_order(self, stats: GANStats) -> GANStats:
        """``stats`` with means and stds permuted from slot order to the order of the list."""
        return stats._replace(means=stats.means[self.position], stds=stats.stds[self.position])
