"""Gradient-dynamics telemetry: what GAN measures each step, recorded for plots and logs.

:class:`GradientRecorder` is fed the :class:`~gan_kernels.GANStats` of every step. The per-layer
stds, the global std and alpha are already in the stats, so recording costs no pass over the
gradients; the values stay on the device until :meth:`GradientRecorder.flush`, which moves
everything pending to the host in one transfer (call it once an epoch, not every step).

:meth:`GradientRecorder.for_optimizer` builds a recorder that names each layer after its parameter
in the model (``std/conv1.weight``), choosing the parameters the way the optimizer chose them.

Two neighbouring measurements of training dynamics can be recorded too:

- the *gradient coherence* at lag m, cos(g_t, g_{t-m}) over all eligible gradients taken as one
  vector, for any set of lags (by default m = 1 and m = 5), the quantity used to study stale
  gradients (arXiv 1810.03264). It keeps ``max(lags) + 1`` float32 copies of the eligible gradients
  (the current one and one per step back) and costs one dot product per lag per step;
- the *function-space step size*: every ``probe_every`` steps, one extra forward pass (no backward)
  of the model on a fixed probe batch, and the root-mean-square over the probe examples of the L2
  distance between its outputs now and at the previous probe (ICLR 2019, *Measuring and
  regularizing networks in function space*).

Neither needs GAN: a recorder for a plain torch optimizer records them with ``record()`` and no
stats.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .hooks import _attached
from .optim import default_eligible, eligible_gradient
from .state import GANStats

DEFAULT_LAGS = (1, 5)
_STATS_KEYS = ("global_std", "alpha", "nonfinite")


def coherence_lags(coherence: bool | int | Iterable[int]) -> tuple[int, ...]:
    """The lags that ``coherence=`` asks for: ``True`` is :data:`DEFAULT_LAGS`, ``False`` (or an
    empty list) none, an int or an iterable of ints those lags (sorted, without repeats)."""
    if coherence is True:
        return DEFAULT_LAGS
    if coherence is False or coherence is None:
        return ()
    lags = (coherence,) if isinstance(coherence, int) else tuple(coherence) if isinstance(coherence, Iterable) else None
    if lags is None or isinstance(coherence, str) or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in lags):
        raise ValueError(f"coherence lags must be positive integers (or True for {DEFAULT_LAGS}), got {coherence!r}")
    return tuple(sorted(set(lags)))


class GradientRecorder:
    """Records per-step gradient statistics.

    Args:
        names: one name per eligible tensor, in the order of ``GANStats.means`` (for a ``GAN``
            wrapper: the eligible parameters in parameter-group order). ``None`` names them
            ``layer0``, ``layer1``, ... :meth:`for_optimizer` names them after the model's
            parameters instead, at every step.
        coherence: the lags m at which to record cos(g_t, g_{t-m}): ``True`` for 1 and 5, an int
            or a list of ints, ``False`` for none. :meth:`record` then needs the gradients (a
            recorder from :meth:`for_optimizer` reads them from the optimizer). Memory: ``max(lags)
            + 1`` float32 copies of the eligible gradients, 4 bytes each per element.
        model: with ``probe``, record the function-space step size: ``model`` is run on the fixed
            ``probe`` batch now, at construction, and then at every ``probe_every``-th recorded
            step. The output must be a tensor, a tuple whose first element is one, or have a
            ``logits`` tensor; its first dimension indexes the examples. The forward runs under
            ``torch.no_grad()`` with every module in eval mode (no dropout, BatchNorm's running
            statistics left alone), and each module's mode is restored afterwards.
        probe: the fixed batch for ``model``: a tensor, a tuple of positional arguments or a dict
            of keyword arguments.
        probe_every: the number of steps between probes (at least 1).

    After :meth:`flush`, ``rows`` holds one dict per step: ``step``; ``global_std``, ``alpha``,
    ``nonfinite`` and ``std/<name>`` for every layer of that step when the step was recorded with
    stats; ``coherence/<m>`` per lag (NaN when fewer than m steps were recorded since the set of
    eligible tensors last changed); ``function_step`` with a probe (NaN between probes).
    ``names`` lists every layer recorded so far, in first-seen order.
    """

    def __init__(
        self,
        names: Sequence[str] | None = None,
        coherence: bool | int | Iterable[int] = False,
        *,
        model: torch.nn.Module | None = None,
        probe: Any = None,
        probe_every: int = 10,
    ) -> None:
        self.names = list(names) if names is not None else None
        self.lags = coherence_lags(coherence)
        if (model is None) != (probe is None):
            raise ValueError("the function-space step size needs both a model and a probe batch")
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 1:
            raise ValueError(f"probe_every must be a positive integer, got {probe_every!r}")
        self.probe_every = probe_every
        self.rows: list[dict[str, float]] = []
        self._pending: list[tuple[tuple[str, ...], Tensor]] = []  # (keys, their values on the device)
        self._recorded = 0
        # Coherence: a ring of max(lags) + 1 flat float32 gradient copies and their norms.
        self._ring: Tensor | None = None
        self._ring_norms: Tensor | None = None
        self._ring_head = 0
        self._ring_filled = 0
        self._ring_layout: tuple | None = None
        self._optimizer: Any = None
        self._model: torch.nn.Module | None = None
        self._param_names: dict[int, tuple[Tensor, str]] = {}
        self._seen: set[str] = set()
        self._probe_model = model
        self._probe = probe
        self._probe_outputs: Tensor | None = self._run_probe() if model is not None else None

    @property
    def coherence(self) -> bool:
        """Whether coherence is recorded (at :attr:`lags`)."""
        return bool(self.lags)

    @property
    def saved_bytes(self) -> int:
        """Device memory the recorder holds between steps: the ``max(lags) + 1`` float32 gradient
        copies of the coherence and the probe's last outputs (pending rows not counted)."""
        held = [t for t in (self._ring, self._ring_norms, self._probe_outputs) if t is not None]
        return sum(t.numel() * t.element_size() for t in held)

    @classmethod
    def for_optimizer(
        cls,
        optimizer: Any,
        model: torch.nn.Module,
        *,
        coherence: bool | int | Iterable[int] = False,
        probe: Any = None,
        probe_every: int = 10,
    ) -> GradientRecorder:
        """A recorder that names each eligible tensor after its parameter in ``model``.

        ``optimizer`` is a :class:`~gan_kernels.GAN`, a :class:`~gan_kernels.GANAdamW`, the
        :class:`~gan_kernels.hooks.Attachment` that :func:`gan_kernels.attach` returns, or a torch
        optimizer (GAN attached to it or not). At each :meth:`record` the eligible parameters are
        chosen as the optimizer chooses them (its ``eligible`` rule, among the parameters of its
        ``param_groups`` that have a gradient, in parameter-group order), so the names match
        ``stats.stds`` even when the set of parameters with a gradient changes between steps.
        Call :meth:`record` right after the step, before the gradients are zeroed; without
        ``grads`` it reads the eligible gradients from the optimizer. For a torch optimizer
        without GAN, call ``record()`` without stats: it records the coherence and the
        function-space step size. With ``probe``, ``model`` is also the model probed.

        Raises:
            ValueError: if a parameter of the optimizer is not one of ``model``'s.
        """
        recorder = cls(None, coherence=coherence, model=model if probe is not None else None,
                       probe=probe, probe_every=probe_every)
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
    def record(self, stats: GANStats | None = None, grads: Sequence[Tensor] | None = None) -> None:
        """Record one step. ``grads`` (the eligible gradients, any dtypes) are needed only for
        coherence, and a recorder from :meth:`for_optimizer` defaults them to the optimizer's; they
        are read, never modified. ``stats`` may be left out only where no GAN step produced any
        (a plain torch optimizer): the row then holds the coherence and the function-space step
        size alone. No host synchronisation."""
        if stats is None:
            if self._optimizer is not None and _runs_gan(self._optimizer):
                raise ValueError("no stats to record: record after the optimizer's step (last_stats is None before it)")
            if not self.lags and self._probe_model is None:
                raise ValueError("no stats to record, and neither coherence nor a probe asked for: nothing to record")
        if self._optimizer is not None:
            named = self.eligible_parameters()
            names = tuple(name for name, _ in named)
            if stats is not None and len(stats.stds) != len(names):
                raise ValueError(f"stats hold {len(stats.stds)} tensors but the optimizer has {len(names)} eligible "
                                 "gradients: record right after step(), before the gradients are zeroed")
            if grads is None:
                grads = [p.grad for _, p in named]
        elif stats is not None:
            names = tuple(self.names) if self.names is not None else tuple(f"layer{i}" for i in range(len(stats.stds)))
            if len(stats.stds) != len(names):
                raise ValueError(f"stats hold {len(stats.stds)} tensors but the recorder names {len(names)}")
        else:
            names = tuple(self.names) if self.names is not None else tuple(f"layer{i}" for i in range(len(grads or ())))
        if self.lags:
            if grads is None:
                raise ValueError("coherence needs the eligible gradients: pass the eligible gradients to record(stats, grads)")
            grads = list(grads)
            if len(grads) != len(names):
                raise ValueError(f"{len(names)} eligible tensors are named but {len(grads)} gradients were given")
        # Checked: from here on the recorder changes. The probe first, as it may still refuse.
        function_step = self._function_step(self._recorded + 1) if self._probe_model is not None else None
        self._recorded += 1
        if self._optimizer is not None:
            self.names += [name for name in names if name not in self._seen]
            self._seen.update(names)
        elif self.names is None and names:
            self.names = list(names)
        keys: list[str] = []
        values: list[Tensor] = []
        if stats is not None:
            keys += _STATS_KEYS
            values += [stats.global_std.float().reshape(1), stats.alpha.float().reshape(1), stats.nonfinite.float().reshape(1)]
        if self.lags:
            keys += [f"coherence/{m}" for m in self.lags]
            values.append(self._coherence(names, grads, stats))
        if function_step is not None:
            keys.append("function_step")
            values.append(function_step)
        if stats is not None:
            keys += [f"std/{name}" for name in names]
            values.append(stats.stds.float())
        device = values[0].device
        self._pending.append((tuple(keys), torch.cat([v.to(device) for v in values])))

    def _coherence(self, names: tuple[str, ...], grads: list[Tensor], stats: GANStats | None) -> Tensor:
        """cos(g_t, g_{t-m}) for every lag m (NaN where g_{t-m} is not held), then g_t saved."""
        device = stats.stds.device if stats is not None else (grads[0].device if grads else torch.device("cpu"))
        layout = (names, tuple(g.shape for g in grads))
        size = sum(g.numel() for g in grads)
        slots = self.lags[-1] + 1
        if self._ring_layout != layout:
            if self._ring is None or self._ring.shape[1] != size or self._ring.device != device:
                # Zeros, not empty: the slots not yet written are saved by state_dict() too, and a
                # checkpoint's contents must not depend on what the allocator left there.
                self._ring = torch.zeros(slots, size, device=device)
                self._ring_norms = torch.zeros(slots, device=device)
            self._ring_head = self._ring_filled = 0
            self._ring_layout = layout
        current = self._ring[self._ring_head]
        if grads:
            torch.cat([g.detach().reshape(-1).float() for g in grads], out=current)
        norm = torch.linalg.vector_norm(current)
        self._ring_norms[self._ring_head] = norm
        cosines = []
        for m in self.lags:
            if m > self._ring_filled:
                cosines.append(torch.full((), math.nan, device=device))
                continue
            slot = (self._ring_head - m) % slots
            cosines.append(torch.dot(current, self._ring[slot]) / (norm * self._ring_norms[slot]))
        self._ring_head = (self._ring_head + 1) % slots
        self._ring_filled = min(self._ring_filled + 1, slots - 1)
        return torch.stack(cosines)

    def _run_probe(self) -> Tensor:
        """The model's outputs on the probe batch, as float32 rows (one per example)."""
        model, probe = self._probe_model, self._probe
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                if isinstance(probe, dict):
                    output = model(**probe)
                elif isinstance(probe, tuple):
                    output = model(*probe)
                else:
                    output = model(probe)
        finally:
            for module, training in modes:
                module.training = training
        if not isinstance(output, Tensor):
            logits = output.get("logits") if hasattr(output, "get") else getattr(output, "logits", None)
            if isinstance(logits, Tensor):
                output = logits
            elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
                output = output[0]
            else:
                raise TypeError(f"the probe's output is a {type(output).__name__}: a tensor, a tuple starting with "
                                "one or an output with a 'logits' tensor is needed")
        output = output.detach().float()
        return output.reshape(output.shape[0], -1) if output.dim() > 0 else output.reshape(1, 1)

    def _function_step(self, step: int) -> Tensor:
        """RMS over the probe examples of ||f_t(x) - f_{t-N}(x)||, at every N-th step; else NaN."""
        if step % self.probe_every:
            return torch.full((1,), math.nan, device=self._probe_outputs.device)
        outputs = self._run_probe()
        if outputs.shape != self._probe_outputs.shape:
            raise ValueError(f"the probe's output changed shape from {tuple(self._probe_outputs.shape)} "
                             f"to {tuple(outputs.shape)}")
        distance = torch.linalg.vector_norm(outputs - self._probe_outputs) / math.sqrt(outputs.shape[0])
        self._probe_outputs = outputs
        return distance.reshape(1)

    def flush(self) -> list[dict[str, float]]:
        """Move every pending step to the host (one transfer) and return all rows so far."""
        if self._pending:
            values = torch.cat([v for _, v in self._pending]).cpu().tolist()
            start = 0
            for keys, _ in self._pending:
                row: dict[str, Any] = {"step": len(self.rows) + 1}
                row.update(zip(keys, values[start:start + len(keys)]))
                start += len(keys)
                if "nonfinite" in row:
                    row["nonfinite"] = bool(row["nonfinite"])
                self.rows.append(row)
            self._pending.clear()
        return self.rows

    def state_dict(self) -> dict[str, Any]:
        """What the recorder needs to continue exactly where it is, pending steps flushed first:
        the rows, the layer names, the count of recorded steps, the coherence ring (the last
        ``max(lags) + 1`` gradient copies, their norms and position) and the probe's last outputs.
        Only tensors, dicts, lists, numbers and strings, so it loads with
        ``torch.load(..., weights_only=True)``. The model, the optimizer and the probe batch are
        not in it: give it to a recorder built the same way, with :meth:`load_state_dict`."""
        self.flush()
        layout = self._ring_layout
        return {
            "lags": list(self.lags),
            "probe_every": self.probe_every if self._probe_model is not None else None,
            "rows": [dict(row) for row in self.rows],
            "names": None if self.names is None else list(self.names),
            "seen": sorted(self._seen),
            "recorded": self._recorded,
            "ring": self._ring,
            "ring_norms": self._ring_norms,
            "ring_head": self._ring_head,
            "ring_filled": self._ring_filled,
            "ring_layout": None if layout is None else {"names": list(layout[0]), "shapes": [list(s) for s in layout[1]]},
            "probe_outputs": self._probe_outputs,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Continue from :meth:`state_dict`: the next :meth:`record` gives the row the recorder
        that saved ``state`` would have given. Tensors are moved to ``device`` (None: left where
        they are), which must be the device of the gradients and of the probe's outputs.

        Raises:
            ValueError: if ``state`` comes from a recorder with other lags or another probe period.
        """
        probe_every = self.probe_every if self._probe_model is not None else None
        if list(state["lags"]) != list(self.lags) or state["probe_every"] != probe_every:
            raise ValueError(f"the state is from a recorder with lags {tuple(state['lags'])} and probe_every "
                             f"{state['probe_every']}, this one has lags {self.lags} and probe_every {probe_every}")

        def moved(tensor: Tensor | None) -> Tensor | None:
            return tensor if tensor is None or device is None else tensor.to(device)

        self.rows = [dict(row) for row in state["rows"]]
        self._pending.clear()
        self.names = None if state["names"] is None else list(state["names"])
        self._seen = set(state["seen"])
        self._recorded = state["recorded"]
        self._ring, self._ring_norms = moved(state["ring"]), moved(state["ring_norms"])
        self._ring_head, self._ring_filled = state["ring_head"], state["ring_filled"]
        layout = state["ring_layout"]
        self._ring_layout = None if layout is None else (
            tuple(layout["names"]), tuple(torch.Size(s) for s in layout["shapes"]))
        if self._probe_model is not None:
            self._probe_outputs = moved(state["probe_outputs"])

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


def _attachment(optimizer: Any) -> Any:
    """The Attachment of the GAN attached to ``optimizer``, or None."""
    try:
        return _attached.get(optimizer)
    except TypeError:  # not weak-referenceable: nothing can be attached to it
        return None


def _runs_gan(optimizer: Any) -> bool:
    """Whether ``optimizer``'s steps run GAN (and so produce stats): a GAN, a GANAdamW, an
    Attachment, or a torch optimizer GAN is attached to."""
    return hasattr(optimizer, "last_stats") or _attachment(optimizer) is not None


def _eligible_rule(optimizer: Any) -> Callable[[Tensor], bool]:
    """The optimizer's eligibility rule: its own ``eligible`` (GAN, GANAdamW, an Attachment), that
    of the GAN attached to it, or the default."""
    eligible = getattr(optimizer, "eligible", None)
    if callable(eligible):
        return eligible
    attachment = _attachment(optimizer)
    return attachment.eligible if attachment is not None else default_eligible
