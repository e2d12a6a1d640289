"""One GAN step on the Triton kernels: the host side that owns grids and meta-parameters.

Per step: one statistics launch per dtype group, one finalize launch, one apply launch per dtype
group (the two-pass form adds one statistics and one finalize launch). The number of launches does
not depend on the number of tensors, nothing is read back to the host, and with the plan cached
nothing is rebuilt, so a step can be captured in a CUDA graph.

Launching. Triton's own launch (``kernel[grid](...)``) binds and specialises every argument on
every call, which costs several microseconds per launch on the host: as much as the kernels of a
small model take on a GPU. Each launch site of a plan therefore launches through Triton once, keeps
the compiled kernel Triton chose, and from then on calls that compiled kernel's launcher directly,
as Triton itself does after its binding. This is exact because every argument that Triton
specialises on is fixed for the plan (tables, scratch, sizes), except the step's outputs and the
state, whose 16-byte alignment is checked at each step: any difference takes Triton's own path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import triton.language as tl
from torch import Tensor
from triton import knobs

from ..rule import Rule, advance
from ..state import GANState, GANStats
from . import apply, finalize, stats
from .layout import build_layout

STATS_FORMS = ("single_read", "two_pass")
TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
NUM_WARPS = 8  # 256 threads: a 16 KiB tile is 64 bytes, four 16-byte vectors, per thread
FINALIZE_CHUNK = 1024
FINALIZE_WARPS = 4

_launches = [0]


@contextlib.contextmanager
def count_launches() -> Iterator[list[int]]:
    """Count the kernel launches made inside the block: ``with count_launches() as n: ...; n[0]``."""
    start = _launches[0]
    counted = [0]
    try:
        yield counted
    finally:
        counted[0] = _launches[0] - start


def _launch(kernel, grid: int, *args, **meta):
    """Launch through Triton (binding, specialisation, compilation on a miss). Returns the compiled
    kernel on a GPU (None under the interpreter)."""
    _launches[0] += 1
    return kernel[(grid,)](*args, **meta)


class LaunchSite:
    """One launch in a plan: a kernel, its grid and meta-parameters, and, after its first launch on
    a GPU with every per-step pointer 16-byte aligned, the compiled kernel to launch directly."""

    __slots__ = ("kernel", "grid", "meta", "constexprs", "compiled")

    def __init__(self, kernel, grid: int, **meta) -> None:
        self.kernel = kernel
        self.grid = grid
        self.meta = meta
        # The launcher takes every parameter in order, the constexpr ones last in our kernels.
        self.constexprs = tuple(meta[name] for name in kernel.arg_names if name in meta)
        self.compiled = None

    def launch(self, args: tuple, stream: int | None) -> None:
        """Launch on ``args`` (every non-constexpr argument, in order). ``stream`` is the raw CUDA
        stream when the per-step pointers are all 16-byte aligned (the direct launch may be used),
        else None (Triton's own launch)."""
        compiled = self.compiled
        if compiled is None or stream is None:
            compiled = _launch(self.kernel, self.grid, *args, **self.meta)
            if stream is not None and compiled is not None:
                self.compiled = compiled
            return
        _launches[0] += 1
        grid = (self.grid, 1, 1)
        arguments = args + self.constexprs
        compiled.run(
            self.grid, 1, 1, stream, compiled.function, compiled.packed_metadata,
            compiled.launch_metadata(grid, stream, *arguments),
            knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *arguments,
        )


def is_direct(t: Tensor) -> bool:
    """Whether the kernels can read ``t`` in place: its elements fill one gap-free span of memory
    (any dense strides, e.g. channels_last) that starts 16-byte aligned."""
    if t.data_ptr() % 16:
        return False
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


class KernelPlan:
    """The Triton path's part of a step plan for one list of gradients: the staging buffers of the
    tensors the kernels cannot read in place, the layout's tables and scratch, and the launch
    sites. Holds no reference to the gradients themselves.

    Tensors the kernels cannot read in place (gaps between elements, or a data pointer not 16-byte
    aligned) are *staged*: copied into the plan's own contiguous buffer, transformed there and
    copied back.
    """

    def __init__(self, grads: list[Tensor], device: torch.device) -> None:
        self.device = device
        self.num_tensors = len(grads)
        self.staged = [i for i, g in enumerate(grads) if not is_direct(g)]
        self.buffers = [torch.empty(grads[i].shape, dtype=grads[i].dtype, device=device) for i in self.staged]
        work = list(grads)
        for i, buffer in zip(self.staged, self.buffers):
            work[i] = buffer
        self.layout = build_layout(work, device)
        self.groups = [g for g in self.layout.groups if g.num_tiles]
        self.group_tables = [(g.ptrs, g.numels, g.first_tile, g.tile_tensor, g.index) for g in self.groups]
        # Templates for the per-step outputs: new_empty skips parsing a dtype and a device.
        self.vector = torch.empty(0, dtype=torch.float32, device=device)
        self.flag = torch.empty(0, dtype=torch.bool, device=device)
        layout = self.layout
        self.stats_tails = [(layout.part_means, layout.part_m2, g.first_part) for g in self.groups]
        self.finalize_head = (layout.part_means, layout.part_m2, layout.first_part, layout.numels, layout.tile_elems,
                              layout.tensor_m2, layout.num_tensors, layout.total_elements)
        self.sites: dict[tuple, list] = {}

    def step(
        self, grads: list[Tensor], state: GANState, mode: str, rule: Rule | None = None, stats_form: str = "single_read"
    ) -> GANStats:
        """One GAN step in place on ``grads`` (the list this plan was built for), ``state`` on the
        plan's device, ``rule`` the alpha rule (None: the built-in one, fused in the finalize).
        ``stats_form``: ``"single_read"`` (one read for the statistics) or ``"two_pass"``."""
        if stats_form not in STATS_FORMS:
            raise ValueError(f"unknown stats_form {stats_form!r}; available: {', '.join(STATS_FORMS)}")
        if self.device.type == "cuda" and torch.cuda.current_device() != self.device.index:
            with torch.cuda.device(self.device):
                return self._step(grads, state, mode, rule, stats_form)
        return self._step(grads, state, mode, rule, stats_form)

    def _step(self, grads: list[Tensor], state: GANState, mode: str, rule: Rule | None, stats_form: str) -> GANStats:
        if self.staged:
            with torch.no_grad():
                torch._foreach_copy_(self.buffers, [grads[i] for i in self.staged])
        stats, stream = self.statistics(state, mode, stats_form, rule=rule)
        for tables, site in zip(self.group_tables, self._apply_sites(mode)):
            site.launch(tables + (stats.means, stats.stds, stats.alpha, stats.nonfinite), stream)
        if self.staged:
            with torch.no_grad():
                torch._foreach_copy_([grads[i] for i in self.staged], self.buffers)
        return stats

    def statistics(
        self,
        state: GANState,
        mode: str,
        stats_form: str = "single_read",
        param_steps: tuple[Tensor, int] | None = None,
        rule: Rule | None = None,
    ) -> tuple[GANStats, int | None]:
        """Launch the statistics and finalize kernels on the plan's tensors (staged ones already
        copied in): the step's stats, freshly allocated, and the stream for direct launches (see
        :meth:`_stream`). ``param_steps``: a table of pointers to float32 step counters and their
        number, which the finalize advances on a finite step (the fused optimizer's; only with the
        built-in rule). ``rule``: None for the built-in rule, fused in the finalize; another rule
        is evaluated after it with torch operations on the device, which also commit the state."""
        k, vector = self.num_tensors, self.vector
        means, stds, global_std, alpha = vector.new_empty(k), vector.new_empty(k), vector.new_empty(()), vector.new_empty(())
        nonfinite = self.flag.new_empty(())
        stream = self._stream(means, stds, global_std, alpha, nonfinite, state.exponent, state.step)
        layout = self.layout
        steps_table, num_params = param_steps if param_steps is not None else (layout.numels, 0)
        finalize_args = self.finalize_head + (means, stds, global_std, alpha, nonfinite, state.exponent, state.step,
                                              layout.arrivals, steps_table, num_params)
        builtin = rule is None
        if param_steps is not None and not builtin:
            raise ValueError("the finalize advances the parameters' steps only with the built-in rule")
        for stats_sites, finalize_site in self._phases(stats_form, mode, param_steps is not None, builtin):
            for tables, tail, site in zip(self.group_tables, self.stats_tails, stats_sites):
                site.launch(tables + (means,) + tail, stream)
            finalize_site.launch(finalize_args, stream)
        if not builtin:
            chosen = advance(rule, global_std, nonfinite, state)
            if mode == "gan":
                alpha.copy_(chosen)
        return GANStats(alpha, global_std, means, stds, nonfinite), stream

    def _stream(self, *tensors: Tensor) -> int | None:
        """The raw current CUDA stream when every per-step pointer is 16-byte aligned (direct
        launches allowed), else None."""
        if self.device.type != "cuda" or any(t.data_ptr() % 16 for t in tensors):
            return None
        return torch._C._cuda_getCurrentRawStream(self.device.index)

    def _phases(self, stats_form: str, mode: str, param_steps: bool, builtin_rule: bool) -> list:
        """The launch sites of the statistics: per phase, one statistics site per dtype group and
        the finalize site. Made on first use of each form, mode and kind of finalize."""
        key = ("stats", stats_form, mode, param_steps, builtin_rule)
        phases = self.sites.get(key)
        if phases is None:
            forms = [(stats.SINGLE_READ, finalize.CHAN)] if stats_form == "single_read" else [
                (stats.TILE_SUMS, finalize.MEANS_ONLY), (stats.DEVIATIONS, finalize.ABOUT_TENSOR_MEAN)]
            phases = self.sites[key] = [
                ([LaunchSite(stats.tile_stats_kernel, g.num_tiles, FORM=form.value, DTYPE=TRITON_DTYPES[g.dtype],
                             BLOCK=g.tile, num_warps=NUM_WARPS) for g in self.groups],
                 LaunchSite(finalize.finalize_kernel, self.layout.num_tensors, PHASE=phase.value, GAN_MODE=mode == "gan",
                            CHUNK=FINALIZE_CHUNK, PARAM_STEPS=param_steps, BUILTIN_RULE=builtin_rule,
                            num_warps=FINALIZE_WARPS))
                for form, phase in forms
            ]
        return phases

    def _apply_sites(self, mode: str) -> list[LaunchSite]:
        key = ("apply", mode)
        sites = self.sites.get(key)
        if sites is None:
            sites = self.sites[key] = [
                LaunchSite(apply.apply_kernel, g.num_tiles, MODE=apply.MODES[mode], DTYPE=TRITON_DTYPES[g.dtype],
                           BLOCK=g.tile, num_warps=NUM_WARPS) for g in self.groups]
        return sites
