"""``GAN``: a drop-in optimizer wrapper that normalizes eligible gradients before each step."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor

from .functional import check_backend, gan_, step
from .plan import Plan
from .state import GANState, GANStats
from .validation import check_mode

_grad = attrgetter("grad")
_HOOK_REGISTRIES = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def eligible_gradient(grad: Tensor | None) -> bool:
    """The default rule read off a gradient (which has its parameter's shape): it exists, is dense
    and has more than one dimension (convolution and linear weights)."""
    return grad is not None and grad.ndim > 1 and not grad.is_sparse


def default_eligible(param: Tensor) -> bool:
    """The default eligibility: a dense gradient of a parameter with more than one dimension
    (convolution and linear weights; biases, norm parameters and sparse gradients are left alone)."""
    return eligible_gradient(param.grad)


class GAN(torch.optim.Optimizer):
    """Wrap ``optimizer`` so that each ``step`` first applies GAN to the eligible gradients.

    ``param_groups``, ``state`` and ``defaults`` *are* the wrapped optimizer's (not copies), so LR
    schedulers, ``torch.amp.GradScaler``, ``zero_grad`` and ``add_param_group`` behave as with the
    plain optimizer; ``state_dict()`` is the wrapped optimizer's with the :class:`GANState` added
    under the key ``"gan"``.

    Args:
        optimizer: the ``torch.optim.Optimizer`` that takes the step.
        mode: ``"gan"`` (default), ``"center"``, ``"gc"`` or ``"znorm"``; see :func:`gan_kernels.gan_`.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        eligible: ``eligible(param) -> bool`` chooses the parameters whose gradients are
            transformed; by default those whose gradient exists, is dense, and whose ``ndim > 1``.
            Parameters without a gradient are always skipped.

    Attributes:
        gan_state: the :class:`GANState` carried between steps.
        last_stats: the :class:`GANStats` of the last step, ``None`` before the first.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        mode: str = "gan",
        backend: str = "auto",
        eligible: Callable[[Tensor], bool] | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"GAN wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if eligible is not None and not callable(eligible):
            raise TypeError(f"eligible must be a callable param -> bool, got {type(eligible).__name__}")
        self.optimizer = optimizer
        self.mode = check_mode(mode)
        self.backend = check_backend(backend)
        self.eligible = eligible or default_eligible
        params = [p for group in optimizer.param_groups for p in group["params"]]
        # On the parameters' device from the start, so that a compiled first step finds it there.
        self.gan_state = GANState(device=params[0].device if params else None)
        # A dict entry rather than an attribute: torch.compile replays the item assignment made in
        # a compiled step, where it drops an attribute assignment on the optimizer object.
        self._last: dict[str, GANStats] = {}
        self._plan: Plan | None = None
        # Optimizer.__init__ would build param groups of its own; the wrapper owns none, so it sets
        # up only the hook registries and the step profiling wrapper that Optimizer's API relies on.
        for name in _HOOK_REGISTRIES:
            setattr(self, name, OrderedDict())
        self._patch_step_function()

    @property
    def last_stats(self) -> GANStats | None:
        """The :class:`GANStats` of the last step, ``None`` before the first."""
        return self._last.get("stats")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def eligible_grads(self) -> list[Tensor]:
        """The gradients that the next ``step`` transforms, in parameter-group order."""
        params = [p for group in self.param_groups for p in group["params"]]
        if self.eligible is default_eligible:
            # The default rule needs only the gradients: one pass over them, at every step.
            return list(filter(eligible_gradient, map(_grad, params)))
        return [p.grad for p in params if p.grad is not None and self.eligible(p)]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (with grad enabled) if given, apply GAN to the eligible gradients in
        place, then step the wrapped optimizer. Returns the closure's result (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = self.eligible_grads()
        if torch.compiler.is_compiling():
            self._last["stats"] = gan_(grads, self.gan_state, mode=self.mode, backend=self.backend)
        else:
            # The plan of the last step is tried first, and held: its tables and scratch live as
            # long as this optimizer, whatever else goes through the plan cache.
            self._last["stats"], self._plan = step(grads, self.gan_state, self.mode, self.backend, self._plan)
        self.optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, with the GANState under ``"gan"``."""
        state_dict = self.optimizer.state_dict()
        state_dict["gan"] = self.gan_state.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict`; a plain optimizer's state dict (no ``"gan"`` key)
        loads too and leaves the GANState as it is."""
        state_dict = dict(state_dict)
        gan_state = state_dict.pop("gan", None)
        self.optimizer.load_state_dict(state_dict)
        if gan_state is not None:
            self.gan_state.load_state_dict(gan_state)

    def __repr__(self) -> str:
        eligible = "default" if self.eligible is default_eligible else repr(self.eligible)
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"GAN(mode={self.mode!r}, backend={self.backend!r}, eligible={eligible},\n{inner}\n)"
