"""What a training loop does, step after step, through GANAdamW (both of its paths, and a backend
switched between steps) and GAN(torch.optim.AdamW): the same gradient buffers refilled in place,
a scheduler moving float and tensor learning rates, the user changing betas and weight decay
between steps, groups that differ in every hyper-parameter and in dtype, a custom eligibility
and a custom rule, a non-finite step in the middle. Every run is compared by value after every
step with GAN(torch.optim.AdamW) and, for float32 parameters, with a float64 evaluation."""

import copy
import io

import pytest
import torch

from gan_kernels import GAN, GANAdamW
from gan_kernels.kernels import launch
from tests.helpers import OUTPUT_RTOL, bits
from tests.test_rule import counting_rule

# On a machine with CUDA these tests run on CUDA tensors: the GPU check runs them (pytest -m gpu).
pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's interpreter converts float32 to bfloat16 by truncation, compiled kernels round to
# nearest: on a CPU the fused path's bfloat16 parameters may drift by one ulp (2**-8) per step.
TRUNCATING = DEVICE == "cpu"
STEPS = 7
NONFINITE_STEP = 4
# Three groups: float32 with a float lr, float32 with a tensor lr and every flag set, bfloat16.
GROUPS = [
    ({"lr": 1e-2}, torch.float32, [(64, 40), (40,), (33, 7, 3), (24, 24)]),
    ({"lr": "tensor", "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1, "amsgrad": True, "maximize": True},
     torch.float32, [(50, 45), (45,), (9, 2)]),
    ({"lr": 5e-3, "betas": (0.85, 0.99), "eps": 1e-7, "weight_decay": 0.0}, torch.bfloat16, [(30, 20), (20,)]),
]


def not_the_small_matrix(p):
    """A custom eligibility: every gradient of more than one dimension but the 9x2 matrix, and
    the third group's bias."""
    return (p.ndim > 1 and p.shape != (9, 2)) or p.shape == (20,)


def build(kind, dtype_of=lambda dtype: dtype):
    """Parameters (equal in every run) in GROUPS' param groups, their gradient buffers (allocated
    once), and the optimizer ``kind`` over them."""
    generator = torch.Generator().manual_seed(0)
    groups, params = [], []
    for options, dtype, shapes in GROUPS:
        members = [torch.nn.Parameter((torch.randn(shape, generator=generator) * 0.1).to(DEVICE, dtype_of(dtype)))
                   for shape in shapes]
        for p in members:
            p.grad = torch.zeros_like(p)
        options = dict(options)
        if options["lr"] == "tensor":
            options["lr"] = torch.tensor(2e-3, device=DEVICE)
        groups.append({"params": members, **options})
        params += members
    return params, groups


def fill(params, step):
    """This step's gradients, written into the existing buffers: a new scale every step (so sigma
    and alpha move), an offset per tensor, and a NaN at NONFINITE_STEP. Values are those of each
    group's own dtype, so that the float64 run sees exactly the gradients the others see."""
    generator = torch.Generator().manual_seed(100 + step)
    dtypes = [dtype for _, dtype, shapes in GROUPS for _ in shapes]
    for i, (p, dtype) in enumerate(zip(params, dtypes)):
        g = torch.randn(p.shape, generator=generator) * 10.0 ** -(2 + step % 3) + 1e-3 * (i + 1)
        if step == NONFINITE_STEP and i == 0:
            g[1, 2] = float("nan")
        p.grad.copy_(g.to(dtype))


def schedule(optimizer, step):
    """A scheduler's move and the user's: lr halves each step (floats replaced, tensors filled in
    place), group 0's weight decay and group 2's betas change at step 3."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].mul_(0.5)
        else:
            group["lr"] *= 0.5
    if step == 3:
        optimizer.param_groups[0]["weight_decay"] = 0.05
        optimizer.param_groups[2]["betas"] = (0.7, 0.9)


def snapshot(params, optimizer):
    state = [bits(t) for p in params for t in optimizer.state[p].values()]
    gan = optimizer.gan_state
    return [bits(p.detach()) for p in params], state, (gan.exponent.clone(), gan.step.clone())


def assert_close(ours, theirs, extra=0.0):
    """Relative norm error per tensor within the tolerance of the parameters' dtype (plus ``extra``)."""
    for a, b in zip(ours, theirs):
        tolerance = OUTPUT_RTOL[a.dtype] + extra
        a, b = a.detach().double(), b.detach().double()
        assert not torch.isnan(a).any()
        assert (a - b).norm() <= tolerance * b.norm()


@pytest.mark.parametrize("custom", [False, True], ids=["default-eligible-and-rule", "custom-eligible-and-rule"])
def test_a_training_loop_on_refilled_buffers(custom):
    options = {"eligible": not_the_small_matrix, "rule": counting_rule} if custom else {}
    runs = {}
    for name, backend in (("fused", "triton"), ("fallback", "torch"), ("switched", "triton")):
        params, groups = build(name)
        runs[name] = (params, GANAdamW(groups, backend=backend, **options))
    params, groups = build("composed")
    # On CUDA torch's AdamW takes a tensor lr only when capturable (or fused).
    composed_options = {"capturable": True} if DEVICE == "cuda" else {}
    composed = GAN(torch.optim.AdamW(groups, **composed_options), **options)
    exact_params, exact_groups = build("exact", dtype_of=lambda dtype: torch.float64)
    exact = GAN(torch.optim.AdamW(exact_groups), backend="torch", **options)
    for group in exact.param_groups:  # the float64 run keeps a tensor lr in float64 too
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = group["lr"].double()
    float32 = [i for i, p in enumerate(params) if p.dtype == torch.float32]
    bfloat16 = [i for i, p in enumerate(params) if p.dtype == torch.bfloat16]

    for step in range(STEPS):
        runs["switched"][1].backend = ("triton", "torch")[step % 2]
        for ours, optimizer in [*runs.values(), (params, composed), (exact_params, exact)]:
            fill(ours, step)
        raw = [p.grad.clone() for p in runs["fused"][0]]
        if step == NONFINITE_STEP:
            for name, (ours, optimizer) in runs.items():
                before = snapshot(ours, optimizer)
                optimizer.step()
                assert optimizer.last_stats.nonfinite.item(), name
                after = snapshot(ours, optimizer)
                assert all(torch.equal(a, b) for a, b in zip(before[0] + before[1], after[0] + after[1])), name
                assert torch.equal(before[2][1], after[2][1]) and torch.equal(before[2][0], after[2][0]), name
            continue  # the composition would step on the NaN: GANAdamW's contract is that nothing changes
        for name, (ours, optimizer) in runs.items():
            with launch.count_launches() as launches:
                optimizer.step()
            # The fused path is statistics and update per dtype and one finalize; the fallback
            # launches no Triton kernel. A switched backend takes effect at once.
            expected = {"fused": 5, "fallback": 0, "switched": 5 if optimizer.backend == "triton" else 0}[name]
            assert launches[0] == expected, f"{name}, step {step}: {launches[0]} launches"
        composed.step()
        exact.step()
        drift = (step + 1) * 2.0**-8 if TRUNCATING else 0.0
        for name, (ours, optimizer) in runs.items():
            assert_close([ours[i] for i in float32], [params[i] for i in float32])
            assert_close([ours[i] for i in bfloat16], [params[i] for i in bfloat16], drift if name != "fallback" else 0.0)
            assert_close([ours[i] for i in float32], [exact_params[i] for i in float32])
            torch.testing.assert_close(optimizer.last_stats.alpha.double(), exact.last_stats.alpha.double(), rtol=1e-5, atol=0)
            assert torch.equal(optimizer.gan_state.step.cpu(), composed.gan_state.step.cpu()), name
            assert all(torch.equal(p.grad, g) for p, g in zip(ours, raw)), f"{name}: the raw gradient must stay in p.grad"
        for optimizer in [optimizer for _, optimizer in runs.values()] + [composed, exact]:
            schedule(optimizer, step)
    torch.testing.assert_close(runs["fused"][1].gan_state.exponent.cpu(), exact.gan_state.exponent.cpu(), rtol=1e-5, atol=0)


def saved_and_loaded(state_dict):
    """A state dict through torch.save and torch.load(weights_only=True), as a checkpoint goes."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_checkpoint_loaded_mid_run_takes_effect_at_the_next_step():
    """Loading a state dict replaces the state tensors under a cached layout: the next step must
    use the loaded moments, as a fresh optimizer loading the same checkpoint does. The checkpoint
    goes through torch.save and torch.load(weights_only=True)."""
    params, groups = build("fused")
    optimizer = GANAdamW(groups, backend="triton")
    for step in range(3):
        fill(params, step)
        optimizer.step()
    checkpoint = saved_and_loaded(optimizer.state_dict())
    fill(params, 3)
    optimizer.step()  # moves on past the checkpoint
    twin_params, twin_groups = build("twin")
    with torch.no_grad():
        for p, q in zip(params, twin_params):
            q.copy_(p)
    twin = GANAdamW(twin_groups, backend="triton")
    twin.load_state_dict(copy.deepcopy(checkpoint))
    optimizer.load_state_dict(copy.deepcopy(checkpoint))
    for step in (5, 6):
        fill(params, step)
        fill(twin_params, step)
        optimizer.step()
        twin.step()
        for a, b in zip(params, twin_params):
            assert torch.equal(a, b), step


def _replace_exp_avg(optimizer, params):
    optimizer.state[params[0]]["exp_avg"] = torch.zeros_like(params[0])


def _replace_state_dict(optimizer, params):
    state = optimizer.state[params[3]]
    optimizer.state[params[3]] = {**state, "exp_avg_sq": state["exp_avg_sq"] * 4}


def _update_a_state_dict(optimizer, params):
    state = optimizer.state[params[1]]
    state.update(exp_avg_sq=state["exp_avg_sq"] * 4)


def _swap_parameter_storage(optimizer, params):
    # The old storage is kept alive, so that a step on a stale layout writes there (and the test
    # sees the parameter unchanged) rather than into freed memory.
    _kept.append(params[0].data)
    params[0].data = params[0].data.clone()


_kept = []


def _reallocate_gradients(optimizer, params):
    for p in params:
        p.grad = p.grad.clone()


def _transpose_gradient_strides(optimizer, params):
    # The same memory, read transposed: only the strides tell the new layout from the old.
    square = next(p for p in params if p.shape == (24, 24))
    square.grad = square.grad.t()


def _add_param_group(optimizer, params):
    extra = torch.nn.Parameter(torch.full((12, 5), 0.3, device=DEVICE))
    # Not a constant gradient: its centered form would be rounding noise, which AdamW normalises.
    extra.grad = (torch.randn(extra.shape, generator=torch.Generator().manual_seed(7)) * 1e-2).to(DEVICE)
    optimizer.add_param_group({"params": [extra], "lr": 4e-3})
    params.append(extra)


def _append_a_parameter(optimizer, params):
    extra = torch.nn.Parameter(torch.full((6, 7), -0.2, device=DEVICE))
    extra.grad = (torch.randn(extra.shape, generator=torch.Generator().manual_seed(9)) * 1e-2).to(DEVICE)
    optimizer.param_groups[-1]["params"].append(extra)
    params.append(extra)


def _drop_a_gradient(optimizer, params):
    params[2].grad = None


def _give_a_gradient(optimizer, params):
    # Not a constant gradient: its centered form would be rounding noise, which AdamW normalises.
    params[2].grad = (torch.randn(params[2].shape, generator=torch.Generator().manual_seed(8)) * 1e-2).to(DEVICE)


def _transposed_square(params):
    """The 24x24 parameter, its gradient and (made from it) its state laid out transposed."""
    square = next(p for p in params if p.shape == (24, 24))
    square.data = square.data.t().contiguous().t()
    square.grad = torch.zeros_like(square)


CHANGES = {"a state tensor replaced": _replace_exp_avg, "a state dict replaced": _replace_state_dict,
           "a state dict updated": _update_a_state_dict, "a parameter's storage swapped": _swap_parameter_storage,
           "gradients reallocated": _reallocate_gradients, "a gradient's strides changed": _transpose_gradient_strides,
           "a transposed gradient's strides changed": _transpose_gradient_strides, "a param group added": _add_param_group,
           "a parameter appended to a group": _append_a_parameter,
           "a gradient dropped": _drop_a_gradient, "a gradient given": _give_a_gradient, "the eligibility flipped": None}
# What some changes start from, set before the first step: a parameter without a gradient, and
# a transposed (non-contiguous) layout.
SETUPS = {"a gradient given": _drop_a_gradient, "a transposed gradient's strides changed": lambda _, params: _transposed_square(params)}


@pytest.mark.parametrize("reloaded", [False, True], ids=["", "after-a-reload"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_between_steps_takes_effect_at_the_next_step(change, reloaded):
    """The steady state reuses the last step's layout only while nothing it depends on changed:
    each change here, made to GANAdamW and to GAN(AdamW) alike between two steps, must show in
    the very next step; also in a run whose state was reloaded from its own state dict after
    its first step (torch's ``load_state_dict`` puts the state in new containers)."""
    switch = {"flip": False}

    def eligible(p):
        return p.ndim > 1 and not (switch["flip"] and p.shape == (50, 45))

    runs = []
    for kind in ("fused", "composed"):
        params, groups = build(kind)
        groups = groups[:2]
        params = [p for group in groups for p in group["params"]]
        if change in SETUPS:
            SETUPS[change](None, params)
        if kind == "fused":
            optimizer = GANAdamW(groups, backend="triton", eligible=eligible)
        else:
            optimizer = GAN(torch.optim.AdamW(groups, **({"capturable": True} if DEVICE == "cuda" else {})), eligible=eligible)
        runs.append((params, optimizer))
    for step in range(4):
        for params, optimizer in runs:
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(step + p.numel())) * 1e-2)
            if step == 2:
                if CHANGES[change] is None:
                    switch["flip"] = True
                else:
                    CHANGES[change](optimizer, params)
        for params, optimizer in runs:
            optimizer.step()
            if reloaded and step == 0:
                optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        (ours, fused), (theirs, composed) = runs
        assert_close(ours, theirs)
        torch.testing.assert_close(fused.last_stats.global_std, composed.last_stats.global_std, rtol=1e-5, atol=0)


def test_amsgrad_turned_on_over_existing_state_raises_as_in_torch():
    """A parameter whose state was made without amsgrad has no max_exp_avg_sq: torch's AdamW
    raises KeyError when its group turns amsgrad on, and so does GANAdamW, on its steady layout
    too, before anything changes (its update would otherwise read a moment that is not there)."""
    for kind in ("fused", "torch"):
        params, groups = build(kind)
        groups = [dict(group, amsgrad=False) for group in groups[:1]]
        params = groups[0]["params"]
        optimizer = GANAdamW(groups, backend="triton") if kind == "fused" else torch.optim.AdamW(groups)
        for step in range(2):
            fill(params, step)
            optimizer.step()
        optimizer.param_groups[0]["amsgrad"] = True
        before = [bits(p.detach()) for p in params]
        with pytest.raises(KeyError, match="max_exp_avg_sq"):
            optimizer.step()
        assert all(torch.equal(bits(p.detach()), b) for p, b in zip(params, before))


def test_a_backend_switched_between_steps_takes_effect_in_gan_too():
    params, groups = build("wrapped")
    optimizer = GAN(torch.optim.SGD(groups[:1], lr=0.1), backend="triton")
    for step, backend in enumerate(("triton", "torch", "triton", "torch")):
        optimizer.backend = backend
        fill(params, step)
        with launch.count_launches() as launches:
            optimizer.step()
        assert launches[0] == (3 if backend == "triton" else 0), (step, backend)
