"""The reference implementation of GAN: a plain loop over tensors.

Readable first: it is the oracle that every fast path is tested against. It evaluates the table of
one step (``docs/method.md``) literally, one tensor at a time, and may compute everything in float64
on request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .rule import ZNORM_EPS, Rule, check_rule, evaluate, row_means
from .state import GANState, GANStats
from .validation import check_grads, check_mode, check_state, stats_dtype


@torch.no_grad()
def gan_(
    grads: Sequence[Tensor],
    state: GANState | None = None,
    *,
    mode: str = "gan",
    compute_dtype: torch.dtype | None = None,
    rule: Rule | None = None,
) -> GANStats:
    """Transform ``grads`` in place by GAN and return the step's :class:`GANStats`.

    Args:
        grads: k floating-point tensors of any shapes, dtypes and strides, on one device. Each is
            overwritten with ``alpha * (g - mean(g))`` (mode ``gan``), ``g - mean(g)``
            (``center``), ``g`` minus the mean of each row (``gc``: over all dimensions but the first)
            or ``(g - mean(g)) / (std(g) + 1e-12)`` (``znorm``), rounded once into its own dtype.
            The statistics are whole-tensor ones in every mode.
            Nothing is written when any element is NaN/Inf.
        state: the :class:`GANState` to read and update (``exponent`` set once, ``step`` counted);
            ``None`` uses a fresh state.
        mode: ``"gan"``, ``"center"``, ``"gc"`` or ``"znorm"``.
        compute_dtype: the dtype of every statistic and of the arithmetic on elements; ``None`` means
            float32, or float64 when any tensor is float64. ``torch.float64`` gives the exact
            evaluation that the tolerances of ``docs/guarantees.md`` are measured against.
        rule: the alpha rule ``rule(sigma, exponent) -> (alpha, exponent)``; None for the built-in
            :func:`gan_kernels.rule.autoscale`.

    Returns:
        :class:`GANStats` on the gradients' device.
    """
    grads = check_grads(grads)
    mode = check_mode(mode)
    check_rule(rule)
    state = check_state(state, grads[0].device if grads else None)
    device = grads[0].device if grads else state.device
    state.to_(device)
    work_dtype = compute_dtype or stats_dtype(grads)

    means, stds, m2s, count = [], [], [], 0
    for g in grads:
        x = g.to(work_dtype)
        n = x.numel()
        mean = x.sum() / n if n > 0 else x.new_zeros(())
        m2 = ((x - mean) ** 2).sum()
        std = torch.sqrt(m2 / (n - 1)) if n > 1 else x.new_zeros(())
        means.append(mean.to(work_dtype))
        stds.append(std.to(work_dtype))
        m2s.append(m2.to(work_dtype))
        count += n

    total_m2 = torch.stack(m2s).sum() if m2s else torch.zeros((), dtype=work_dtype, device=device)
    sigma = torch.sqrt(total_m2 / (count - 1)) if count > 1 else torch.zeros_like(total_m2)
    nonfinite = not math.isfinite(sigma.item()) or not all(math.isfinite(m.item()) for m in means)

    alpha, exponent = evaluate(rule, sigma, state.exponent)
    if not nonfinite:
        state.exponent.copy_(exponent)
        state.step.add_(1)
        for g, mean, std in zip(grads, means, stds):
            x = g.to(work_dtype)
            if mode == "gan":
                y = (x - mean) * alpha
            elif mode == "center":
                y = x - mean
            elif mode == "gc":
                y = x - row_means(x)
            else:
                y = (x - mean) / (std + ZNORM_EPS)
            g.copy_(y)
    if mode != "gan":
        alpha = torch.ones_like(alpha)

    empty = torch.zeros(0, dtype=work_dtype, device=device)
    return GANStats(
        alpha=alpha,
        global_std=sigma,
        means=torch.stack(means) if means else empty,
        stds=torch.stack(stds) if stds else empty,
        nonfinite=torch.tensor(nonfinite, device=device),
    )
