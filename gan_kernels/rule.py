"""The autoscale rule: how GAN turns the global gradient std into one factor alpha; and the two
per-mode definitions every backend shares (ZNorm's epsilon, Gradient Centralization's row means).

The built-in rule, :func:`autoscale`, is this package's reading of the paper's description (smooth,
hyperparameter-free, alpha <= 1, an exponent fixed at the first usable step so that a tiny initial
std does not shrink the gradients excessively); ``docs/method.md`` gives the reasons. Every entry
point takes another rule as ``rule=``: a callable ``rule(sigma, exponent) -> (alpha, exponent)``
over 0-d device tensors, pure and free of host syncs. :func:`advance` is where every backend calls
it; the Triton kernels keep a twin of the built-in rule fused in their finalize.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .state import GANState

Rule = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]

# Mode "znorm" divides each centered tensor by (std + ZNORM_EPS).
ZNORM_EPS = 1e-12


def row_means(x: Tensor) -> Tensor:
    """Gradient Centralization's means (Yong et al. 2020): over all dimensions but the first, one
    per row (output channel), shaped to broadcast against ``x``. A row of one element (every
    element of a 0-d or 1-D tensor, each row of an (n, 1) one) is its own mean, so mode ``"gc"``
    turns it into 0."""
    if x.ndim < 2:
        return x
    return x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)


def autoscale(sigma: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(alpha, exponent)`` for a global std ``sigma`` and the current exponent state.

    Args:
        sigma: 0-d floating tensor, the global sample std of the centered gradients.
        exponent: 0-d floating tensor, NaN while not yet set.

    Returns:
        ``alpha``: 0-d tensor of ``sigma``'s dtype, ``min(1, sigma ** p)`` once ``p`` is set and
        ``sigma > 0``, else 1. ``exponent``: 0-d tensor of ``exponent``'s dtype; when it was NaN and
        ``sigma`` is finite and positive it becomes ``p = 1 / max(1, -ln sigma)``, else it is returned
        unchanged. Pure: nothing is modified, and nothing leaves the device (no host sync).
    """
    usable = torch.isfinite(sigma) & (sigma > 0)
    safe_sigma = torch.where(usable, sigma, torch.ones_like(sigma))
    first_exponent = 1.0 / torch.clamp(-torch.log(safe_sigma), min=1.0)
    exponent = torch.where(
        usable & torch.isnan(exponent), first_exponent.to(exponent.dtype), exponent
    )
    scaled = torch.clamp(safe_sigma.to(exponent.dtype) ** exponent, max=1.0).to(sigma.dtype)
    alpha = torch.where(usable & ~torch.isnan(exponent), scaled, torch.ones_like(sigma))
    return alpha, exponent


def check_rule(rule: Rule | None) -> Rule | None:
    """``rule`` itself when it is None or callable; a ``TypeError`` otherwise."""
    if rule is not None and not callable(rule):
        raise TypeError(
            f"rule must be None or a callable rule(sigma, exponent) -> (alpha, exponent), got {type(rule).__name__}"
        )
    return rule


def evaluate(rule: Rule | None, sigma: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor]:
    """``rule(sigma, exponent)`` (the built-in :func:`autoscale` for None), checked: two 0-d
    floating tensors on ``sigma``'s device, returned as ``sigma``'s and ``exponent``'s dtypes. A
    ``TypeError`` names what is wrong; nothing has been modified then."""
    if rule is None:
        return autoscale(sigma, exponent)
    result = rule(sigma, exponent)
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise TypeError(f"the rule must return a pair (alpha, exponent), got {type(result).__name__}")
    for name, value in zip(("alpha", "exponent"), result):
        if isinstance(value, Tensor):
            if value.ndim == 0 and value.is_floating_point() and value.device == sigma.device:
                continue
            got = f"shape {tuple(value.shape)}, {value.dtype} on {value.device}"
        else:
            got = type(value).__name__
        raise TypeError(f"the rule's {name} must be a 0-d floating tensor on {sigma.device}, got {got}")
    alpha, new_exponent = result
    return alpha.to(sigma.dtype), new_exponent.to(exponent.dtype)


def advance(rule: Rule | None, sigma: Tensor, nonfinite: Tensor, state: GANState) -> Tensor:
    """Evaluate the rule on ``sigma`` and ``state.exponent`` and commit a finite step to ``state``
    (the exponent the rule returned, one more step); a non-finite step leaves ``state`` as it was.
    Returns alpha. On the device, no host sync."""
    alpha, exponent = evaluate(rule, sigma, state.exponent)
    state.exponent.copy_(torch.where(nonfinite, state.exponent, exponent))
    state.step.add_((~nonfinite).to(state.step.dtype))
    return alpha
