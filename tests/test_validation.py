"""docs/guarantees.md: bad input gets a clear error that names the problem, and nothing is modified."""

import importlib.util

import pytest
import torch

from gan_kernels import GANState, gan_, reference

ENTRY_POINTS = {
    "gan_": lambda grads, **kw: gan_(grads, **kw),
    "reference": lambda grads, **kw: reference.gan_(grads, **{k: v for k, v in kw.items() if k != "backend"}),
}


def bad_lists():
    base = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    return {
        "non-tensor": ([base.clone(), [1.0, 2.0]], TypeError, r"grads\[1\] is a list"),
        "integer": ([base.clone(), torch.ones(3, dtype=torch.int64)], TypeError, r"grads\[1\].*floating-point"),
        "complex": ([base.clone(), torch.ones(3, dtype=torch.complex64)], TypeError, r"grads\[1\]"),
        "sparse": ([base.clone(), torch.eye(3).to_sparse()], TypeError, r"grads\[1\].*sparse|grads\[1\].*layout"),
        "other device": ([base.clone(), torch.ones(3, device="meta")], ValueError, r"grads\[1\] is on meta"),
        "expanded": ([base.clone(), torch.ones(1).expand(4)], ValueError, r"grads\[1\].*expanded"),
        "aliased": ([base, base], ValueError, r"grads\[0\] and grads\[1\] overlap"),
        "overlapping views": ([base[0], base.view(-1)[1:3]], ValueError, r"grads\[0\] and grads\[1\] overlap"),
    }


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", bad_lists())
def test_bad_tensors_raise_naming_the_index_and_modify_nothing(entry, case):
    grads, error, message = bad_lists()[case]
    before = grads[0].clone()
    state = GANState()
    with pytest.raises(error, match=message):
        ENTRY_POINTS[entry](grads, state=state)
    assert torch.equal(grads[0], before)
    assert state.step.item() == 0


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_single_tensor_is_not_a_list(entry):
    g = torch.randn(4, 4)
    with pytest.raises(TypeError, match="not a single Tensor"):
        ENTRY_POINTS[entry](g)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_unknown_mode_lists_the_modes(entry):
    g = torch.randn(3, 3)
    before = g.clone()
    with pytest.raises(ValueError, match="unknown mode 'adam'; available modes: gan, center, gc, znorm"):
        ENTRY_POINTS[entry]([g], mode="adam")
    assert torch.equal(g, before)


def test_unknown_backend_lists_the_backends():
    g = torch.randn(3, 3)
    before = g.clone()
    with pytest.raises(ValueError, match="available backends: auto, torch, triton"):
        gan_([g], backend="cuda")
    assert torch.equal(g, before)


def test_triton_backend_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.randn(3, 3)
    before = g.clone()
    with pytest.raises(ValueError, match="cannot run here: .*not on cpu; available backends: 'torch', 'auto'"):
        gan_([g], backend="triton")
    assert torch.equal(g, before)
    with pytest.raises(ValueError, match="not on meta"):
        gan_([torch.ones(3, device="meta")], backend="triton")


def test_triton_backend_without_triton(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match="Triton is not installed"):
        gan_([torch.randn(3, 3)], backend="triton")
    stats = gan_([torch.randn(3, 3)], backend="auto")
    assert not stats.nonfinite


@pytest.mark.parametrize("capability,hip,reason", [
    ((6, 1), None, "compute capability 7.0 or newer .*acquire/release atomics.*is 6.1"),
    ((9, 4), "6.2", "NVIDIA GPUs, and this PyTorch is a ROCm build"),
    ((7, 0), None, None),
])
def test_the_gpu_is_checked_before_the_kernels_are_chosen(monkeypatch, capability, hip, reason):
    """A GPU the kernels do not support: ``auto`` takes the fallback, ``triton`` says why."""
    from types import SimpleNamespace

    from gan_kernels import plan as plans

    # The answer is cached per device: ask afresh, for these made-up GPUs only.
    monkeypatch.setattr(plans, "_gpu_unsupported", plans._gpu_unsupported.__wrapped__)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "a test GPU")
    monkeypatch.setattr(torch.version, "hip", hip)
    grad = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32)
    if reason is None:
        assert plans.uses_triton([grad], "auto") and plans.uses_triton([grad], "triton")
        return
    assert plans.uses_triton([grad], "auto") is False
    with pytest.raises(ValueError, match=reason):
        plans.uses_triton([grad], "triton")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_state_must_be_a_gan_state(entry):
    g = torch.randn(3, 3)
    with pytest.raises(TypeError, match="state must be a GANState"):
        ENTRY_POINTS[entry]([g], state={"exponent": 0.5})


def test_disjoint_views_of_one_buffer_are_distinct():
    """Disjoint slices of one buffer (a flat gradient bucket) are separate gradients."""
    bucket = torch.randn(100)
    grads = [bucket[:40].view(4, 10), bucket[40:].view(6, 10)]
    gan_(grads)
    assert abs(bucket[:40].mean().item()) < 1e-6 and abs(bucket[40:].mean().item()) < 1e-6
