"""Shared test helpers: random gradient lists and the SPEC §1.1 comparisons against float64."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

from gan_kernels import GANState, GANStats, reference

# SPEC §1.1: ||out - ref|| / ||ref|| against a float64 evaluation on the same inputs.
OUTPUT_RTOL = {
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
    torch.float64: 1e-12,
}
STATS_RTOL = 1e-5
EPS = {dtype: torch.finfo(dtype).eps for dtype in OUTPUT_RTOL}


def clone_all(tensors: list[Tensor]) -> list[Tensor]:
    """Clones that keep each tensor's strides (non-contiguous views stay non-contiguous)."""
    return [t.clone(memory_format=torch.preserve_format) for t in tensors]


def exact_evaluation(grads: list[Tensor], state: GANState | None = None, mode: str = "gan"):
    """The float64 evaluation of SPEC §1.1 on the same inputs: (outputs, stats)."""
    wide = [g.detach().to(torch.float64, copy=True) for g in grads]
    state = GANState() if state is None else state
    stats = reference.gan_(wide, state, mode=mode, compute_dtype=torch.float64)
    return wide, stats


def offset_allowance(inputs: list[Tensor], i: int) -> float:
    """SPEC §1.1: with a large common offset, an extra error of order eps * |mean| / std is inherent."""
    x = inputs[i].detach().to(torch.float64)
    if x.numel() < 2:
        return 0.0
    std = x.std().item()
    return 8 * EPS[inputs[i].dtype] * abs(x.mean().item()) / std if std > 0 else 0.0


def assert_outputs_close(outputs: list[Tensor], expected: list[Tensor], inputs: list[Tensor]) -> None:
    """Per tensor ||out - ref|| / ||ref|| within the dtype's tolerance (plus the offset allowance)."""
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


def check_steps_against_exact(run, grads: list[Tensor], mode: str = "gan", steps: int = 1) -> None:
    """Run ``steps`` steps of ``run(grads, state, mode) -> GANStats`` and of the float64 evaluation
    on the same inputs, and compare outputs, stats and state after each."""
    state, exact_state = GANState(), GANState()
    for _ in range(steps):
        inputs = clone_all(grads)
        expected, expected_stats = exact_evaluation(grads, exact_state, mode)
        stats = run(grads, state, mode)
        assert_stats_close(stats, expected_stats, inputs)
        assert_outputs_close(grads, expected, inputs)
        assert state.step.item() == exact_state.step.item()
        torch.testing.assert_close(state.exponent.cpu(), exact_state.exponent.cpu(), rtol=1e-6, atol=0, equal_nan=True)
        grads = clone_all(inputs)


def load_example(name: str):
    """Import ``examples/<name>.py`` by path (the examples folder is not a package)."""
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
