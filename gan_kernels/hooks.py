"""``attach``: GAN on an existing optimizer, through its step pre-hook.

For optimizers that a framework creates (and wraps): the hook runs inside ``optimizer.step()``, so
after gradient accumulation, gradient clipping and the unscaling by ``torch.amp.GradScaler``, and
never for a step the scaler skips. A step given a closure (which computes the gradients inside the
step) runs GAN right after the closure, before the update. The optimizer's own state dict carries the :class:`GANState`
(state-dict hooks), so a framework's checkpoints resume GAN exactly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from . import optim
from .functional import check_backend, step
from .optim import closure_then_gan, default_eligible, eligible_gradients
from .rule import Rule, check_rule
from .state import GANState, GANStats
from .validation import check_mode

_attached: weakref.WeakKeyDictionary[torch.optim.Optimizer, Attachment] = weakref.WeakKeyDictionary()


class Attachment:
    """The handle :func:`attach` returns.

    Attributes:
        optimizer: the optimizer GAN is attached to.
        gan_state: the :class:`GANState` carried between steps (also in the optimizer's state dict
            under ``"gan"``).
        last_stats: the :class:`GANStats` of the last step, ``None`` before the first.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, mode: str, backend: str, eligible: Callable[[Tensor], bool], rule: Rule | None
    ) -> None:
        self.optimizer = optimizer
        self.mode, self.backend, self.eligible, self.rule = mode, backend, eligible, rule
        first = next((p for group in optimizer.param_groups for p in group["params"]), None)
        self.gan_state = GANState(device=first.device if first is not None else None)
        self.last_stats: GANStats | None = None
        self._plan = None
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_state_dict_post_hook(self._save),
            optimizer.register_load_state_dict_pre_hook(self._load),
        ]

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        # The hook sees step's arguments with the optimizer first: (self, closure=None).
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._apply(optimizer)
            return None
        # A step given a closure (Lightning's, which runs backward and clipping) computes the
        # gradients inside the step, after this hook: GAN then runs right after the closure.
        with_gan = closure_then_gan(closure, lambda: self._apply(optimizer))
        if "closure" in kwargs:
            return args, {**kwargs, "closure": with_gan}
        return (args[0], with_gan, *args[2:]), kwargs

    @torch.no_grad()
    def _apply(self, optimizer: torch.optim.Optimizer) -> None:
        grads = eligible_gradients(optimizer.param_groups, self.eligible)
        # An optimizer that unscales by itself (fused AdamW under GradScaler) still holds scaled
        # gradients here: GAN must see the true ones (alpha depends on their scale). The scale is a
        # power of two, so dividing and multiplying back are exact.
        scale = getattr(optimizer, "grad_scale", None)
        if scale is not None and grads:
            torch._foreach_div_(grads, scale)
        self.last_stats, self._plan = step(grads, self.gan_state, self.mode, self.backend, self._plan, self.rule)
        if scale is not None and grads:
            torch._foreach_mul_(grads, scale)

    def _save(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict["gan"] = self.gan_state.state_dict()
        return state_dict

    def _load(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict = dict(state_dict)
        saved = state_dict.pop("gan", None)
        if saved is not None:
            self.gan_state.load_state_dict(saved)
        return state_dict

    def remove(self) -> None:
        """Detach: the optimizer is left exactly as it was before :func:`attach`."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if _attached.get(self.optimizer) is self:
            del _attached[self.optimizer]

    def __repr__(self) -> str:
        return f"Attachment(mode={self.mode!r}, backend={self.backend!r}, optimizer={type(self.optimizer).__name__})"


def attach(
    optimizer: torch.optim.Optimizer,
    *,
    mode: str = "gan",
    backend: str = "auto",
    eligible: Callable[[Tensor], bool] | None = None,
    rule: Rule | None = None,
) -> Attachment:
    """Apply GAN to ``optimizer``'s eligible gradients at the start of each of its steps.

    The same transform as :class:`~gan_kernels.GAN` (same eligibility rule, modes, backends and
    alpha ``rule``), for an optimizer you do not create yourself. ``optimizer.state_dict()`` then carries the
    :class:`GANState` under ``"gan"`` and ``optimizer.load_state_dict`` restores it.

    Returns:
        An :class:`Attachment` with ``gan_state``, ``last_stats`` and ``remove()``.

    Raises:
        RuntimeError: if GAN runs on ``optimizer`` already (attached, wrapped by a ``GAN``, a
            ``GAN`` or ``GANAdamW`` itself, or an optimizer inside it): GAN is applied once.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"attach takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if eligible is not None and not callable(eligible):
        raise TypeError(f"eligible must be a callable param -> bool, got {type(eligible).__name__}")
    refuse_second_gan(optimizer, "attach() cannot add a second")
    attachment = _attached[optimizer] = Attachment(
        optimizer, check_mode(mode), check_backend(backend), eligible or default_eligible, check_rule(rule)
    )
    return attachment


def layers(optimizer: Any) -> Iterator[Any]:
    """``optimizer``, then each optimizer wrapped inside it, outermost first (accelerate's
    ``AcceleratedOptimizer`` keeps it in ``.optimizer``, Lightning's ``LightningOptimizer`` in
    ``._optimizer``, a :class:`~gan_kernels.GAN` in ``.optimizer``)."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        yield optimizer
        optimizer = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)


def innermost(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside the wrappers frameworks put around it (see :func:`layers`):
    where a step pre-hook runs after the framework has unscaled and clipped the gradients."""
    *_, optimizer = layers(optimizer)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"no torch.optim.Optimizer inside {type(optimizer).__name__}")
    return optimizer


def running_gan(optimizer: Any, *, wrapped: bool = True) -> tuple[Any, str] | None:
    """The GAN that already runs when ``optimizer`` steps, with where it is, in words; None when
    there is none. It is found at any of its :func:`layers`: a :class:`~gan_kernels.GANAdamW`,
    a :class:`~gan_kernels.GAN`, an optimizer GAN is attached to (the :class:`Attachment`) or,
    with ``wrapped``, one a live ``GAN`` wraps (that wrapper, whose step steps it). Each has
    ``gan_state`` and ``last_stats``."""
    for layer in layers(optimizer):
        name = type(layer).__name__
        if isinstance(layer, optim.GANAdamW):
            return layer, "it is a GANAdamW, which applies GAN itself"
        if isinstance(layer, optim.GAN):
            return layer, f"it is a GAN(...) wrapper (of a {type(layer.optimizer).__name__}), which applies GAN itself"
        if not isinstance(layer, torch.optim.Optimizer):
            continue
        if layer in _attached:
            return _attached[layer], f"GAN is attached to this {name} already; remove() that attachment first"
        wrapper = next(iter(optim.wrappers.get(layer, ())), None) if wrapped else None
        if wrapper is not None:
            return wrapper, f"this {name} is already wrapped by GAN(...), whose step applies GAN"
    return None


def refuse_second_gan(optimizer: Any, action: str, *, wrapped: bool = True) -> None:
    """Raise ``RuntimeError`` saying where GAN already runs on ``optimizer`` (as
    :func:`running_gan` finds it), if it does: GAN is applied once per step, never twice."""
    found = running_gan(optimizer, wrapped=wrapped)
    if found is not None:
        raise RuntimeError(f"GAN already runs on this optimizer, so {action} GAN: {found[1]}")


def use_or_attach(
    optimizer: Any, *, mode: str, backend: str, eligible: Callable[[Tensor], bool] | None, rule: Rule | None
) -> tuple[Any, Attachment | None]:
    """GAN on a framework's ``optimizer`` exactly once, for the callbacks: the GAN already running
    on it (see :func:`running_gan`), or else a new :func:`attach` to the torch optimizer inside
    it. Returns the GAN in use (it has ``gan_state`` and ``last_stats``) and the attachment made,
    or None when none was made.

    Raises:
        RuntimeError: if a GAN already runs with options other than these (``eligible=None``
            meaning the default rule): using it would silently ignore them.
    """
    found = running_gan(optimizer)
    if found is None:
        attachment = attach(innermost(optimizer), mode=mode, backend=backend, eligible=eligible, rule=rule)
        return attachment, attachment
    gan, where = found
    wanted = {"mode": mode, "backend": backend, "eligible": eligible or default_eligible, "rule": rule}
    differing = [f"{name}={value!r} (it has {getattr(gan, name)!r})" for name, value in wanted.items()
                 if getattr(gan, name) != value]
    if differing:
        raise RuntimeError(f"GAN already runs on this optimizer ({where}) with other options than the callback's: "
                           f"{', '.join(differing)}; give the callback the same options, or leave GAN to one of them")
    return gan, None
