"""Shared test helpers: random gradient lists and the comparisons against float64 of docs/guarantees.md."""

from __future__ import annotations

import importlib.util
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
from torch import Tensor

from gan_kernels import GANState, GANStats, reference

# docs/guarantees.md: ||out - ref|| / ||ref|| against a float64 evaluation on the same inputs.
OUTPUT_RTOL = {
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
    torch.float64: 1e-12,
}
STATS_RTOL = 1e-5
EPS = {dtype: torch.finfo(dtype).eps for dtype in OUTPUT_RTOL}
REDUCED = (torch.float16, torch.bfloat16)
# Every implementation computes float16/bfloat16 gradients in float32: the statistics (mean,
# alpha, std) and (g - mean) * alpha carry float32 errors of a few ulps, then one rounding.
FLOAT32_ULPS = 32


def clone_all(tensors: list[Tensor]) -> list[Tensor]:
    """Clones that keep each tensor's strides (non-contiguous views stay non-contiguous)."""
    return [t.clone(memory_format=torch.preserve_format) for t in tensors]


def exact_evaluation(grads: list[Tensor], state: GANState | None = None, mode: str = "gan", rule=None):
    """The float64 evaluation of one step (docs/method.md) on the same inputs: (outputs, stats)."""
    wide = [g.detach().to(torch.float64, copy=True) for g in grads]
    state = GANState() if state is None else state
    stats = reference.gan_(wide, state, mode=mode, compute_dtype=torch.float64, rule=rule)
    return wide, stats


def arithmetic_eps(dtype: torch.dtype) -> float:
    """The epsilon of the dtype the arithmetic on ``dtype`` runs in (float32 for float16/bfloat16)."""
    return EPS[torch.float32 if dtype in REDUCED else dtype]


def offset_allowance(inputs: list[Tensor], i: int) -> float:
    """docs/guarantees.md: with a large common offset, an extra error of order eps * |mean| / std is
    inherent, eps being that of the arithmetic (float32 for float16/bfloat16 gradients)."""
    x = inputs[i].detach().to(torch.float64)
    if x.numel() < 2:
        return 0.0
    std = x.std().item()
    return 8 * arithmetic_eps(inputs[i].dtype) * abs(x.mean().item()) / std if std > 0 else 0.0


def truncate_to_bfloat16(x: Tensor) -> Tensor:
    """float32 -> bfloat16 by dropping the low 16 bits (round toward zero), as Triton's
    interpreter converts; compiled kernels round to nearest."""
    return (x.to(torch.float32).view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)


def round_into(x: Tensor, dtype: torch.dtype, rounding: str) -> Tensor:
    if rounding == "truncate" and dtype == torch.bfloat16:
        return truncate_to_bfloat16(x)
    return x.to(dtype)


def assert_rounded_once(out: Tensor, ref: Tensor, x: Tensor, rounding: str = "nearest") -> None:
    """float16/bfloat16: every element of ``out`` is the exact result ``ref`` (float64) rounded
    once into the dtype, up to float32 arithmetic: it must lie between the roundings of
    ``ref - slack`` and ``ref + slack``, where slack is ``FLOAT32_ULPS`` float32 ulps of the
    output and of the centering term. Where slack is far below half an ulp of the dtype (no large
    common offset) this is exactly ``ref`` rounded once for all but a sliver of elements; a second
    rounding, or a mean rounded into the dtype, moves elements by a whole ulp and fails.
    ``rounding``: ``"nearest"``, or ``"truncate"`` for bfloat16 converted by Triton's interpreter."""
    dtype = out.dtype
    x = x.detach().to(torch.float64).reshape(ref.shape)
    centered = (x - x.mean()).norm() if x.numel() > 1 else x.new_zeros(())
    # The factor of the mode (alpha, 1/std; at least 1, which covers the row means of mode "gc").
    scale = torch.clamp(ref.norm() / centered, min=1.0) if centered > 0 else x.new_ones(())
    slack = FLOAT32_ULPS * EPS[torch.float32] * (ref.abs() + scale * x.abs().mean())
    low, high = round_into(ref - slack, dtype, rounding), round_into(ref + slack, dtype, rounding)
    inside = (out >= low) & (out <= high)
    exact = (out == round_into(ref, dtype, rounding)).double().mean().item() if out.numel() else 1.0
    assert bool(inside.all()), (
        f"{int((~inside).sum())} of {out.numel()} {dtype} elements are not the exact result rounded "
        f"once ({exact:.4%} equal it); first at {int((~inside).flatten().nonzero()[0])}"
    )


def assert_outputs_close(
    outputs: list[Tensor], expected: list[Tensor], inputs: list[Tensor], rounding: str = "nearest"
) -> None:
    """Per tensor ||out - ref|| / ||ref|| within the dtype's tolerance (plus the offset allowance);
    float16/bfloat16 outputs must moreover be the exact result rounded once
    (:func:`assert_rounded_once`, with ``rounding`` for bfloat16)."""
    assert len(outputs) == len(expected)
    for i, (out, ref) in enumerate(zip(outputs, expected)):
        assert out.dtype == inputs[i].dtype and out.shape == ref.shape
        out64 = out.to(torch.float64)
        assert not torch.isnan(out64).any(), f"tensor {i}: NaN in output"
        error = (out64 - ref).norm().item()
        scale = ref.norm().item()
        tol = OUTPUT_RTOL[out.dtype] + offset_allowance(inputs, i)
        # Below the normal range a dtype has a fixed quantum (float16: 6e-8): no output is finer.
        info = torch.finfo(out.dtype)
        subnormal = 0.5 * info.smallest_normal * info.eps * out.numel() ** 0.5
        assert error <= tol * scale + subnormal, f"tensor {i}: relative error {error / max(scale, 1e-300):.3g} > {tol:.3g}"
        if out.dtype in REDUCED:
            assert_rounded_once(out, ref, inputs[i], rounding)


def assert_stats_close(stats: GANStats, expected: GANStats, inputs: list[Tensor]) -> None:
    """alpha and global_std within STATS_RTOL; means and stds within STATS_RTOL of each tensor's scale."""
    assert bool(stats.nonfinite) == bool(expected.nonfinite)
    for name in ("alpha", "global_std"):
        got, want = getattr(stats, name).double().item(), getattr(expected, name).double().item()
        assert abs(got - want) <= STATS_RTOL * abs(want), f"{name}: {got} vs {want}"
    assert stats.means.shape == stats.stds.shape == (len(inputs),)
    for i in range(len(inputs)):
        mean, std = expected.means[i].item(), expected.stds[i].item()
        scale = max(abs(mean), std)
        assert abs(stats.means[i].item() - mean) <= STATS_RTOL * scale, f"means[{i}]"
        assert abs(stats.stds[i].item() - std) <= STATS_RTOL * scale, f"stds[{i}]"


def random_grads(
    shapes: list[tuple[int, ...]],
    dtypes: list[torch.dtype],
    seed: int = 0,
    scale: float = 1.0,
    offset: float = 0.0,
) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset).to(dtype)
        for shape, dtype in zip(shapes, dtypes)
    ]


def bits(t: Tensor) -> Tensor:
    """The raw bit patterns of a floating tensor, so that -0.0 and NaN payloads compare exactly."""
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def refill(grads: list[Tensor], originals: list[Tensor], step: int) -> None:
    """New gradient values for step ``step``, written into the same buffers (so a cached layout is
    reused): the originals at a scale of 3**-step plus fresh noise of a step-dependent seed, so
    that sigma, and with it alpha, moves from step to step while each tensor keeps its offset."""
    generator = torch.Generator().manual_seed(1000 + step)
    factor = 3.0 ** -step
    for g, x in zip(grads, originals):
        x = x.to(torch.float64)
        spread = x.std().item() if x.numel() > 1 else 0.0
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device) * 0.5 * spread
        g.copy_(((x + noise) * factor).to(g.dtype))


def check_steps_against_exact(
    run, grads: list[Tensor], mode: str = "gan", steps: int = 1, rounding: str = "nearest", rule=None
) -> None:
    """Run ``steps`` steps of ``run(grads, state, mode) -> GANStats`` and of the float64 evaluation
    on the same inputs, and compare outputs, stats and state after each. Every step after the first
    writes different values into the same buffers (:func:`refill`): sigma moves, so alpha differs
    from the first step's and the stored exponent is exercised. ``rounding`` is how bfloat16
    outputs are expected to be rounded (see :func:`assert_rounded_once`); ``rule`` the alpha rule of
    the float64 evaluation (None: the built-in one)."""
    state = GANState(device=grads[0].device if grads else None)
    exact_state = GANState(device=state.device)
    originals = clone_all(grads)
    for step in range(steps):
        if step:
            refill(grads, originals, step)
        inputs = clone_all(grads)
        expected, expected_stats = exact_evaluation(grads, exact_state, mode, rule)
        stats = run(grads, state, mode)
        assert_stats_close(stats, expected_stats, inputs)
        assert_outputs_close(grads, expected, inputs, rounding)
        assert state.step.item() == exact_state.step.item()
        torch.testing.assert_close(state.exponent.cpu(), exact_state.exponent.cpu(), rtol=1e-6, atol=0, equal_nan=True)


def load_example(name: str):
    """Import ``examples/<name>.py`` by path (the examples folder is not a package)."""
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_digits(train, monkeypatch):
    """Make examples/train.py (the module ``train``) load only 96 training and 40 test digits: two
    steps an epoch at --batch-size 48 (64 by default)."""
    load_digits_images = train.data.load_digits_images

    def tiny(size, seed):
        images = load_digits_images(size, seed)
        images.train_x, images.train_y = images.train_x[:96], images.train_y[:96]
        images.test_x, images.test_y = images.test_x[:40], images.test_y[:40]
        return images

    monkeypatch.setattr(train.data, "load_digits_images", tiny)


def run_ranks(body: Callable[[int, str], dict], world: int, workdir: Path) -> list[dict]:
    """Run ``body(rank, workdir) -> dict`` in ``world`` spawned processes joined in one gloo
    process group (rendezvous through a file in ``workdir``, which the ranks share); return the
    dicts in rank order, failing with the traceback of any rank that raised. ``body`` must be a
    module-level function (it is pickled into the children)."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(body, world, str(workdir), results), nprocs=world, join=True)
        outputs = [results[r] for r in range(world)]
    for out in outputs:
        assert "error" not in out, out["error"]
    return outputs


def _rank_main(rank: int, body: Callable[[int, str], dict], world: int, workdir: str, results) -> None:
    import torch.distributed as dist

    try:
        # A collective that one rank skips fails the run within a minute instead of hanging it.
        dist.init_process_group(
            "gloo", init_method=f"file://{workdir}/init", rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        try:
            out = body(rank, workdir)
        finally:
            dist.destroy_process_group()
    except Exception:
        out = {"error": traceback.format_exc()}
    results[rank] = out
