"""``gan_``: the functional entry point — validation, grouping by dtype, backend dispatch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import plan as plans
from .fallback import empty_step
from .rule import Rule, check_rule
from .state import GANState, GANStats
from .validation import as_list, check_grads, check_mode, check_state, is_dtensor

BACKENDS = ("auto", "torch", "triton")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available backends: {', '.join(BACKENDS)}")
    return backend


def gan_(
    grads: Sequence[Tensor],
    state: GANState | None = None,
    *,
    mode: str = "gan",
    backend: str = "auto",
    rule: Rule | None = None,
) -> GANStats:
    """Apply Gradient Autoscaled Normalization to ``grads``, in place, and return the step's stats.

    Every tensor given is transformed (the caller chooses eligibility): each loses its own mean and,
    in mode ``"gan"``, all are multiplied by one factor alpha derived from the global std of the
    centered gradients. Mode ``"center"`` only removes the means; ``"gc"`` is Gradient
    Centralization as its authors define it, one mean per row (over all dimensions but the first),
    on the fallback whatever the backend; ``"znorm"`` divides each centered tensor by its own std.
    The statistics reported are whole-tensor ones in every mode. If any element is NaN/Inf nothing
    is modified and ``stats.nonfinite`` is True. Never records autograd and never synchronises with
    the host.

    Args:
        grads: k floating-point tensors (any shapes, strides and dtypes; mixed dtypes allowed) on one
            device. Overwritten in place, each rounded once into its own dtype.
        state: the :class:`GANState` carried between steps (its ``exponent`` is set once, its
            ``step`` counted); ``None`` means a fresh state.
        mode: ``"gan"`` (default), ``"center"``, ``"gc"`` or ``"znorm"``.
        backend: ``"auto"`` (the Triton kernels for CUDA tensors when Triton is installed, else the
            fallback), ``"torch"`` (the multi-tensor PyTorch fallback) or ``"triton"`` (the kernels,
            or a ``ValueError`` where they cannot run; on CPU tensors they run only under
            ``TRITON_INTERPRET=1``). A list holding float64 tensors always takes the fallback.
            DTensor gradients (FSDP2) go to :func:`gan_kernels.distributed.gan_sharded_`, which
            gives every rank the result of the unsharded gradients.
        rule: how sigma becomes alpha: a callable ``rule(sigma, exponent) -> (alpha, exponent)``
            over 0-d device tensors, pure and free of host syncs, whose exponent is stored on finite
            steps only; None is the built-in :func:`gan_kernels.rule.autoscale`, which the Triton
            path keeps fused in its finalize kernel. Every backend gives the same result for the
            same rule (``docs/method.md``).

    Returns:
        :class:`GANStats` with 0-d ``alpha``, ``global_std``, ``nonfinite`` and (k,) ``means``,
        ``stds``, on the gradients' device.

    Raises:
        TypeError: a non-tensor, sparse or non-floating gradient, or a bare tensor for the list.
        ValueError: tensors on different devices, an expanded or overlapping view, an unknown
            ``mode`` or ``backend`` (``docs/guarantees.md``). Each names the offending index and
            is raised before anything is modified.
    """
    if torch.compiler.is_compiling():
        if rule is not None:
            # A Python callable cannot cross the compiled operator: the step runs eagerly instead,
            # the rule included (RULE_UNDER_COMPILE). The module is imported here, while tracing
            # (torch.compile imports it for real, and has loaded torch._dynamo already), so that
            # importing gan_kernels does not load torch._dynamo.
            from .outside_graph import eager_step

            return eager_step(grads, state, mode, backend, check_rule(rule))
        return _traced_gan_(grads, state, mode, backend)
    return _eager_gan_(grads, state, mode, backend, rule)


def _eager_gan_(
    grads: Sequence[Tensor], state: GANState | None, mode: str, backend: str, rule: Rule | None = None
) -> GANStats:
    return step(grads, state, mode, backend, rule=rule)[0]


RULE_UNDER_COMPILE = (
    "a rule of one's own is a Python callable, which the compiled operator gan_kernels::gan_step cannot "
    "take, so the step runs eagerly, outside the graph (rule=None keeps it one operator in the graph)"
)


def step(
    grads: Sequence[Tensor],
    state: GANState | None,
    mode: str,
    backend: str,
    held: plans.Plan | None = None,
    rule: Rule | None = None,
) -> tuple[GANStats, plans.Plan | None]:
    """One eager step, and the plan it ran on (None for empty and DTensor lists).

    The steady state — the same gradient buffers as a recent step, or as ``held`` — reads each
    gradient's metadata back once and runs the cached plan; anything else validates the list and
    builds a plan (:mod:`gan_kernels.plan`).
    """
    grads = as_list(grads)
    plan = plans.lookup(grads, backend, held)
    if plan is None:
        if any(is_dtensor(g) for g in grads):
            from .distributed import gan_dtensors_

            check_backend(backend)
            return gan_dtensors_(grads, state, check_mode(mode), check_rule(rule)), None
        grads = check_grads(grads)
        check_mode(mode)
        check_backend(backend)
        check_rule(rule)
        if not grads:
            return empty_step(check_state(state), rule), None
        plan = plans.build(grads, backend)
    check_mode(mode)
    check_rule(rule)
    state = check_state(state, plan.device).to_(plan.device)
    return plan.step(grads, state, mode, rule), plan


@torch.library.custom_op("gan_kernels::gan_step", mutates_args=("grads", "exponent", "step"))
def gan_step(
    grads: list[Tensor], exponent: Tensor, step: Tensor, gan_mode: str, gan_backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``gan_`` as a PyTorch operator, for ``torch.compile``: the GANState travels as its two
    tensors (mutated in place, like the gradients) and the GANStats come back as a tuple. (The
    string arguments are not called ``mode``: that name is taken inside torch's dispatch.)"""
    device = grads[0].device if grads else exponent.device
    if exponent.device != device or step.device != device:
        raise ValueError(
            f"the GANState is on {exponent.device} but the gradients are on {device}; "
            f"under torch.compile create it there: GANState(device={str(device)!r})"
        )
    return tuple(_eager_gan_(grads, GANState.wrap(exponent, step), gan_mode, gan_backend))


@gan_step.register_fake
def _(grads, exponent, step, gan_mode, gan_backend):
    device = grads[0].device if grads else exponent.device
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    scalar = grads[0].new_empty((), dtype=dtype) if grads else exponent.new_empty((), dtype=dtype)
    vector = scalar.new_empty((len(grads),))
    return scalar, scalar.new_empty(()), vector, vector.new_empty((len(grads),)), torch.empty((), dtype=torch.bool, device=device)


def _traced_gan_(grads: Sequence[Tensor], state: GANState | None, mode: str, backend: str) -> GANStats:
    """What ``gan_`` traces to under ``torch.compile``: one call of the ``gan_step`` operator,
    whose implementation validates the real tensors and runs the eager path."""
    check_mode(mode)
    check_backend(backend)
    grads = list(grads)
    if state is None:
        state = GANState(device=grads[0].device if grads else None)
    state = check_state(state)
    return GANStats(*torch.ops.gan_kernels.gan_step(grads, state.exponent, state.step, mode, backend))
