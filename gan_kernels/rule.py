"""The autoscale rule: how GAN turns the global gradient std into one factor alpha; and the two
per-mode definitions every backend shares (ZNorm's epsilon, Gradient Centralization's row means).

This is the package's reading of the paper's description (smooth, hyperparameter-free, alpha <= 1,
an exponent fixed at the first usable step so that a tiny initial std does not shrink the gradients
excessively). It is kept as one pure function of tensors so that it can be swapped; every backend
and the reference call it.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
