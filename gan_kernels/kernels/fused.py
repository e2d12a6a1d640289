"""GAN fused into the AdamW update on the Triton kernels (:class:`gan_kernels.GANAdamW`).

Per step: the statistics and finalize launches of the eligible gradients, exactly as for ``gan_``
(the finalize also advances every parameter's step counter), then one update launch per parameter
dtype over every parameter with a gradient (:mod:`.update`). Each gradient is read twice, once for
the statistics and once in the update, and never written: 8 accesses per element in float32
against 10 for GAN followed by AdamW and 7 for AdamW alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..rule import Rule
from ..state import GANState, GANStats
from . import apply, update
from .launch import NUM_WARPS, TRITON_DTYPES, KernelPlan, LaunchSite, is_direct
from .layout import build_update_layout


def fusable(params: list[Tensor], grads: list[Tensor], states: list[dict]) -> bool:
    """Whether the update kernel can read and write these parameters in place: each parameter, its
    gradient and its state are dense, 16-byte aligned, of one float32/float16/bfloat16 dtype and
    with one set of strides (so that element i of one is element i of the others)."""
    for p, g, state in zip(params, grads, states):
        arrays = [p, g, state["exp_avg"], state["exp_avg_sq"]] + ([state["max_exp_avg_sq"]] if "max_exp_avg_sq" in state else [])
        if p.dtype not in TRITON_DTYPES or any(a.dtype != p.dtype or a.stride() != p.stride() or not is_direct(a) for a in arrays):
            return False
    return True


class AdamWPlan:
    """The fused optimizer's plan for one list of parameters: a :class:`KernelPlan` for the
    statistics of the eligible gradients, the update tables, the hyper-parameter table and the
    update's launch sites. Holds no reference to the parameters, gradients or state.

    Args:
        params, grads, states: the parameters with a gradient, their gradients and their AdamW
            state dicts (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` with amsgrad).
        eligible: for each parameter, its position among the eligible gradients, or -1.
        groups: for each parameter, the index of its parameter group.
        num_groups: the number of parameter groups.
    """

    def __init__(
        self, params: list[Tensor], grads: list[Tensor], states: list[dict], eligible: list[int], groups: list[int],
        num_groups: int, device: torch.device,
    ) -> None:
        self.device = device
        self.statistics = KernelPlan([g for g, slot in zip(grads, eligible) if slot >= 0], device)
        arrays = [[p, g, s["exp_avg"], s["exp_avg_sq"], s.get("max_exp_avg_sq"), s["step"]] for p, g, s in zip(params, grads, states)]
        self.layout = build_update_layout(arrays, eligible, groups, device)
        self.groups = [g for g in self.layout.groups if g.num_tiles]
        self.hyper = torch.zeros((num_groups, update.COLUMNS.value), dtype=torch.float64, device=device)
        self.hyper_values: tuple | None = None
        self.captured_buffers: list[Tensor] = []  # pinned sources of copies a captured graph replays
        self.sites: dict[str, list[LaunchSite]] = {}

    def step(
        self, state: GANState, mode: str, hyper: list[tuple], tensors: list[tuple[int, int, Tensor]],
        rule: Rule | None = None, steps: list[Tensor] | None = None,
    ) -> GANStats:
        """One fused step. ``hyper``: per parameter group (lr, beta1, beta2, eps, weight_decay,
        flags) as floats, 0 where the value is a tensor; ``tensors``: (group, column, tensor) for
        those, copied on the device at every step (so that a captured graph reads their current
        value). ``rule``: the alpha rule, None for the built-in one; with another rule, ``steps``
        are the parameters' step counters (in the plan's order), advanced here on a finite step
        once the rule has run (the built-in rule's finalize advances them itself)."""
        if self.device.type == "cuda" and torch.cuda.current_device() != self.device.index:
            with torch.cuda.device(self.device):
                return self._step(state, mode, hyper, tensors, rule, steps)
        return self._step(state, mode, hyper, tensors, rule, steps)

    def _step(self, state: GANState, mode: str, hyper: list[tuple], tensors: list[tuple[int, int, Tensor]],
              rule: Rule | None, steps: list[Tensor] | None) -> GANStats:
        self._set_hyper(tuple(hyper), tensors)
        if rule is None:
            stats, stream = self.statistics.statistics(state, mode, param_steps=(self.layout.steps, self.layout.num_params))
        else:
            stats, stream = self.statistics.statistics(state, mode, rule=rule)
            torch._foreach_add_(steps, (~stats.nonfinite).to(torch.float32))
        for group, site in zip(self.groups, self._sites(mode)):
            site.launch(group.tables + (self.hyper, stats.means, stats.stds, stats.alpha, stats.nonfinite), stream)
        return stats

    def _set_hyper(self, values: tuple, tensors: list[tuple[int, int, Tensor]]) -> None:
        """Refresh the device table when a float hyper-parameter changed (one non-blocking copy
        from pinned memory); copy tensor-valued ones every step."""
        if values != self.hyper_values:
            host = torch.tensor(values, dtype=torch.float64)
            if self.device.type == "cuda":
                host = host.pin_memory()
                if torch.cuda.is_current_stream_capturing():
                    self.captured_buffers.append(host)
            self.hyper.copy_(host, non_blocking=True)
            self.hyper_values = values
        for row, column, value in tensors:
            self.hyper[row, column].copy_(value, non_blocking=True)

    def _sites(self, mode: str) -> list[LaunchSite]:
        sites = self.sites.get(mode)
        if sites is None:
            sites = self.sites[mode] = [
                LaunchSite(update.adamw_update_kernel, g.num_tiles, MODE=apply.MODES[mode], DTYPE=TRITON_DTYPES[g.dtype],
                           BLOCK=g.tile, num_warps=NUM_WARPS)
                for g in self.groups
            ]
        return sites
