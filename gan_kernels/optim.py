"""The optimizers: ``GAN``, a drop-in wrapper that normalizes the eligible gradients before each
step of any optimizer, and ``GANAdamW``, AdamW with GAN fused into its update."""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from itertools import chain
from functools import partial
from operator import attrgetter, is_, is_not, itemgetter
from typing import Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from . import plan as plans
from .adafom import AdaFom
from .functional import check_backend, gan_, step
from .plan import Plan
from .rule import Rule, check_rule
from .state import GANState, GANStats
from .validation import check_mode, is_dtensor

_grad = attrgetter("grad")
_params_of = itemgetter("params")
_amsgrad_of = itemgetter("amsgrad")
_data_ptr = Tensor.data_ptr
_stride = Tensor.stride
_is_contiguous = Tensor.is_contiguous
_not_none = partial(is_not, None)
_HOOK_REGISTRIES = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


# Each optimizer that a live GAN wraps, with those wrappers, so that attach() does not add a second
# GAN to it. Weak both ways: a wrapper its user drops frees the optimizer.
wrappers: weakref.WeakKeyDictionary[torch.optim.Optimizer, weakref.WeakSet] = weakref.WeakKeyDictionary()


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
        rule: the alpha rule ``rule(sigma, exponent) -> (alpha, exponent)``; None for the built-in
            one (see :func:`gan_kernels.gan_`).

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
        rule: Rule | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"GAN wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if eligible is not None and not callable(eligible):
            raise TypeError(f"eligible must be a callable param -> bool, got {type(eligible).__name__}")
        # Imported here: hooks builds on this module.
        from .hooks import refuse_second_gan

        # A second wrapper of the same optimizer is not refused: stepping either applies GAN once.
        refuse_second_gan(optimizer, "GAN(...) cannot wrap it", wrapped=False)
        self.optimizer = optimizer
        self.mode = check_mode(mode)
        self.backend = check_backend(backend)
        self.eligible = eligible or default_eligible
        self.rule = check_rule(rule)
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
        wrappers.setdefault(optimizer, weakref.WeakSet()).add(self)

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
        return eligible_gradients(self.param_groups, self.eligible)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply GAN to the eligible gradients in place, then step the wrapped optimizer; returns
        what its step returns (the closure's loss, or None).

        Without a closure GAN runs first. With one, the wrapped optimizer gets a closure that
        evaluates ``closure`` (with grad enabled) and then applies GAN, so every gradient it
        evaluates is transformed: once for an optimizer that evaluates the closure once (every
        first-order torch optimizer), once per evaluation for one such as LBFGS, each advancing
        ``gan_state.step`` and replacing ``last_stats``."""
        if closure is None:
            self._apply()
            return self.optimizer.step()
        return self.optimizer.step(closure_then_gan(closure, self._apply))

    def _apply(self) -> None:
        """GAN on the eligible gradients, in place."""
        grads = self.eligible_grads()
        if torch.compiler.is_compiling():
            self._last["stats"] = gan_(grads, self.gan_state, mode=self.mode, backend=self.backend, rule=self.rule)
        else:
            # The plan of the last step is tried first, and held: its tables and scratch live as
            # long as this optimizer, whatever else goes through the plan cache.
            self._last["stats"], self._plan = step(grads, self.gan_state, self.mode, self.backend, self._plan, self.rule)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, with the GANState under ``"gan"``. State-dict hooks
        registered on this optimizer run as on any other (the post hooks see ``"gan"``)."""
        return hooked_state_dict(self, lambda: {**self.optimizer.state_dict(), "gan": self.gan_state.state_dict()})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict`; a plain optimizer's state dict (no ``"gan"`` key)
        loads too and leaves the GANState as it is. Load hooks registered on this optimizer run as
        on any other (the pre hooks see ``"gan"``)."""

        def load(state_dict: dict[str, Any]) -> None:
            state_dict = dict(state_dict)
            gan_state = state_dict.pop("gan", None)
            self.optimizer.load_state_dict(state_dict)
            if gan_state is not None:
                self.gan_state.load_state_dict(gan_state)

        hooked_load_state_dict(self, state_dict, load)

    def __repr__(self) -> str:
        eligible = "default" if self.eligible is default_eligible else repr(self.eligible)
        rule = "" if self.rule is None else f", rule={self.rule!r}"
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return f"GAN(mode={self.mode!r}, backend={self.backend!r}, eligible={eligible}{rule},\n{inner}\n)"


class GANAdamW(torch.optim.AdamW):
    """AdamW with GAN fused into its update: the step of ``GAN(torch.optim.AdamW(...))`` on every
    finite step, but each gradient is read twice (statistics, then the update that transforms it on
    the fly) and never written: after ``step``, ``p.grad`` still holds the raw gradient.

    Arguments are every argument of torch's AdamW, with torch's meaning (``lr`` may be a tensor,
    for CUDA graphs), plus ``mode``, ``eligible``, ``backend`` and ``rule`` as for :class:`GAN`.
    Like torch, the flags live in each parameter group (``defaults`` and ``state_dict``):

    * ``fused``: ``True`` runs the fused kernels, or raises saying why they cannot:
      ``ValueError`` at construction where the parameters alone rule them out (mode, backend,
      dtype, device), ``RuntimeError`` at the step, before anything changes, where the gradients
      or state do (strides, alignment); ``False`` never runs them; ``None`` (default) runs them
      where they can run.
    * ``foreach``: ``True`` / ``False`` take torch's multi-tensor / for-loop AdamW after GAN on
      copies of the gradients, never the fused kernels (as in torch, setting ``foreach`` alone
      means not fused); ``None`` (default) leaves the choice to ``fused``.
    * ``capturable``: keeps ``step`` on the parameter's device (so does a fused step, as in torch;
      a for-loop or foreach step keeps it on the CPU, as torch does). A fused step never
      synchronises and so is graph-safe with or without the flag; ``capturable=True`` with a
      foreach or for-loop step is refused, because those read the non-finite flag on the host.
    * ``differentiable=True`` is refused: GAN is autograd-free.

    Parameter groups, LR schedulers, ``zero_grad`` and ``torch.amp.GradScaler`` (unscaling
    before the step) work as with AdamW. The state is torch's AdamW's (``step`` as a float32
    tensor, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` with amsgrad; in the parameter's
    dtype) and ``state_dict()`` adds the :class:`GANState` under ``"gan"``, so checkpoints move
    between ``GANAdamW`` and ``GAN(torch.optim.AdamW(...))`` both ways.

    On CUDA (and CPU tensors under ``TRITON_INTERPRET=1`` with ``backend="triton"``) a step is the
    statistics and finalize launches then one update launch per parameter dtype, with no host
    sync. Elsewhere — mode ``"gc"``, float64 parameters, strided parameters or gradients, no
    eligible parameter — it is the PyTorch fallback on copies of the eligible gradients followed by
    torch's own AdamW (fused where torch offers it). A non-finite step changes nothing at all:
    parameters, optimizer state and ``gan_state`` stay as they were and ``last_stats.nonfinite`` is
    True (the one deliberate difference from the composition, where AdamW would step anyway).

    Over FSDP2 (DTensor parameters sharded along one dimension of a 1-D mesh) a step is that of
    the unsharded model on every rank: the statistics of the whole gradients, with one collective,
    then torch's AdamW on each rank's local shards; the state stays DTensors, as torch keeps it.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        mode: str = "gan",
        eligible: Callable[[Tensor], bool] | None = None,
        backend: str = "auto",
        rule: Rule | None = None,
    ) -> None:
        if eligible is not None and not callable(eligible):
            raise TypeError(f"eligible must be a callable param -> bool, got {type(eligible).__name__}")
        self.mode = check_mode(mode)
        self.backend = check_backend(backend)
        self.eligible = eligible or default_eligible
        self.rule = check_rule(rule)
        if differentiable:
            raise ValueError("GANAdamW does not support differentiable=True: GAN is autograd-free (its statistics and "
                             "update run under no_grad), so no gradient could flow through the step")
        if fused:
            if self.backend == "torch":
                raise ValueError("fused=True contradicts backend='torch': the fused kernels are Triton kernels")
            if self.mode == "gc":
                raise ValueError("fused=True is not available in mode 'gc', which runs on the PyTorch fallback")
        if capturable and not _fused_form({"fused": fused, "foreach": foreach}):
            raise ValueError("capturable=True needs a fused step (fused=True, or fused and foreach left None): a foreach "
                             "or for-loop step reads the non-finite flag on the host, which a CUDA graph cannot capture")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused)
        # What fused=True needs of the parameters alone is checked now, before any step; gradients
        # and state (strides, alignment) are checked at each step, before anything changes.
        chosen = [p for group in self.param_groups if group["fused"] for p in group["params"]]
        reason = self._kernels_unavailable(chosen) if chosen else None
        if reason is not None:
            raise ValueError(f"GANAdamW(fused=True) cannot run its fused kernels: {reason}; fused=None falls back to "
                             "GAN on copies then torch's AdamW")
        # torch's fused AdamW unscales inside its own step; this one needs the scaler to unscale
        # before it (GAN's alpha depends on the true gradients), whatever ``fused`` says.
        self._step_supports_amp_scaling = False
        first = next((p for group in self.param_groups for p in group["params"]), None)
        self.gan_state = GANState(device=first.device if first is not None else None)
        self._last: dict[str, GANStats] = {}
        self._plan = None
        self._plan_key: tuple | None = None
        self._held: _HeldLayout | None = None
        # Bumped by every change to the state or to a parameter's state dict (_CountsWrites).
        self._state_writes = [0]
        self.state = _TrackedStates(self._state_writes)
        self._scratch: list[Tensor] = []  # the fallback's copies of the eligible gradients

    @property
    def last_stats(self) -> GANStats | None:
        """The :class:`GANStats` of the last step, ``None`` before the first."""
        return self._last.get("stats")

    def eligible_grads(self) -> list[Tensor]:
        """The gradients that the next ``step`` transforms (on the fly), in parameter-group order."""
        return eligible_gradients(self.param_groups, self.eligible)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (with grad enabled) if given, then take one GAN + AdamW step.
        Returns the closure's result (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = self._held_layout()
        if held is not None:
            self._last["stats"] = held.plan.step(self.gan_state.to_(held.plan.device), self.mode, *self._hyper(),
                                                 self.rule, held.steps)
            return loss
        params, grads, groups, states = [], [], [], []
        for j, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GANAdamW does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                groups.append(j)
                states.append(self._state(p, group))
        if self.eligible is default_eligible:
            flags = [eligible_gradient(g) for g in grads]
        else:
            flags = [bool(self.eligible(p)) for p in params]
        eligible, slot = [], 0
        for flag in flags:
            eligible.append(slot if flag else -1)
            slot += flag
        if self._dtensor_params:
            self._last["stats"] = self._dtensor_step(params, grads, states, eligible, groups)
            return loss
        kernels = all(_fused_form(group) for group in self.param_groups)
        plan = self._fused_plan(params, grads, states, eligible, groups) if slot and kernels else None
        if plan is None and slot and any(group["fused"] for group in self.param_groups):
            reason = self._unfused_reason(params, grads, states) if kernels else "a parameter group has fused=False or foreach set"
            raise RuntimeError(f"GANAdamW(fused=True) cannot run its fused kernels for this step: {reason}; "
                               "fused=None falls back to GAN on copies then torch's AdamW")
        if plan is None:
            self._held = None
            self._last["stats"] = self._fallback_step(params, grads, states, eligible, groups)
        else:
            steps = [s["step"] for s in states] if self.rule is not None else None
            self._held = _HeldLayout(self, plan, params, grads, flags, states, steps)
            self._last["stats"] = plan.step(self.gan_state.to_(plan.device), self.mode, *self._hyper(), self.rule, steps)
        return loss

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the cached plan, layout and scratch (a copy rebuilds them at its first
        step); torch's own ``__getstate__`` would also drop the GAN options and state."""
        state = self.__dict__.copy()
        state.update(_plan=None, _plan_key=None, _held=None, _scratch=[])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy's, or (called by torch's ``load_state_dict``) a loaded state's: the state goes into
        containers that count their writes with a counter of their own."""
        super().__setstate__(state)
        self._state_writes = [0]
        self.state = _TrackedStates(self._state_writes, self.state)

    def _held_layout(self) -> _HeldLayout | None:
        """The previous step's fused layout if this step has the same one, else None (the full path
        then finds or builds the plan). Checked at every step in a few C-level passes over the
        parameters: the parameters and their groups (by object), which have gradients, every
        parameter's and gradient's data pointer and every gradient's strides (a gradient's shape,
        dtype and device are its parameter's, which a new data pointer would show), the
        eligibility, the backend, the mode, and the optimizer state: nothing set, replaced or
        removed in it or in a parameter's state dict since (they count their writes:
        :class:`_CountsWrites`), and ``load_state_dict`` drops the layout."""
        held = self._held
        if held is None or held.backend != self.backend or held.mode != self.mode or held.state is not self.state:
            return None
        groups = self.param_groups
        if list(map(len, map(_params_of, groups))) != held.group_sizes:
            return None
        if not all(map(is_, chain.from_iterable(map(_params_of, groups)), held.everything)):
            return None
        if not all(map(_fused_form, groups)):  # a group's fused/foreach flags changed since
            return None
        if list(map(_amsgrad_of, groups)) != held.amsgrad:  # the layout has max_exp_avg_sq where it had
            return None
        grads = list(map(_grad, held.params))
        try:
            if (list(map(_data_ptr, chain(grads, held.params))) != held.ptrs
                    or not (all(map(_is_contiguous, grads)) if held.contiguous else list(map(_stride, grads)) == held.grad_strides)):
                return None
        except (TypeError, RuntimeError):  # a gradient gone (None), or sparse (no data pointer): the full path
            return None
        if held.absent and any(map(_not_none, map(_grad, held.absent))):
            return None
        if self._state_writes[0] != held.state_writes:
            return None
        if self.eligible is not default_eligible and [bool(self.eligible(p)) for p in held.params] != held.flags:
            return None
        return held

    def _state(self, p: Tensor, group: dict) -> dict:
        """The parameter's AdamW state, created as torch does (the step on the parameter's device
        for a fused or capturable group, on the CPU otherwise), held in a :class:`_TrackedState`
        so that the steady step sees any later change to it."""
        state = self.state.get(p)
        if type(state) is not _TrackedState:
            state = self.state[p] = _TrackedState(self._state_writes, state or ())
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=_step_device(p, group))
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif group["amsgrad"] and "max_exp_avg_sq" not in state:
            raise KeyError("max_exp_avg_sq: a parameter in a group with amsgrad=True has AdamW state made without "
                           "amsgrad (as in torch's AdamW, amsgrad cannot be turned on for a parameter that has state)")
        return state

    def _hyper(self) -> tuple[list[tuple], list[tuple[int, int, Tensor]]]:
        """The hyper-parameter table of the update kernel: floats per group, and the tensor-valued
        entries (lr, betas) to copy on the device."""
        from .kernels import update

        rows, tensors = [], []
        for j, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            row = [group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                   update.MAXIMIZE.value * group["maximize"] + update.AMSGRAD.value * group["amsgrad"]]
            for column, value in enumerate(row):
                if isinstance(value, Tensor):
                    tensors.append((j, column, value))
                    row[column] = 0.0
            rows.append(tuple(float(v) for v in row))
        return rows, tensors

    def _fused_plan(self, params, grads, states, eligible, groups):
        """The kernels' plan for this layout (kept while the layout lasts), or None where the
        kernels cannot run it."""
        if self.mode == "gc":
            return None
        key = (self.backend, tuple(map(Tensor.data_ptr, params)), tuple(map(Tensor.data_ptr, grads)), plans._metadata(grads),
               tuple(eligible), tuple(groups),
               tuple((s["exp_avg"].data_ptr(), s["exp_avg_sq"].data_ptr(), s["step"].data_ptr()) for s in states))
        if key == self._plan_key:
            return self._plan
        from .kernels.fused import AdamWPlan

        plan = None
        if self._unfused_reason(params, grads, states) is None:
            plan = AdamWPlan(params, grads, states, eligible, groups, len(self.param_groups), params[0].device)
        self._plan, self._plan_key = plan, key
        return plan

    def _unfused_reason(self, params, grads, states) -> str | None:
        """Why the fused kernels cannot take a step over these parameters (with eligible
        gradients), in words, or None when they can."""
        from .kernels.fused import fusable

        reason = self._kernels_unavailable(params)
        if reason is None and not fusable(params, grads, states):
            reason = ("a parameter, its gradient or its state differs from it in dtype or strides, or is not dense and "
                      "16-byte aligned")
        return reason

    def _kernels_unavailable(self, params: list[Tensor]) -> str | None:
        """Why the fused kernels cannot run on ``params`` (non-empty) whatever their gradients and
        state, in words, or None: what ``fused=True`` can check before the first step."""
        if self.mode == "gc":
            return "mode 'gc' runs on the PyTorch fallback"
        device = params[0].device
        if any(p.device != device for p in params):
            return "the parameters are on more than one device"
        if not plans.uses_triton(params, self.backend):
            if self.backend == "torch":
                return "backend='torch' chooses the PyTorch fallback"
            if any(p.dtype not in plans.TRITON_DTYPES for p in params):
                return "a parameter is float64; the kernels take float32, float16 and bfloat16"
            return (f"backend='auto' runs the kernels on CUDA tensors on a supported GPU, not on {device.type} tensors "
                    "(backend='triton' runs them on the CPU under TRITON_INTERPRET=1)")
        return None

    def _fallback_step(self, params, grads, states, eligible, groups) -> GANStats:
        """GAN on copies of the eligible gradients (so ``p.grad`` keeps the raw gradient), then
        torch's AdamW on them."""
        scratch = self._copies(params, grads, eligible)
        stats = gan_(scratch, self.gan_state, mode=self.mode, backend=self.backend, rule=self.rule)
        self._adamw_update(params, grads, scratch, states, eligible, groups, stats)
        return stats

    def _dtensor_step(self, params, grads, states, eligible, groups) -> GANStats:
        """The step over DTensor parameters (FSDP2). GAN with the statistics of the unsharded
        eligible gradients, on copies of their local shards (one collective, as ``gan_`` takes
        DTensor gradients), then torch's AdamW on this rank's local shards of the parameters,
        gradients and state, which stays DTensors as under torch's AdamW."""
        from .distributed import gan_dtensors_

        chosen = [g for g, slot in zip(grads, eligible) if slot >= 0]
        local_params, local_grads = list(map(_local, params)), list(map(_local, grads))
        scratch = self._copies(local_params, local_grads, eligible)
        if chosen:
            # Validates the placements (and refuses a plain tensor among them) before any change.
            stats = gan_dtensors_(chosen, self.gan_state, self.mode, self.rule, local_shards=scratch)
        else:
            stats = gan_([], self.gan_state, mode=self.mode, rule=self.rule)
        local_states = [{key: _local(value) for key, value in state.items()} for state in states]
        self._adamw_update(local_params, local_grads, scratch, local_states, eligible, groups, stats)
        return stats

    def _copies(self, params, grads, eligible) -> list[Tensor]:
        """The scratch, refilled with copies of the eligible ``grads`` (reallocated when their
        layout changed), each laid out like its parameter: torch's fused AdamW reads a gradient
        element by element as laid out like its parameter."""
        chosen = [(p, g) for p, g, slot in zip(params, grads, eligible) if slot >= 0]
        if [(s.shape, s.dtype, s.device, s.stride()) for s in self._scratch] != [(g.shape, g.dtype, g.device, p.stride()) for p, g in chosen]:
            self._scratch = [torch.empty_like(p, memory_format=torch.preserve_format) for p, _ in chosen]
        if chosen:
            torch._foreach_copy_(self._scratch, [g for _, g in chosen])
        return self._scratch

    def _adamw_update(self, params, grads, transformed, states, eligible, groups, stats: GANStats) -> None:
        """torch's AdamW, group by group, on ``grads`` with the eligible ones replaced by their
        ``transformed`` copies (and any other gradient strided unlike its parameter copied to its
        layout). A group whose flags choose a fused step takes torch's fused AdamW where torch
        offers it, so that a non-finite step is skipped on the device (``found_inf``); the others
        take the foreach or for-loop form their ``foreach`` names, and the flag is read on the host."""
        transformed = iter(transformed)
        inputs = [next(transformed) if slot >= 0 else g if g.stride() == p.stride() else torch.empty_like(p, memory_format=torch.preserve_format).copy_(g)
                  for p, g, slot in zip(params, grads, eligible)]
        members = [[i for i, k in enumerate(groups) if k == j] for j in range(len(self.param_groups))]
        fused = [_fused_form(group) and all(_fused_adamw_supported(params[i]) for i in chosen)
                 for group, chosen in zip(self.param_groups, members)]
        if not all(fused) and stats.nonfinite.item():
            return
        for group, chosen, group_fused in zip(self.param_groups, members, fused):
            if not chosen:
                continue
            beta1, beta2 = group["betas"]
            adamw(
                [params[i] for i in chosen], [inputs[i] for i in chosen],
                [states[i]["exp_avg"] for i in chosen], [states[i]["exp_avg_sq"] for i in chosen],
                [states[i]["max_exp_avg_sq"] for i in chosen] if group["amsgrad"] else [],
                [states[i]["step"] for i in chosen],
                foreach=None if group_fused else group["foreach"], capturable=group["capturable"],
                fused=group_fused, found_inf=stats.nonfinite.to(torch.float32) if group_fused else None,
                amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=group["lr"],
                weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``; a group holding a DTensor parameter (FSDP2) sends every
        later ``step`` down the DTensor path."""
        super().add_param_group(param_group)
        # Optimizer.__init__ adds the first groups, before any attribute of this class is set.
        self._dtensor_params = getattr(self, "_dtensor_params", False) or any(map(is_dtensor, self.param_groups[-1]["params"]))

    def state_dict(self) -> dict[str, Any]:
        """torch's AdamW state dict, with the :class:`GANState` under ``"gan"`` (which the
        state-dict post hooks see). Each parameter's state is a plain dict, as torch's, so the
        dict saves and loads with ``torch.load(weights_only=True)``."""

        def make() -> dict[str, Any]:
            with hooks_suspended(self):
                state_dict = super(GANAdamW, self).state_dict()
            state_dict["state"] = {key: dict(value) for key, value in state_dict["state"].items()}
            state_dict["gan"] = self.gan_state.state_dict()
            return state_dict

        return hooked_state_dict(self, make)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict`, or one of ``GAN(torch.optim.AdamW(...))`` or of a
        plain AdamW (which leaves the GANState as it is). Steps move to their parameter's device.
        The load pre hooks see ``"gan"``."""

        def load(state_dict: dict[str, Any]) -> None:
            state_dict = dict(state_dict)
            gan_state = state_dict.pop("gan", None)
            with hooks_suspended(self):
                super(GANAdamW, self).load_state_dict(state_dict)
            for group in self.param_groups:
                for p in group["params"]:
                    state = self.state.get(p)
                    if state and "step" in state:
                        state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(_step_device(p, group))
            if gan_state is not None:
                self.gan_state.load_state_dict(gan_state)
            self._plan_key = self._held = None

        hooked_load_state_dict(self, state_dict, load)

    def __repr__(self) -> str:
        eligible = "default" if self.eligible is default_eligible else repr(self.eligible)
        rule = "" if self.rule is None else f", rule={self.rule!r}"
        return f"GANAdamW(mode={self.mode!r}, backend={self.backend!r}, eligible={eligible}{rule}) " + super().__repr__()


class _CountsWrites:
    """A mapping that counts every change to its entries (set, replace, remove) in ``writes``, a
    one-element list it shares with the other state mappings of its optimizer, so that GANAdamW's
    steady step sees in one comparison that its state changed."""

    __slots__ = ()
    writes: list[int]

    def _written(self) -> None:
        self.writes[0] += 1

    def __setitem__(self, key, value) -> None:
        self._written()
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self._written()
        super().__delitem__(key)

    def __ior__(self, other):
        self._written()
        return super().__ior__(other)

    def update(self, *args, **kwargs) -> None:
        self._written()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._written()
        return super().setdefault(key, default)

    def pop(self, *args):
        self._written()
        return super().pop(*args)

    def popitem(self):
        self._written()
        return super().popitem()

    def clear(self) -> None:
        self._written()
        super().clear()


class _TrackedState(_CountsWrites, dict):
    """A parameter's GANAdamW state. It pickles and copies as a plain dict (``state_dict()`` holds
    plain dicts, which ``torch.load(weights_only=True)`` takes)."""

    __slots__ = ("writes",)

    def __init__(self, writes: list[int], entries=()) -> None:
        super().__init__(entries)
        self.writes = writes

    def __reduce__(self):
        return dict, (dict(self),)


class _TrackedStates(_CountsWrites, defaultdict):
    """GANAdamW's ``state``: torch's ``defaultdict`` from parameters to their state, whose missing
    entries are new :class:`_TrackedState` dicts. It pickles and copies as torch's."""

    __slots__ = ("writes",)

    def __init__(self, writes: list[int], entries=()) -> None:
        super().__init__(partial(_TrackedState, writes), entries)
        self.writes = writes

    def __reduce__(self):
        return defaultdict, (dict,), None, None, iter(self.items())


class _HeldLayout:
    """What GANAdamW's steady state compares against: the layout of the last fused step and its plan."""

    def __init__(self, optimizer: GANAdamW, plan, params: list[Tensor], grads: list[Tensor], flags: list[bool],
                 states: list[dict], steps: list[Tensor] | None) -> None:
        groups = optimizer.param_groups
        everything = [p for group in groups for p in group["params"]]
        self.plan, self.steps, self.params, self.flags = plan, steps, params, flags
        self.backend, self.mode, self.state = optimizer.backend, optimizer.mode, optimizer.state
        self.everything = everything  # every parameter, as the groups list them
        self.group_sizes = [len(group["params"]) for group in groups]
        self.amsgrad = list(map(_amsgrad_of, groups))
        self.absent = [p for p in everything if p.grad is None]
        self.ptrs = list(map(_data_ptr, chain(grads, params)))  # the gradients' then the parameters'
        self.grad_strides = list(map(_stride, grads))
        # Every gradient contiguous: then one is laid out as before while it still is (its shape
        # is its parameter's), which is cheaper to ask than its strides.
        self.contiguous = all(map(_is_contiguous, grads))
        self.state_writes = optimizer._state_writes[0]
        # The state tensors the plan's tables point to, kept alive with it: a layout wrongly held
        # would then write into memory that is still theirs, never into freed memory.
        self.state_tensors = [list(state.values()) for state in states]


def hooked_state_dict(optimizer: torch.optim.Optimizer, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``make()``, the optimizer's whole state dict, between its state-dict hooks, as
    ``torch.optim.Optimizer.state_dict`` runs them: each pre hook ``hook(optimizer)``, then each
    post hook ``hook(optimizer, state_dict)``, whose result, when not None, replaces the dict."""
    for hook in optimizer._optimizer_state_dict_pre_hooks.values():
        hook(optimizer)
    state_dict = make()
    for hook in optimizer._optimizer_state_dict_post_hooks.values():
        result = hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    return state_dict


def hooked_load_state_dict(
    optimizer: torch.optim.Optimizer, state_dict: dict[str, Any], load: Callable[[dict[str, Any]], None]
) -> None:
    """``load(state_dict)`` between the optimizer's load hooks, as ``torch.optim.Optimizer``
    runs them: each pre hook ``hook(optimizer, state_dict)``, whose result, when not None,
    replaces the dict, then each post hook ``hook(optimizer)``."""
    for hook in optimizer._optimizer_load_state_dict_pre_hooks.values():
        result = hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    load(state_dict)
    for hook in optimizer._optimizer_load_state_dict_post_hooks.values():
        hook(optimizer)


@contextlib.contextmanager
def hooks_suspended(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """torch's own state-dict methods, called inside, run none of the optimizer's state-dict
    hooks (the caller runs them around its whole dict)."""
    names = _HOOK_REGISTRIES[2:]
    saved = [getattr(optimizer, name) for name in names]
    for name in names:
        setattr(optimizer, name, OrderedDict())
    try:
        yield
    finally:
        for name, hooks in zip(names, saved):
            setattr(optimizer, name, hooks)


def closure_then_gan(closure: Callable[[], Any], apply: Callable[[], None]) -> Callable[[], Any]:
    """The closure to hand an optimizer's step in place of ``closure``: it evaluates ``closure``
    with grad enabled (it computes the gradients), then calls ``apply()`` (GAN on them), and
    returns the closure's result. An optimizer that evaluates its closure several times in one
    step (LBFGS) so gets GAN on each gradient it evaluates."""

    def evaluate_then_gan() -> Any:
        with torch.enable_grad():
            loss = closure()
        apply()
        return loss

    return evaluate_then_gan


def eligible_gradients(param_groups: list[dict[str, Any]], eligible: Callable[[Tensor], bool]) -> list[Tensor]:
    """The gradients ``eligible`` chooses among the parameters of ``param_groups``, in order."""
    params = [p for group in param_groups for p in group["params"]]
    if eligible is default_eligible:
        # The default rule needs only the gradients: one pass over them, at every step.
        return list(filter(eligible_gradient, map(_grad, params)))
    return [p.grad for p in params if p.grad is not None and eligible(p)]


def _fused_form(group: dict[str, Any]) -> bool:
    """Whether a parameter group's flags choose a fused step: ``fused=True``, or neither ``fused``
    nor ``foreach`` set (GANAdamW's default, where torch's is foreach)."""
    return bool(group["fused"]) or (group["fused"] is None and group["foreach"] is None)


def _step_device(p: Tensor, group: dict[str, Any]) -> torch.device:
    """Where torch keeps a parameter's AdamW ``step``: on its device for a fused or capturable
    group (the kernels read it there), on the CPU otherwise (a host number costs no launch)."""
    return p.device if group["capturable"] or _fused_form(group) else torch.device("cpu")


def _local(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (its storage: in-place changes reach the DTensor); a plain
    tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def _fused_adamw_supported(p: Tensor) -> bool:
    """Whether torch's fused AdamW takes ``p`` (and so a ``found_inf`` flag on the device)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return p.device.type in _get_fused_kernels_supported_devices() and p.is_floating_point()
