"""GANAdamW (docs/api.md): the step of GAN(torch.optim.AdamW(...)) on every finite step, within the
dtype's tolerance, on the fused kernels (Triton's interpreter on a CPU, compiled on a GPU) and on
the fallback; nothing at all changes on a non-finite step; the raw gradient stays in p.grad;
checkpoints move both ways."""

import copy
import math

import pytest
import torch

from gan_kernels import GAN, GANAdamW, GANState
from gan_kernels.kernels import launch
from gan_kernels.kernels.layout import tile_elements, update_tile_elements
from tests.helpers import OUTPUT_RTOL, bits

# On a machine with CUDA these tests run on CUDA tensors: the GPU check runs them (pytest -m gpu).
pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"]
UPDATE_TILE = update_tile_elements(torch.float32)
STATS_TILE = tile_elements(torch.float32)
# Tile-edge sizes for the update (2048) and the statistics (4096), eligible (2-D) and not (1-D).
SHAPES = [(64, UPDATE_TILE // 64), (3, UPDATE_TILE // 3 + 1), (33, 124), (STATS_TILE + 1, 2), (7, 5), (UPDATE_TILE + 3,), (9,)]


def make_params(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(shape, generator=generator) * 0.1).to(DEVICE, dtype)) for shape in SHAPES]


def param_groups(params, groups):
    """One group, or two with their own hyper-parameters (as a decay / no-decay split would)."""
    if groups == 1:
        return [{"params": params}]
    return [{"params": params[:4]}, {"params": params[4:], "lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)}]


def set_grads(params, step, skip=()):
    """Gradients with their own scale per step (so that sigma and alpha move) and an offset."""
    generator = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=generator) * 10.0 ** -(2 + step % 3) + 1e-3
        p.grad = None if i in skip else g.to(DEVICE, p.dtype)


def pair(options, dtype=torch.float32, groups=1, backend="torch", mode="gan"):
    """The fused optimizer and the composition it must equal, on equal parameters."""
    ours, theirs = make_params(dtype), make_params(dtype)
    fused = GANAdamW(param_groups(ours, groups), mode=mode, backend=backend, **copy.deepcopy(options))
    composed = GAN(torch.optim.AdamW(param_groups(theirs, groups), **copy.deepcopy(options)), mode=mode)
    return (ours, fused), (theirs, composed)


def assert_close(ours, theirs, dtype, extra=0.0):
    """Relative norm error within the dtype's tolerance (docs/guarantees.md; plus ``extra``), per tensor."""
    for a, b in zip(ours, theirs):
        a, b = a.detach().double(), b.detach().double()
        assert not torch.isnan(a).any()
        assert (a - b).norm() <= (OUTPUT_RTOL[dtype] + extra) * b.norm() + 1e-30


def assert_states_close(fused, composed, ours, theirs, dtype):
    for p, q in zip(ours, theirs):
        a, b = fused.state[p], composed.state[q]
        assert set(a) == set(b)
        assert a["step"].item() == b["step"].item()
        assert_close([a[k] for k in a if k != "step"], [b[k] for k in a if k != "step"], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["gan", "center", "gc", "znorm"])
def test_equals_gan_then_adamw_in_every_mode(mode, backend):
    (ours, fused), (theirs, composed) = pair({"lr": 1e-2}, backend=backend, mode=mode)
    for step in range(4):
        set_grads(ours, step)
        set_grads(theirs, step)
        fused.step()
        composed.step()
        torch.testing.assert_close(fused.last_stats.alpha, composed.last_stats.alpha, rtol=1e-5, atol=0)
        assert_close(ours, theirs, torch.float32)
    assert_states_close(fused, composed, ours, theirs, torch.float32)
    assert torch.equal(fused.gan_state.step, composed.gan_state.step)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "options",
    [
        {"lr": 1e-2, "amsgrad": True},
        {"lr": 1e-2, "maximize": True},
        {"lr": 1e-2, "weight_decay": 0.0},
        {"lr": 3e-2, "weight_decay": 0.1, "betas": (0.8, 0.95), "eps": 1e-6, "amsgrad": True, "maximize": True},
    ],
    ids=["amsgrad", "maximize", "no-decay", "everything"],
)
def test_equals_gan_then_adamw_for_every_option(options, backend):
    (ours, fused), (theirs, composed) = pair(options, groups=2, backend=backend)
    for step in range(3):
        set_grads(ours, step, skip=(6,) if step else ())  # a parameter without a gradient, then with
        set_grads(theirs, step, skip=(6,) if step else ())
        fused.step()
        composed.step()
        assert_close(ours, theirs, torch.float32)
    assert_states_close(fused, composed, ours, theirs, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_parameters_keep_bfloat16_state(backend):
    (ours, fused), (theirs, composed) = pair({"lr": 1e-2}, dtype=torch.bfloat16, backend=backend)
    # Triton's interpreter converts float32 to bfloat16 by truncation (compiled kernels round to
    # nearest): every stored parameter may lose up to one bfloat16 ulp (2**-8 relative) per step,
    # always towards zero, so the kernels' drift grows by that much per step there.
    truncating = backend == "triton" and DEVICE == "cpu"
    for step in range(3):
        set_grads(ours, step)
        set_grads(theirs, step)
        fused.step()
        composed.step()
        assert_close(ours, theirs, torch.bfloat16, extra=(step + 1) * 2.0**-8 if truncating else 0.0)
    assert all(fused.state[p]["exp_avg"].dtype == torch.bfloat16 for p in ours)
    if not truncating:
        assert_states_close(fused, composed, ours, theirs, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_raw_gradient_stays_in_p_grad(backend):
    (ours, fused), _ = pair({"lr": 1e-2}, backend=backend)
    set_grads(ours, 0)
    raw = [p.grad.clone() for p in ours]
    fused.step()
    for p, g in zip(ours, raw):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nonfinite_step_changes_nothing(bad, backend):
    (ours, fused), _ = pair({"lr": 1e-2, "amsgrad": True}, backend=backend)
    set_grads(ours, 0)
    fused.step()
    set_grads(ours, 1)
    ours[2].grad[3, 5] = bad
    before = [bits(p.detach()) for p in ours]
    state = copy.deepcopy(fused.state_dict())
    fused.step()
    assert fused.last_stats.nonfinite.item()
    for p, b in zip(ours, before):
        assert torch.equal(bits(p.detach()), b)
    after = fused.state_dict()
    assert torch.equal(after["gan"]["exponent"], state["gan"]["exponent"]) and torch.equal(after["gan"]["step"], state["gan"]["step"])
    for key, value in state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(after["state"][key][name], tensor), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoints_move_both_ways_and_resume_bit_for_bit(backend):
    (ours, fused), (theirs, composed) = pair({"lr": 1e-2, "amsgrad": True}, groups=2, backend=backend)
    for step in range(2):
        for params, opt in ((ours, fused), (theirs, composed)):
            set_grads(params, step)
            opt.step()
    checkpoint = copy.deepcopy(fused.state_dict())
    # A copy of the optimizer with its parameters (as copy.deepcopy of a training setup makes)
    # goes on as the original does, GAN options and state included.
    copied_params, copied = copy.deepcopy((ours, fused))
    assert copied.mode == fused.mode and torch.equal(copied.gan_state.exponent, fused.gan_state.exponent)
    assert set(checkpoint) == {"state", "param_groups", "gan"}
    assert set(checkpoint["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}

    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    resumed = GANAdamW(param_groups(resumed_params, 2), backend=backend)
    resumed.load_state_dict(checkpoint)
    into_composed_params = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    into_composed = GAN(torch.optim.AdamW(param_groups(into_composed_params, 2)))
    into_composed.load_state_dict(copy.deepcopy(checkpoint))
    from_composed_params = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    from_composed = GANAdamW(param_groups(from_composed_params, 2), backend=backend)
    from_composed.load_state_dict(copy.deepcopy(composed.state_dict()))

    for step in range(2, 4):
        for params, opt in ((ours, fused), (resumed_params, resumed), (into_composed_params, into_composed),
                            (theirs, composed), (from_composed_params, from_composed), (copied_params, copied)):
            set_grads(params, step)
            opt.step()
    for a, b, c in zip(ours, resumed_params, copied_params):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(fused.gan_state.exponent, resumed.gan_state.exponent)
    assert_close(into_composed_params, ours, torch.float32)
    assert_close(from_composed_params, theirs, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_schedulers_tensor_lr_and_zero_grad(backend):
    (ours, fused), (theirs, composed) = pair({"lr": torch.tensor(1e-2, device=DEVICE)}, backend=backend)
    schedulers = [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) for opt in (fused, composed)]
    for step in range(3):
        for params, opt, scheduler in ((ours, fused, schedulers[0]), (theirs, composed, schedulers[1])):
            set_grads(params, step)
            opt.step()
            scheduler.step()
        assert_close(ours, theirs, torch.float32)
    assert float(fused.param_groups[0]["lr"]) == pytest.approx(1e-2 / 8)
    fused.zero_grad()
    assert all(p.grad is None for p in ours)


@pytest.mark.parametrize("backend,flags", [("torch", {}), ("triton", {}), ("triton", {"fused": True})],
                         ids=["torch", "triton", "triton-fused"])
def test_grad_scaler_unscales_before_the_step(backend, flags):
    (ours, fused), (theirs, composed) = pair({"lr": 1e-2, **flags}, backend=backend)
    scalers = [torch.amp.GradScaler(DEVICE, init_scale=2.0**10) for _ in range(2)]
    for step in range(2):
        for params, opt, scaler in ((ours, fused, scalers[0]), (theirs, composed, scalers[1])):
            opt.zero_grad()
            loss = sum((p * (i + 1)).square().sum() for i, p in enumerate(params)) * 1e-3 * (step + 1)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert_close(ours, theirs, torch.float32)
    torch.testing.assert_close(fused.last_stats.global_std, composed.last_stats.global_std, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float32, torch.bfloat16)])
def test_kernel_launches_do_not_depend_on_the_number_of_parameters(dtypes):
    counts = set()
    for count in (3, 40):
        params = [torch.nn.Parameter(torch.randn(6, 7, device=DEVICE, dtype=dtypes[i % len(dtypes)])) for i in range(count)]
        opt = GANAdamW(params, backend="triton")
        set_grads(params, 0)
        opt.step()  # builds the plan
        with launch.count_launches() as launches:
            opt.step()
        counts.add(launches[0])
    # Statistics and update per dtype, one finalize.
    assert counts == {2 * len(dtypes) + 1}


def test_bad_input():
    params = [torch.nn.Parameter(torch.randn(3, 3))]
    with pytest.raises(ValueError, match="unknown mode"):
        GANAdamW(params, mode="adam")
    with pytest.raises(ValueError, match="unknown backend"):
        GANAdamW(params, backend="cuda")
    with pytest.raises(ValueError, match="Invalid learning rate"):
        GANAdamW(params, lr=-1.0)
    with pytest.raises(TypeError, match="eligible must be a callable"):
        GANAdamW(params, eligible=3)
    embedding = torch.nn.Embedding(5, 3, sparse=True)
    opt = GANAdamW(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(embedding.weight, before) and opt.gan_state.step.item() == 0


# torch's AdamW arguments that GANAdamW takes differently: none (a new one must be listed here,
# with its meaning in GANAdamW, or accepted).
KNOWN_DIFFERENCES: dict[str, str] = {}


def test_every_torch_adamw_argument_is_accepted_with_its_default():
    import inspect

    ours = inspect.signature(GANAdamW).parameters
    for name, theirs in inspect.signature(torch.optim.AdamW).parameters.items():
        if name in KNOWN_DIFFERENCES:
            continue
        assert name in ours, f"torch.optim.AdamW's {name!r} is missing from GANAdamW"
        assert (ours[name].default, ours[name].kind) == (theirs.default, theirs.kind), name
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in ("mode", "eligible", "backend", "rule"))


@pytest.mark.parametrize(
    "flags,form",
    [({}, "kernels"), ({"fused": True}, "kernels"), ({"fused": False}, (False, None)),
     ({"foreach": True}, (False, True)), ({"foreach": False}, (False, False)), ({"fused": False, "foreach": True}, (False, True))],
    ids=["default", "fused", "not-fused", "foreach", "for-loop", "not-fused-foreach"],
)
def test_fused_and_foreach_choose_the_form_of_the_step(flags, form, monkeypatch):
    """``fused`` and ``foreach`` choose the kernels or torch's AdamW form after GAN on copies, with
    torch's meaning; every form equals GAN(AdamW(same flags)), and the flags travel in the groups."""
    import gan_kernels.optim

    calls = []
    torch_adamw = gan_kernels.optim.adamw
    monkeypatch.setattr(gan_kernels.optim, "adamw", lambda *a, **k: calls.append((k["fused"], k["foreach"])) or torch_adamw(*a, **k))
    (ours, fused), (theirs, composed) = pair({"lr": 1e-2, **flags}, backend="triton")
    for step in range(2):
        set_grads(ours, step)
        set_grads(theirs, step)
        fused.step()
        composed.step()
        assert_close(ours, theirs, torch.float32)
    assert calls == ([] if form == "kernels" else [form, form])
    torch_state = composed.state_dict()["param_groups"][0]
    assert all(fused.param_groups[0][k] == torch_state[k] for k in ("foreach", "fused", "capturable", "differentiable"))
    # torch keeps the step on the device for a fused or capturable AdamW, on the CPU otherwise;
    # GANAdamW's default is fused.
    device = torch.device(DEVICE) if form == "kernels" else torch.device("cpu")
    assert all(fused.state[p]["step"].device == device for p in ours)
    resumed = GANAdamW(make_params(), backend="triton")
    resumed.load_state_dict(copy.deepcopy(composed.state_dict()))  # a torch AdamW checkpoint brings its flags
    assert resumed.param_groups[0]["foreach"] == flags.get("foreach") and resumed.param_groups[0]["fused"] == flags.get("fused")
    assert all(s["step"].device == device for s in resumed.state.values())


def test_fused_true_raises_where_the_kernels_cannot_run_and_changes_nothing():
    """What the parameters alone rule out is refused at construction; what their gradients rule
    out (here strides other than the parameter's), at the step, before anything changes."""
    float64 = [torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64, device=DEVICE))]
    with pytest.raises(ValueError, match="fused=True.*cannot run its fused kernels.*float64"):
        GANAdamW(float64, fused=True, backend="triton")
    on_cpu = [torch.nn.Parameter(torch.randn(4, 5))]
    with pytest.raises(ValueError, match="fused=True.*backend='auto' runs the kernels on CUDA tensors.*not on cpu"):
        GANAdamW(on_cpu, fused=True)
    GANAdamW(float64 + on_cpu, fused=False)  # fused=False never needs the kernels
    params = [torch.nn.Parameter(torch.randn(4, 5, device=DEVICE))]
    opt = GANAdamW(params, fused=True, backend="triton")
    params[0].grad = torch.randn(5, 4, device=DEVICE).t()
    before = params[0].detach().clone()
    with pytest.raises(RuntimeError, match="fused=True.*cannot run its fused kernels.*strides"):
        opt.step()
    assert torch.equal(params[0], before) and opt.gan_state.step.item() == 0 and not opt.state[params[0]]["exp_avg"].any()


def test_torch_flags_that_contradict_gan_are_refused():
    params = [torch.nn.Parameter(torch.randn(3, 3))]
    with pytest.raises(ValueError, match="differentiable=True: GAN is autograd-free"):
        GANAdamW(params, differentiable=True)
    with pytest.raises(ValueError, match="fused=True contradicts backend='torch'"):
        GANAdamW(params, fused=True, backend="torch")
    with pytest.raises(ValueError, match="fused=True is not available in mode 'gc'"):
        GANAdamW(params, fused=True, mode="gc")
    with pytest.raises(ValueError, match="capturable=True needs a fused step"):
        GANAdamW(params, capturable=True, foreach=True)
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):  # torch's own
        GANAdamW(params, fused=True, foreach=True)
    opt = GANAdamW(params, fused=True, capturable=True, backend="triton")
    assert opt.defaults["fused"] and opt.defaults["capturable"]
    assert not opt._step_supports_amp_scaling  # a GradScaler unscales before GAN sees the gradients
