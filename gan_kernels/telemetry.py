"""Gradient-dynamics telemetry: what GAN measures each step, recorded for plots and logs.

:class:`GradientRecorder` is fed the :class:`~gan_kernels.GANStats` of every step. The per-layer
stds, the global std and alpha are already in the stats, so recording costs no pass over the
gradients; the values stay on the device until :meth:`GradientRecorder.flush`, which moves
everything pending to the host in one transfer (call it once an epoch, not every step).

When asked, it also records the *gradient coherence* of consecutive steps,
cos(g_t, g_{t-1}) over all eligible gradients taken as one vector — the quantity used to study
stale gradients. That costs one saved copy of the gradients and a dot product per step.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .state import GANStats


class GradientRecorder:
    """Records per-step gradient statistics.

    Args:
        names: one name per eligible tensor, in the order of ``GANStats.means`` (for a ``GAN``
            wrapper: the eligible parameters in parameter-group order). ``None`` names them
            ``layer0``, ``layer1``, ...
        coherence: also record cos(g_t, g_{t-1}); :meth:`record` then needs the gradients.

    After :meth:`flush`, ``rows`` holds one dict per step: ``step``, ``global_std``, ``alpha``,
    ``nonfinite``, ``coherence`` (NaN when not recorded, and at the first step) and
    ``std/<name>`` for every layer.
    """

    def __init__(self, names: Sequence[str] | None = None, coherence: bool = False) -> None:
        self.names = list(names) if names is not None else None
        self.coherence = coherence
        self.rows: list[dict[str, float]] = []
        self._pending: list[Tensor] = []
        self._previous: Tensor | None = None

    @torch.no_grad()
    def record(self, stats: GANStats, grads: Sequence[Tensor] | None = None) -> None:
        """Record one step. ``grads`` (the eligible gradients, any dtypes) are needed only for
        coherence; they are read, never modified. No host synchronisation."""
        if self.names is None:
            self.names = [f"layer{i}" for i in range(len(stats.stds))]
        if len(stats.stds) != len(self.names):
            raise ValueError(f"stats hold {len(stats.stds)} tensors but the recorder names {len(self.names)}")
        coherence = torch.full((), math.nan, device=stats.stds.device)
        if self.coherence:
            if grads is None:
                raise ValueError("coherence=True: pass the eligible gradients to record()")
            current = torch.cat([g.detach().reshape(-1).float() for g in grads])
            if self._previous is not None and self._previous.shape == current.shape:
                denominator = torch.linalg.vector_norm(current) * torch.linalg.vector_norm(self._previous)
                coherence = torch.dot(current, self._previous) / denominator
            self._previous = current
        scalars = torch.stack([
            stats.global_std.float(), stats.alpha.float(), stats.nonfinite.float(), coherence.float(),
        ])
        self._pending.append(torch.cat([scalars, stats.stds.float()]))

    def flush(self) -> list[dict[str, float]]:
        """Move every pending step to the host (one transfer) and return all rows so far."""
        if self._pending:
            values = torch.stack(self._pending).cpu().tolist()
            self._pending.clear()
            for row in values:
                global_std, alpha, nonfinite, coherence, *stds = row
                self.rows.append({
                    "step": len(self.rows) + 1,
                    "global_std": global_std,
                    "alpha": alpha,
                    "nonfinite": bool(nonfinite),
                    "coherence": coherence,
                    **{f"std/{name}": std for name, std in zip(self.names, stds)},
                })
        return self.rows

    def column(self, name: str) -> list[float]:
        """One recorded quantity over the steps, e.g. ``"alpha"`` or ``"std/conv1.weight"``."""
        return [row[name] for row in self.flush()]

    def write_csv(self, path: str | Path) -> None:
        rows = self.flush()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"])
            writer.writeheader()
            writer.writerows(rows)

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
