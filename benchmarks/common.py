"""What the benchmark runner and the pytest-benchmark suite share: the implementations, the
gradients, the warm-up, timing, the count of kernel launches per step, and the results files."""

from __future__ import annotations

import collections
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.shapes import SETS, non_eligible_shapes
import gan_kernels
from gan_kernels import GANState, gan_, reference, rule

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
IMPLEMENTATIONS = ("reference", "compiled", "foreach-eager", "torch", "triton")

Step = Callable[[list[torch.Tensor], GANState], object]


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one)."""
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    return models[0] if models else (platform.processor() or platform.machine())


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def available(implementation: str, device: str) -> bool:
    """The Triton kernels are benchmarked on CUDA only (on a CPU they run in an interpreter)."""
    return implementation != "triton" or (device == "cuda" and importlib.util.find_spec("triton") is not None)


def foreach_eager(grads: list[torch.Tensor], state: GANState) -> None:
    """The plain multi-tensor anchor: a mean per tensor, then ``torch._foreach_sub_``,
    ``torch._foreach_norm`` and ``torch._foreach_mul_`` over the list, in each tensor's own dtype
    (no float32 scratch, no non-finite handling): what a user would write with ``_foreach`` ops."""
    means = [g.mean() for g in grads]
    torch._foreach_sub_(grads, means)
    squares = torch.stack(torch._foreach_norm(grads)).float().square()
    count = sum(g.numel() for g in grads)
    sigma = torch.sqrt(squares.sum() / max(count - 1, 1))
    alpha, exponent = rule.autoscale(sigma, state.exponent)
    state.exponent.copy_(exponent)
    state.step.add_(1)
    torch._foreach_mul_(grads, alpha.to(grads[0].dtype))


def make_step(implementation: str) -> Step:
    """A fresh ``step(grads, state)`` for one implementation; ``compiled`` is ``torch.compile`` of
    the reference with dynamo's caches reset, so each gradient set compiles on its own."""
    if implementation == "reference":
        return reference.gan_
    if implementation == "compiled":
        torch._dynamo.reset()
        # The reference reads its non-finite flag on the host: dynamo reports that graph break.
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
        return torch.compile(reference.gan_)
    if implementation == "foreach-eager":
        return foreach_eager
    backend = implementation
    return lambda grads, state: gan_(grads, state, backend=backend)


def random_grads(shapes, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Random gradients with the given shapes: std 1e-2 around a mean of 1e-3."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=generator) * 1e-2 + 1e-3).to(dtype=dtype, device=device) for shape in shapes]


def make_grads(set_name: str, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Random gradients with the shapes of ``set_name``: std 1e-2 around a mean of 1e-3."""
    return random_grads(SETS[set_name](), dtype, device, seed)


def copy_step(copies: list[torch.Tensor], source: list[torch.Tensor]) -> None:
    """The bandwidth anchor: a plain multi-tensor copy of the gradients."""
    torch._foreach_copy_(copies, source)


# A few conv and linear weights: enough for every implementation's first-call costs, quick to compile.
WARM_UP_SHAPES = ((16, 3, 3, 3), (32, 16, 3, 3), (64, 64, 3, 3), (100, 64))
WARM_UP_CALLS = 3


def warm_up(device: str, dtype_names: list[str], implementations: list[str], calls: int = WARM_UP_CALLS) -> None:
    """Run every implementation and the copy ``calls`` times on a small set in each dtype, before
    anything is timed, so that the costs of a process's first calls (lazy imports, the allocator's
    growth, ``torch.compile``'s first compilation, Triton's JIT, the start of thread pools) land
    here and not in the first set measured. Each set is still warmed up again before it is timed."""
    for dtype_name in dtype_names:
        source = random_grads(WARM_UP_SHAPES, DTYPES[dtype_name], device)
        grads = [g.clone() for g in source]
        copies = [g.clone() for g in source]
        for name in implementations:
            step, state = make_step(name), GANState()
            for _ in range(calls):
                torch._foreach_copy_(grads, source)
                step(grads, state)
        for _ in range(calls):
            copy_step(copies, source)
    if device == "cuda":
        torch.cuda.synchronize()


def elements(set_name: str) -> int:
    return sum(math.prod(shape) for shape in SETS[set_name]())


class _CountOps(TorchDispatchMode):
    """Counts ATen operators that do work (views and allocations excluded)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.__name__.split(".")[0] not in ("empty", "empty_strided", "detach", "lift_fresh"):
            self.count += 1
        return func(*args, **(kwargs or {}))


def launches_per_step(step: Callable[[], object], device: str, implementation: str) -> int | None:
    """Kernels one step launches: CUDA kernel, memcpy and memset events on a GPU; ATen operators
    on a CPU, where ``compiled`` runs inductor's own C++ kernels and is not counted (None)."""
    if device == "cuda":
        from torch.profiler import DeviceType, ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        return sum(1 for event in prof.events() if event.device_type == DeviceType.CUDA)
    if implementation == "compiled":
        return None
    counter = _CountOps()
    with counter:
        step()
    return counter.count


def cpu_times(candidates: dict[str, Callable[[], object]], restore: Callable[[], object], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of ``repeats`` calls of each candidate, timed in turn within every round so that
    a drift in the machine's speed (memory bandwidth varies on shared hosts) affects all of them
    alike. ``restore`` runs, untimed, before each call; two warm-up rounds are dropped."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeats + 2):
        for name, fn in candidates.items():
            restore()
            start = time.perf_counter()
            fn()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    return times


def cpu_medians(candidates: dict[str, Callable[[], object]], restore: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median of each candidate's :func:`cpu_times`."""
    return {name: statistics.median(values) for name, values in cpu_times(candidates, restore, repeats).items()}


def cuda_times(fn: Callable[[], object], rep_ms: int = 100) -> list[float]:
    """Seconds of each of as many calls of ``fn`` as fit in about ``rep_ms`` milliseconds (at least
    one), by CUDA events after a warm-up (``triton.testing.do_bench``)."""
    from triton.testing import do_bench

    return [ms / 1e3 for ms in do_bench(fn, warmup=25, rep=rep_ms, return_mode="all")]


def cuda_median(fn: Callable[[], object], rep_ms: int = 100) -> float:
    """Median of :func:`cuda_times`."""
    return statistics.median(cuda_times(fn, rep_ms))


def cuda_graph(fn: Callable[[], object], warm_up_calls: int = 3) -> torch.cuda.CUDAGraph:
    """A CUDA graph that captured one call of ``fn``, after a few calls on a side stream (capture
    requires them: lazily allocated state, cuBLAS workspaces and Triton's JIT happen there)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warm_up_calls):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def cuda_graph_median(fn: Callable[[], object], warm_up_calls: int = 3, rep_ms: int = 100) -> float:
    """Median seconds of replaying :func:`cuda_graph` of ``fn``, timed as :func:`cuda_median` times a call."""
    return cuda_median(cuda_graph(fn, warm_up_calls).replay, rep_ms)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0 <= q <= 1) of ``values``, interpolated linearly between the order
    statistics as ``triton.testing`` does; one value is its own every quantile."""
    ordered = sorted(values)
    point = q * (len(ordered) - 1)
    lower, upper = math.floor(point), math.ceil(point)
    return ordered[lower] + (point - lower) * (ordered[upper] - ordered[lower])


@contextlib.contextmanager
def kernel_launches_stubbed() -> Iterator[None]:
    """Replace every Triton kernel launch by a no-op: what remains of a step is its host side.
    Every launch site of a plan goes through ``launch._launch`` until it has launched once for real
    (``gan_``'s statistics, finalize and apply, and GANAdamW's update alike), so none escapes."""
    from gan_kernels.kernels import launch

    with mock.patch.object(launch, "_launch", lambda *args, **kwargs: None):
        yield


def host_times(set_name: str, device: str, steps: int = 50, cold_steps: int = 20) -> dict:
    """Host microseconds of one ``gan_`` step on the Triton path with the kernel launches stubbed,
    median over ``steps``: ``steady`` (the same gradient buffers every step) and ``cold`` (new
    buffers every step, so the tables are rebuilt). The gradients are left uninitialised: no
    kernel reads them. On CPU tensors the Triton path needs ``TRITON_INTERPRET=1``."""
    shapes = SETS[set_name]()

    def fresh() -> list[torch.Tensor]:
        return [torch.empty(shape, device=device) for shape in shapes]

    def timed(grads: list[torch.Tensor], state: GANState) -> float:
        start = time.perf_counter()
        gan_(grads, state, backend="triton")
        return time.perf_counter() - start

    grads, state = fresh(), GANState(device=device)
    with kernel_launches_stubbed():
        for _ in range(5):
            timed(grads, state)
        steady = statistics.median(timed(grads, state) for _ in range(steps))
        # Keep recent lists alive so that no new list can reuse the addresses of a cached one.
        recent = collections.deque(maxlen=12)
        cold = []
        for _ in range(cold_steps):
            recent.append(fresh())
            cold.append(timed(recent[-1], state))
    return {"set": set_name, "tensors": len(shapes), "steady_us": steady * 1e6,
            "steady_us_per_tensor": steady * 1e6 / len(shapes), "cold_us": statistics.median(cold) * 1e6}


def optimizer_host_times(set_name: str, name: str, device: str, steps: int = 200, cold_steps: int = 20) -> dict:
    """Host microseconds of one step of the optimizer ``name`` (:data:`OPTIMIZERS`, GAN on the
    Triton path) over the parameters of ``set_name``: its weights (the gradient shapes) and the
    1-D parameters of :func:`benchmarks.shapes.non_eligible_shapes`, median over ``steps``,
    ``steady`` (the same gradient buffers every step) and ``cold`` (new gradient buffers every
    step). Each steady step alternates with a ``gan_`` step over the weights' gradients
    (``gan_steady_us``), so that ``steady_us / gan_steady_us`` is a ratio of one run, whatever
    else the machine does meanwhile. Triton launches are stubbed; torch's own AdamW
    (``gan+adamw-fused``) runs its real fused kernel, which on a CPU is part of what is timed.
    On CPU tensors needs ``TRITON_INTERPRET=1``."""
    from gan_kernels import GAN, GANAdamW

    weights = SETS[set_name]()
    shapes = weights + non_eligible_shapes(set_name)
    params = [torch.nn.Parameter(torch.zeros(shape, device=device)) for shape in shapes]

    def fresh_grads() -> list[torch.Tensor]:
        grads = [torch.zeros(shape, device=device) for shape in shapes]
        for p, g in zip(params, grads):
            p.grad = g
        return grads

    if name == "ganadamw":
        optimizer = GANAdamW(params, backend="triton")
    else:
        optimizer = GAN(torch.optim.AdamW(params, fused=True), backend="triton")

    def timed(step: Callable[[], object]) -> float:
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    eligible = fresh_grads()[: len(weights)]
    gan_state = GANState(device=device)

    def gan_step() -> None:
        gan_(eligible, gan_state, backend="triton")

    with kernel_launches_stubbed():
        for _ in range(5):
            timed(optimizer.step)
            timed(gan_step)
        pairs = [(timed(optimizer.step), timed(gan_step)) for _ in range(steps)]
        # Keep recent gradients alive so that no new buffer can reuse the address of a cached one.
        recent = collections.deque(maxlen=12)
        cold = []
        for _ in range(cold_steps):
            recent.append(fresh_grads())
            cold.append(timed(optimizer.step))
    ours, gans = zip(*pairs)
    return {"params": len(params), "steady_us": statistics.median(ours) * 1e6,
            "gan_steady_us": statistics.median(gans) * 1e6, "cold_us": statistics.median(cold) * 1e6}


def launched_step_us(set_name: str, steps: int = 200) -> float:
    """Wall microseconds per ``gan_`` step on CUDA with the kernels launched, the queue drained only
    at the end: the host side plus the launches, where that exceeds the GPU's own time."""
    grads, state = make_grads(set_name, torch.float32, "cuda"), GANState(device="cuda")
    for _ in range(10):
        gan_(grads, state, backend="triton")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        gan_(grads, state, backend="triton")
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e6


# The fused optimizer against AdamW: name -> (what it is, accesses per element in the memory model).
OPTIMIZERS = {
    "adamw-fused": ("torch.optim.AdamW(fused=True)", 7),
    "gan+adamw-fused": ("GAN(torch.optim.AdamW(fused=True))", 10),
    "ganadamw": ("gan_kernels.GANAdamW", 8),
}


def make_optimizer(name: str, params: list[torch.Tensor], capturable: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``name`` of :data:`OPTIMIZERS` at lr 1e-3; ``capturable``: the form that a CUDA
    graph can capture (torch's ``capturable=True``, and lr as a device tensor for every optimizer)."""
    lr = torch.tensor(1e-3, device=params[0].device) if capturable else 1e-3
    if name == "adamw-fused":
        return torch.optim.AdamW(params, lr=lr, fused=True, capturable=capturable)
    if name == "gan+adamw-fused":
        from gan_kernels import GAN

        return GAN(torch.optim.AdamW(params, lr=lr, fused=True, capturable=capturable))
    from gan_kernels import GANAdamW

    return GANAdamW(params, lr=lr)


def warm_up_optimizers(device: str, dtype_names: list[str], names: list[str], calls: int = WARM_UP_CALLS) -> None:
    """:func:`warm_up` for the optimizers: a few steps of each on a small set in each dtype."""
    for dtype_name in dtype_names:
        for name in names:
            params = [torch.nn.Parameter(g) for g in random_grads(WARM_UP_SHAPES, DTYPES[dtype_name], device)]
            for p in params:
                p.grad = torch.full_like(p, 1e-3)
            optimizer = make_optimizer(name, params)
            for _ in range(calls):
                optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()


def optimizer_rows(set_name: str, dtype_name: str, device: str, names: list[str], repeats: int) -> list[dict]:
    """One row per optimizer: the median time of a step on parameters with the shapes of
    ``set_name`` (every one eligible), its ratio to AdamW(fused=True) in the same run, the
    accesses per element of the memory model, and kernel launches (ATen operators on a CPU). On
    CUDA also the median replay of a CUDA graph that captured one step of the optimizer's
    capturable form (:func:`make_optimizer`), and its ratio to AdamW(fused=True)'s replay."""
    sources = make_grads(set_name, DTYPES[dtype_name], device)

    def build(name: str, capturable: bool = False) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
        params = [torch.nn.Parameter(torch.randn_like(g)) for g in sources]
        for p, g in zip(params, sources):
            p.grad = g.clone()
        optimizer = make_optimizer(name, params, capturable)
        optimizer.step()  # warm-up: state, compilation, plans
        return params, optimizer

    runs = {name: build(name) for name in names}

    def restore():
        for params, _ in runs.values():
            torch._foreach_copy_([p.grad for p in params], sources)

    candidates = {name: optimizer.step for name, (_, optimizer) in runs.items()}
    graph = {}
    if device == "cuda":
        seconds = {name: cuda_median(step) for name, step in candidates.items()}
        for name in names:
            params, optimizer = build(name, capturable=True)
            graph[name] = cuda_graph_median(optimizer.step)
            del params, optimizer
    else:
        seconds = cpu_medians(candidates, restore, repeats)
    launches = {name: launches_per_step(step, device, name) for name, step in candidates.items()}
    anchor, graph_anchor = seconds.get("adamw-fused"), graph.get("adamw-fused")
    return [{
        "set": set_name, "optimizer": name, "dtype": dtype_name, "device": device_name(device),
        "tensors": len(sources), "elements": elements(set_name), "median_ms": time_s * 1e3,
        "ratio_to_fused_adamw": time_s / anchor if anchor else None,
        "graph_replay_ms": graph[name] * 1e3 if name in graph else None,
        "graph_ratio_to_fused_adamw": graph[name] / graph_anchor if name in graph and graph_anchor else None,
        "model_accesses": OPTIMIZERS[name][1], "model_ratio": OPTIMIZERS[name][1] / OPTIMIZERS["adamw-fused"][1],
        "launches": launches[name],
    } for name, time_s in seconds.items()]


# -- results files ------------------------------------------------------------------------------


def _triton_version() -> str | None:
    if "triton" in sys.modules:
        return getattr(sys.modules["triton"], "__version__", None)
    for distribution in ("triton", "pytorch-triton"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def run_meta(device: str, arguments: list[str]) -> dict:
    """What a results file says about its run: the machine, the versions, when (ISO 8601, UTC) and
    the command-line arguments. ``cuda``, ``gpu`` and ``compute_capability`` are null off CUDA."""
    on_cuda = device == "cuda"
    capability = torch.cuda.get_device_capability() if on_cuda else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "arguments": list(arguments),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if on_cuda else None,
        "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda if on_cuda else None,
        "gan_kernels": gan_kernels.__version__,
    }


def write_results(path: Path, meta: dict, rows: list[dict]) -> None:
    """A results file: ``{"meta": ..., "rows": [...]}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def load_results(path: Path | str) -> tuple[dict, list[dict]]:
    """``(meta, rows)`` of a results file. Files written before the runner recorded its run are a
    bare list of rows: their meta is empty."""
    document = json.loads(Path(path).read_text())
    if isinstance(document, list):
        return {}, document
    if isinstance(document, dict) and isinstance(document.get("rows"), list):
        return document.get("meta") or {}, document["rows"]
    raise ValueError(f"{path}: not a benchmark results file (neither a list of rows nor meta and rows)")
