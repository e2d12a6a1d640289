"""AdaFom (gan_kernels/adafom.py): its update against the equations evaluated by hand, its state,
its composition with GAN, its checkpoints, its argument checks, and that it trains."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gan_kernels import GAN, AdaFom, GANState, reference
from gan_kernels.optim import default_eligible

CONFIGS = {
    "plain": dict(lr=0.1, beta1=0.9, eps=1e-8, weight_decay=0.0, maximize=False),
    "no-momentum-decay": dict(lr=0.2, beta1=0.0, eps=1e-8, weight_decay=0.1, maximize=False),
    "everything": dict(lr=0.05, beta1=0.6, eps=1e-3, weight_decay=0.2, maximize=True),
}


def expected_trajectory(initial, grads, lr, beta1, eps, weight_decay, maximize):
    """The parameter after each step, element by element in Python floats: ``grads`` holds, per
    step, a flat list of the gradient's values or None (no gradient: nothing happens, ``t`` stays).
    ``v`` is recomputed at each step as the mean of the squares of every gradient seen so far."""
    p = list(initial)
    m = [0.0] * len(p)
    seen: list[list[float]] = []
    trajectory = []
    for g in grads:
        if g is not None:
            g = [-x for x in g] if maximize else list(g)
            seen.append(g)
            t = len(seen)
            for i in range(len(p)):
                m[i] = beta1 * m[i] + (1 - beta1) * g[i]
                v = sum(past[i] ** 2 for past in seen) / t
                p[i] = p[i] * (1 - lr * weight_decay)
                p[i] = p[i] - lr * m[i] / (math.sqrt(v) + eps)
        trajectory.append((list(p), len(seen)))
    return trajectory


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_steps_equal_the_equations_by_hand(config):
    generator = torch.Generator().manual_seed(0)
    steps = 5
    # name: (shape, dtype, steps without a gradient)
    layout = {"matrix64": ((2, 3), torch.float64, ()), "vector32": ((4,), torch.float32, ()),
              "column64": ((3, 1), torch.float64, (2,))}
    params, grads = {}, {}
    for name, (shape, dtype, missing) in layout.items():
        params[name] = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
        # Gradients of different sizes from step to step, so that a mean and an exponential
        # average of their squares part ways.
        grads[name] = [
            None if k in missing else (torch.randn(shape, generator=generator, dtype=torch.float64) * 2.0 ** ((-1) ** k * k)).to(dtype)
            for k in range(steps)
        ]
    expected = {
        name: expected_trajectory(params[name].flatten().tolist(), [None if g is None else g.flatten().tolist() for g in grads[name]], **config)
        for name in params
    }
    opt = AdaFom(params.values(), **config)
    for k in range(steps):
        for name, p in params.items():
            p.grad = None if grads[name][k] is None else grads[name][k].clone()
        opt.step()
        for name, p in params.items():
            want, t = expected[name][k]
            tol = 1e-12 if p.dtype == torch.float64 else 1e-6
            torch.testing.assert_close(p.flatten(), torch.tensor(want, dtype=p.dtype), rtol=tol, atol=tol, msg=f"{name}, step {k + 1}")
            assert opt.state[p]["step"].item() == t, f"{name}: t after step {k + 1}"
            if grads[name][k] is not None:
                assert torch.equal(p.grad, grads[name][k]), f"{name}: the step changed p.grad"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_holds_the_mean_of_all_squared_gradients(dtype):
    generator = torch.Generator().manual_seed(1)
    p = torch.zeros(2, 3, 4, 5, dtype=dtype).to(memory_format=torch.channels_last)
    opt = AdaFom([p], lr=1e-2, beta1=0.8)
    seen = []
    for k in range(7):
        g = torch.randn(p.shape, generator=generator, dtype=torch.float64) * (k + 1) ** 2
        seen.append(g)
        p.grad = g.to(dtype)
        opt.step()
    state = opt.state[p]
    assert set(state) == {"step", "exp_avg", "avg_sq"}
    step = state["step"]
    assert step.dtype == torch.float32 and step.device.type == "cpu" and step.ndim == 0 and step.item() == 7
    for name in ("exp_avg", "avg_sq"):
        assert state[name].dtype == dtype and state[name].shape == p.shape and state[name].stride() == p.stride(), name
    squares = torch.stack([g.to(dtype).double() ** 2 for g in seen])
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(state["avg_sq"].double(), squares.mean(0), rtol=tol, atol=0)


def make_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def batches(count, seed=1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=generator, dtype=dtype), torch.randn(8, 3, generator=generator, dtype=dtype))
            for _ in range(count)]


def backward(model, batch):
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss


def test_wrapped_by_gan_equals_reference_gan_then_adafom():
    ours = make_model()
    theirs, unwrapped = copy.deepcopy(ours), copy.deepcopy(ours)
    hyper = dict(lr=1e-2, beta1=0.7, weight_decay=0.05)
    opt = GAN(AdaFom(ours.parameters(), **hyper))
    plain = AdaFom(theirs.parameters(), **hyper)
    alone = AdaFom(unwrapped.parameters(), **hyper)
    state = GANState()
    for batch in batches(3):
        for model, o in ((ours, opt), (theirs, plain), (unwrapped, alone)):
            o.zero_grad()
            backward(model, batch)
        opt.step()
        eligible = [p.grad for p in theirs.parameters() if default_eligible(p)]
        assert len(eligible) == 2  # the two weights; the biases are left alone
        reference.gan_(eligible, state)
        plain.step()
        alone.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert opt.state[a]["step"].item() == plain.state[b]["step"].item() == 3
        torch.testing.assert_close(opt.state[a]["avg_sq"], plain.state[b]["avg_sq"], rtol=1e-10, atol=0)
    assert opt.gan_state.step.item() == state.step.item() == 3
    # GAN changed the trajectory: the comparison above is not that of two plain AdaFom runs.
    assert not torch.allclose(ours[0].weight, unwrapped[0].weight, rtol=1e-6, atol=0)


@pytest.mark.parametrize("wrapped", [False, True], ids=["AdaFom", "GAN(AdaFom)"])
def test_state_dict_round_trip_resumes_bit_for_bit(wrapped):
    def make(model, **hyper):
        opt = AdaFom(model.parameters(), **hyper)
        return GAN(opt) if wrapped else opt

    def train(model, opt, data):
        for batch in data:
            opt.zero_grad()
            backward(model, batch)
            opt.step()

    data = batches(4, dtype=torch.float32)
    model = make_model(dtype=torch.float32)
    opt = make(model, lr=3e-2, beta1=0.5, weight_decay=0.1, maximize=False)
    train(model, opt, data[:2])
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    resumed_model = make_model(seed=5, dtype=torch.float32)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = make(resumed_model)  # the default hyperparameters: the checkpoint restores the saved ones
    resumed.load_state_dict(checkpoint["opt"])
    train(model, opt, data[2:])
    train(resumed_model, resumed, data[2:])
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
        for key in ("step", "exp_avg", "avg_sq"):
            assert torch.equal(opt.state[a][key], resumed.state[b][key]), key
        assert resumed.state[b]["step"].dtype == torch.float32 and resumed.state[b]["step"].device.type == "cpu"
        assert resumed.state[b]["step"].item() == 4


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1e-3), "lr"),
        (dict(lr=torch.tensor([1e-3, 1e-3])), "lr"),
        (dict(beta1=1.0), "beta1"),
        (dict(beta1=-0.1), "beta1"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
    ids=["lr", "lr-tensor", "beta1-one", "beta1-negative", "eps", "weight_decay"],
)
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        AdaFom([torch.zeros(2, requires_grad=True)], **kwargs)


def test_defaults():
    opt = AdaFom([torch.zeros(2, requires_grad=True)])
    assert opt.defaults == dict(lr=1e-3, beta1=0.9, eps=1e-8, weight_decay=0.0, maximize=False)


def test_tensor_lr_steps_as_its_value():
    lr = torch.tensor(0.01)
    a, b = torch.ones(3, 2), torch.ones(3, 2)
    opt_a, opt_b = AdaFom([a], lr=lr), AdaFom([b], lr=lr.item())
    for k in range(2):
        a.grad = torch.full_like(a, 0.5 + k)
        b.grad = a.grad.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b) and not torch.equal(a, torch.ones(3, 2))


def test_sparse_gradients_raise():
    embedding = nn.Embedding(5, 3, sparse=True)
    opt = AdaFom(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_complex_parameters_raise():
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    opt = AdaFom([p])
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()


def test_a_refused_step_changes_nothing():
    """A bad parameter late in the list is found before any earlier parameter moves."""
    good = torch.ones(3, requires_grad=True)
    bad = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    opt = AdaFom([good, bad], lr=0.1)
    good.grad, bad.grad = torch.ones(3), torch.ones_like(bad)
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()
    assert torch.equal(good, torch.ones(3)) and not opt.state


def test_closure_runs_with_grad_enabled_and_its_loss_is_returned():
    model = make_model()
    opt = AdaFom(model.parameters(), lr=1e-2)
    batch = batches(1)[0]
    before = copy.deepcopy(model)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        return backward(model, batch)

    loss = opt.step(closure)
    assert calls == [True]
    assert torch.equal(loss, nn.functional.mse_loss(before(batch[0]), batch[1]))
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))


def test_maximize_steps_along_the_gradient():
    generator = torch.Generator().manual_seed(2)
    up, down = torch.ones(4, 3), torch.ones(4, 3)
    opt_up = AdaFom([up], lr=0.1, weight_decay=0.1, maximize=True)
    opt_down = AdaFom([down], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        g = torch.randn(4, 3, generator=generator)
        up.grad, down.grad = g.clone(), -g
        opt_up.step()
        opt_down.step()
        assert torch.equal(up.grad, g)  # the negated gradient is a copy
    assert torch.equal(up, down)


@pytest.mark.parametrize("wrapped", [False, True], ids=["AdaFom", "GAN(AdaFom)"])
def test_it_trains(wrapped):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8, generator=generator)
    y = x @ torch.randn(8, 2, generator=generator) + 0.01 * torch.randn(64, 2, generator=generator)
    weight = torch.zeros(8, 2, requires_grad=True)
    opt = AdaFom([weight], lr=0.05)
    opt = GAN(opt) if wrapped else opt

    def loss():
        return ((x @ weight - y) ** 2).mean()

    initial = loss().item()
    for _ in range(100):
        opt.zero_grad()
        loss().backward()
        opt.step()
    # Wrapped, each step removes the weight gradient's mean, which slows the descent here.
    assert loss().item() < (0.25 if wrapped else 0.01) * initial
