"""AdaFom: Adam's first moment with the plain average of all past squared gradients as the
second moment (Chen, Liu, Sun and Hong, "On the Convergence of a Class of Adam-Type Algorithms
for Non-Convex Optimization", ICLR 2019, arXiv 1808.02941).

For a parameter ``p`` whose gradient ``g_t`` arrives at its ``t``-th step (``t`` counts only the
steps at which ``p`` had a gradient, from 1)::

    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t        (m_0 = 0, no bias correction)
    v_t = (1 - 1/t) * v_{t-1} + (1/t) * g_t**2       (v_0 = 0: v_t = mean(g_1**2, ..., g_t**2))
    p  <- p * (1 - lr * weight_decay)                (decoupled weight decay, as in AdamW)
    p  <- p - lr * m_t / (sqrt(v_t) + eps)

Where Adam forgets old squared gradients exponentially, AdaFom's ``v_t`` weighs all of them
equally, so the per-coordinate step size ``lr / (sqrt(v_t) + eps)`` changes ever more slowly
(``v_t - v_{t-1} = (g_t**2 - v_{t-1}) / t``); the paper proves this scheme convergent on
non-convex problems.

It lives in the package as a first-class optimizer, not as demonstration code: it runs alone, or
wrapped as ``GAN(AdaFom(...))``, so the comparison that ``examples/train.py`` makes for AdamW (the
optimizer alone against its GAN-wrapped form) can be made for AdaFom too. Its ``state_dict``
round-trips through torch's own machinery, and ``tests/test_adafom.py`` checks it against the
equations above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["AdaFom"]


def _lr_value(lr: float | Tensor) -> float:
    """``lr`` as a Python float; a tensor must hold exactly one element."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid lr: a tensor lr must hold one element, got shape {tuple(lr.shape)}")
        return lr.item()
    return float(lr)


class AdaFom(torch.optim.Optimizer):
    """AdaFom (arXiv 1808.02941): Adam's first moment ``m``, and as second moment ``v`` the plain
    average of the squared gradients of all past steps instead of Adam's exponential average.

    Per parameter, at its ``t``-th step with a gradient ``g`` (``-g`` with ``maximize``)::

        m <- beta1 * m + (1 - beta1) * g            (no bias correction)
        v <- (1 - 1/t) * v + (1/t) * g * g          (v is the mean of g**2 over its t steps)
        p <- p * (1 - lr * weight_decay)            (decoupled, as in AdamW)
        p <- p - lr * m / (sqrt(v) + eps)

    A parameter whose ``grad`` is None is skipped and its ``t`` does not advance. It is an ordinary
    ``torch.optim.Optimizer``: use it alone or wrap it as ``GAN(AdaFom(...))``; parameter groups,
    LR schedulers, ``zero_grad`` and ``state_dict``/``load_state_dict`` work as for torch's own
    optimizers.

    Args:
        params: the parameters, or parameter groups (dicts), as for any torch optimizer.
        lr: the learning rate (>= 0); a float or a one-element tensor.
        beta1: the decay of the first moment, in [0, 1).
        eps: added to ``sqrt(v)`` in the denominator (>= 0).
        weight_decay: the decoupled weight decay coefficient (>= 0).
        maximize: maximize the objective (step along ``+g``) instead of minimizing it.

    State per parameter: ``step`` (``t``, a float32 0-d CPU tensor, as torch's Adam keeps it),
    ``exp_avg`` (``m``) and ``avg_sq`` (``v``), both like the parameter (its dtype, device and
    memory format). Sparse gradients and complex parameters raise ``RuntimeError``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        beta1: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ) -> None:
        if not 0.0 <= _lr_value(lr):
            raise ValueError(f"Invalid lr: {lr} (must be >= 0)")
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"Invalid beta1: {beta1} (must be in [0, 1))")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid eps: {eps} (must be >= 0)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
        defaults = dict(lr=lr, beta1=beta1, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        """The parameter's state, created at its first step with a gradient."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (with grad enabled) if given, then take one AdaFom step on every
        parameter that has a gradient. Returns the closure's result (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # checked first: a refused step changes no parameter
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError("AdaFom does not support sparse gradients")
                if p.grad is not None and torch.is_complex(p):
                    raise RuntimeError("AdaFom does not support complex parameters")
        for group in self.param_groups:
            lr = _lr_value(group["lr"])
            beta1, eps, weight_decay = group["beta1"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["maximize"]:
                    grad = -grad  # a new tensor: p.grad keeps the gradient as computed
                state = self._state(p)
                state["step"] += 1
                t = state["step"].item()
                exp_avg, avg_sq = state["exp_avg"], state["avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                avg_sq.mul_(1 - 1 / t).addcmul_(grad, grad, value=1 / t)
                if weight_decay != 0:
                    p.mul_(1 - lr * weight_decay)
                p.addcdiv_(exp_avg, avg_sq.sqrt().add_(eps), value=-lr)
        return loss
