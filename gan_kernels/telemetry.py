"""Gradient-dynamics telemetry: what GAN measures each step, recorded for plots and logs.

:class:`GradientRecorder` is fed the :class:`~gan_kernels.GANStats` of every step. The per-layer
stds, the global std and alpha are already in the stats, so recording costs no pass over the
gradients; the values stay on the device until :meth:`GradientRecorder.flush`, which moves
everything pending to the host in one transfer (call it once an epoch, not every step).

:meth:`GradientRecorder.for_optimizer` builds a recorder that names each layer after its parameter
in the model (``std/conv1.weight``), choosing the parameters the way the optimizer chose them.

When asked, it also records the *gradient coherence* of consecutive steps,
cos(g_t, g_{t-1}) over all eligible gradients taken as one vector — the quantity used to study
stale gradients. That costs one saved copy of the gradients and a dot product per step.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .hooks import _attached
from .optim import default_eligible, eligible_gradient
from .state import GANStats

_SCALARS = ("global_std", "alpha", "nonfinite", "coherence")


class GradientRecorder:
    """Records per-step gradient statistics.

    Args:
        names: one name per eligible tensor, in the order of ``GANStats.means`` (for a ``GAN``
            wrapper: the eligible parameters in parameter-group order). ``None`` names them
            ``layer0``, ``layer1``, ... :meth:`for_optimizer` names them after the model's
            parameters instead, at every step.
        coherence: also record cos(g_t, g_{t-1}); :meth:`record` then needs the gradients (a
            recorder from :meth:`for_optimizer` reads them from the optimizer).

    After :meth:`flush`, ``rows`` holds one dict per step: ``step``, ``global_std``, ``alpha``,
    ``nonfinite``, ``coherence`` (NaN when not recorded, at the first step, and when the set of
    eligible tensors changed since the last step) and ``std/<name>`` for every layer of that step.
    ``names`` lists every layer recorded so far, in first-seen order.
    """

    def __init__(self, names: Sequence[str] | None = None, coherence: bool = False) -> None:
        self.names = list(names) if names is not None else None
        self.coherence = coherence
        self.rows: list[dict[str, float]] = []
        self._pending: list[tuple[tuple[str, ...], Tensor]] = []
        self._previous: Tensor | None = None
        self._previous_layout: tuple | None = None
        self._optimizer: Any = None
        self._model: torch.nn.Module | None = None
        self._param_names: dict[int, tuple[Tensor, str]] = {}
        self._seen: set[str] = set()

    @classmethod
    def for_optimizer(cls, optimizer: Any, model: torch.nn.Module, *, coherence: bool = False) -> GradientRecorder:
        """A recorder that names each eligible tensor after its parameter in ``model``.

        ``optimizer`` is a :class:`~gan_kernels.GAN`, a :class:`~gan_kernels.GANAdamW`, the
        :class:`~gan_kernels.hooks.Attachment` that :func:`gan_kernels.attach` returns, or a torch
        optimizer (GAN attached to it or not). At each :meth:`record` the eligible parameters are
        chosen as the optimizer chooses them (its ``eligible`` rule, among the parameters of its
        ``param_groups`` that have a gradient, in parameter-group order), so the names match
        ``stats.stds`` even when the set of parameters with a gradient changes between steps.
        Call :meth:`record` right after the step, before the gradients are zeroed; without
        ``grads`` it reads the eligible gradients from the optimizer.

        Raises:
            ValueError: if a parameter of the optimizer is not one of ``model``'s.
        """
        recorder = cls(None, coherence=coherence)
        recorder.names = []
        recorder._optimizer = optimizer
        recorder._model = model
        recorder._index_model()
        missing = [p for p in _params(optimizer) if recorder._name_of(p) is None]
        if missing:
            raise ValueError(f"{len(missing)} of the optimizer's parameters are not parameters of the model")
        return recorder

    def eligible_parameters(self) -> list[tuple[str, Tensor]]:
        """(name, parameter) of the tensors the optimizer transforms at its next step, in the order
        of ``GANStats.stds``. Only for a recorder from :meth:`for_optimizer`."""
        if self._optimizer is None:
            raise ValueError("eligible_parameters() needs a recorder from GradientRecorder.for_optimizer")
        eligible = _eligible_rule(self._optimizer)
        named = []
        for p in _params(self._optimizer):
            if p.grad is None or not (eligible_gradient(p.grad) if eligible is default_eligible else eligible(p)):
                continue
            name = self._name_of(p)
            if name is None:
                self._index_model()  # the model may have gained parameters since
                name = self._name_of(p)
                if name is None:
                    raise ValueError(f"a parameter of shape {tuple(p.shape)} of the optimizer is not a parameter of the model")
            named.append((name, p))
        return named

    @torch.no_grad()
    def record(self, stats: GANStats, grads: Sequence[Tensor] | None = None) -> None:
        """Record one step. ``grads`` (the eligible gradients, any dtypes) are needed only for
        coherence, and a recorder from :meth:`for_optimizer` defaults them to the optimizer's; they
        are read, never modified. No host synchronisation."""
        if stats is None:
            raise ValueError("no stats to record: record after the optimizer's step (last_stats is None before it)")
        if self._optimizer is not None:
            named = self.eligible_parameters()
            names = tuple(name for name, _ in named)
            if len(stats.stds) != len(names):
                raise ValueError(f"stats hold {len(stats.stds)} tensors but the optimizer has {len(names)} eligible "
                                 "gradients: record right after step(), before the gradients are zeroed")
            for name in names:
                if name not in self._seen:
                    self._seen.add(name)
                    self.names.append(name)
            if grads is None:
                grads = [p.grad for _, p in named]
        else:
            if self.names is None:
                self.names = [f"layer{i}" for i in range(len(stats.stds))]
            if len(stats.stds) != len(self.names):
                raise ValueError(f"stats hold {len(stats.stds)} tensors but the recorder names {len(self.names)}")
            names = tuple(self.names)
        coherence = torch.full((), math.nan, device=stats.stds.device)
        if self.coherence:
            if grads is None:
                raise ValueError("coherence=True: pass the eligible gradients to record()")
            grads = list(grads)
            if len(grads) != len(names):
                raise ValueError(f"stats hold {len(names)} tensors but {len(grads)} gradients were given")
            layout = (names, tuple(g.shape for g in grads))
            current = torch.cat([g.detach().reshape(-1).float() for g in grads]) if grads else stats.stds.new_zeros(0)
            if self._previous is not None and self._previous_layout == layout:
                denominator = torch.linalg.vector_norm(current) * torch.linalg.vector_norm(self._previous)
                coherence = torch.dot(current, self._previous) / denominator
            self._previous, self._previous_layout = current, layout
        scalars = torch.stack([
            stats.global_std.float(), stats.alpha.float(), stats.nonfinite.float(), coherence.float(),
        ])
        self._pending.append((names, torch.cat([scalars, stats.stds.float()])))

    def flush(self) -> list[dict[str, float]]:
        """Move every pending step to the host (one transfer) and return all rows so far."""
        if self._pending:
            values = torch.cat([v for _, v in self._pending]).cpu().tolist()
            start = 0
            for names, _ in self._pending:
                global_std, alpha, nonfinite, coherence = values[start:start + len(_SCALARS)]
                stds = values[start + len(_SCALARS):start + len(_SCALARS) + len(names)]
                start += len(_SCALARS) + len(names)
                self.rows.append({
                    "step": len(self.rows) + 1,
                    "global_std": global_std,
                    "alpha": alpha,
                    "nonfinite": bool(nonfinite),
                    "coherence": coherence,
                    **{f"std/{name}": std for name, std in zip(names, stds)},
                })
            self._pending.clear()
        return self.rows

    def column(self, name: str) -> list[float]:
        """One recorded quantity over the steps, e.g. ``"alpha"`` or ``"std/conv1.weight"``; NaN at
        the steps that did not record it (a layer without a gradient at that step)."""
        rows = self.flush()
        if rows and not any(name in row for row in rows):
            raise KeyError(f"no recorded quantity {name!r}")
        return [row.get(name, math.nan) for row in rows]

    def fieldnames(self) -> list[str]:
        """Every key of the rows, in first-seen order."""
        return list(dict.fromkeys(key for row in self.flush() for key in row)) or ["step"]

    def write_csv(self, path: str | Path) -> None:
        """One line per step, one column per recorded quantity; empty where a step lacks a layer."""
        fieldnames = self.fieldnames()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(self.rows)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.flush(), allow_nan=True) + "\n")

    def write_tensorboard(self, log_dir: str | Path) -> bool:
        """Write every row as TensorBoard scalars; False (nothing written) without tensorboard."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return False
        with SummaryWriter(str(log_dir)) as writer:
            for row in self.flush():
                for key, value in row.items():
                    if key != "step":
                        writer.add_scalar(key, float(value), row["step"])
        return True

    def _index_model(self) -> None:
        self._param_names = {id(p): (p, name) for name, p in self._model.named_parameters()}

    def _name_of(self, param: Tensor) -> str | None:
        entry = self._param_names.get(id(param))
        return entry[1] if entry is not None and entry[0] is param else None


def _params(optimizer: Any) -> list[Tensor]:
    """The parameters of ``optimizer``'s param groups (an Attachment's: its optimizer's), in order."""
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        inner = getattr(optimizer, "optimizer", None)
        groups = getattr(inner, "param_groups", None)
    if groups is None:
        raise TypeError(f"{type(optimizer).__name__} has no param_groups (nor an optimizer holding them)")
    return [p for group in groups for p in group["params"]]


def _eligible_rule(optimizer: Any) -> Callable[[Tensor], bool]:
    """The optimizer's eligibility rule: its own ``eligible`` (GAN, GANAdamW, an Attachment), that
    of the GAN attached to it, or the default."""
    eligible = getattr(optimizer, "eligible", None)
    if callable(eligible):
        return eligible
    try:
        attachment = _attached.get(optimizer)
    except TypeError:  # not weak-referenceable: nothing can be attached to it
        attachment = None
    return attachment.eligible if attachment is not None else default_eligible
