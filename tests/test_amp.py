"""Mixed precision: GAN under autocast with torch.amp.GradScaler, and low-precision gradients with
float32 master weights. CPU here; the CUDA versions run where a GPU exists."""

import copy

import pytest
import torch
from torch import nn

from gan_kernels import GAN, GANState, gan_
from tests.helpers import assert_outputs_close, exact_evaluation

# On a machine with CUDA these tests run on CUDA tensors: the GPU check runs them (pytest -m gpu).
pytestmark = pytest.mark.gpu
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_model(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32, bias=False), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4)).to(device)


def batches(device, count=4):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=generator).to(device), torch.randint(0, 4, (8,), generator=generator).to(device)) for _ in range(count)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_grad_scaler_under_autocast_feeds_gan_unscaled_gradients(device, amp_dtype):
    scaled_model, plain_model = make_model(device), make_model(device)
    scaled = GAN(torch.optim.AdamW(scaled_model.parameters(), lr=1e-2))
    plain = GAN(torch.optim.AdamW(plain_model.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    for x, y in batches(device):
        for model, opt in ((scaled_model, scaled), (plain_model, plain)):
            opt.zero_grad()
            with torch.autocast(device, dtype=amp_dtype):
                loss = nn.functional.cross_entropy(model(x), y)
            if opt is scaled:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        torch.testing.assert_close(scaled.last_stats.global_std, plain.last_stats.global_std, rtol=1e-5, atol=0)
    for a, b in zip(scaled_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert scaled.gan_state.step.item() == 4


@pytest.mark.parametrize("device", DEVICES)
def test_a_step_the_scaler_skips_leaves_gan_alone(device):
    model = make_model(device)
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    x, y = batches(device, 1)[0]
    with torch.autocast(device, dtype=torch.float16):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss * float("inf")).backward()
    params = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert opt.last_stats is None and opt.gan_state.step.item() == 0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_gradients_with_float32_master_weights(device, low):
    """The model computes in low precision; AdamW steps float32 masters. GAN can act on the
    low-precision gradients themselves (gan_) or on the masters' float32 copies (GAN)."""
    model = make_model(device).to(low)
    masters = [p.detach().float().requires_grad_() for p in model.parameters()]
    opt = GAN(torch.optim.AdamW(masters, lr=1e-2))
    reference_state = GANState()
    for x, y in batches(device):
        model.zero_grad()
        nn.functional.cross_entropy(model(x.to(low)).float(), y).backward()
        for master, p in zip(masters, model.parameters()):
            master.grad = p.grad.float()
        eligible = [m.grad.clone() for m in masters if m.ndim > 1]
        expected, expected_stats = exact_evaluation(eligible, reference_state)
        opt.step()
        assert_outputs_close([m.grad for m in masters if m.ndim > 1], expected, eligible)
        with torch.no_grad():
            for master, p in zip(masters, model.parameters()):
                p.copy_(master)
    assert opt.gan_state.step.item() == 4

    low_grads = [p.grad.clone() for p in model.parameters() if p.ndim > 1]
    expected, _ = exact_evaluation(low_grads)
    transformed = copy.deepcopy(low_grads)
    gan_(transformed)
    assert all(g.dtype == low for g in transformed)
    assert_outputs_close(transformed, expected, low_grads)
