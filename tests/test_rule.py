import math

import pytest
import torch

from gan_kernels.rule import autoscale

NAN = torch.tensor(math.nan, dtype=torch.float64)


def scalar(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_first_step_sets_exponent_from_sigma():
    sigma = math.exp(-4.0)
    alpha, exponent = autoscale(scalar(sigma), NAN)
    assert exponent.item() == pytest.approx(0.25)
    # sigma ** (1 / -ln sigma) is 1/e at the first step whenever sigma < 1/e
    assert alpha.item() == pytest.approx(math.exp(-1.0), rel=1e-6)


def test_exponent_is_at_most_one():
    alpha, exponent = autoscale(scalar(0.5), NAN)
    assert exponent.item() == 1.0
    assert alpha.item() == pytest.approx(0.5)


def test_alpha_never_exceeds_one():
    alpha, exponent = autoscale(scalar(3.0), NAN)
    assert exponent.item() == 1.0
    assert alpha.item() == 1.0


def test_set_exponent_is_reused():
    exponent = torch.tensor(0.25, dtype=torch.float64)
    alpha, new_exponent = autoscale(scalar(1e-4), exponent)
    assert new_exponent.item() == 0.25
    assert alpha.item() == pytest.approx(1e-4**0.25, rel=1e-6)


@pytest.mark.parametrize("sigma", [0.0, math.inf, math.nan])
def test_unusable_sigma_gives_one_and_keeps_state(sigma):
    alpha, exponent = autoscale(scalar(sigma), NAN)
    assert alpha.item() == 1.0
    assert math.isnan(exponent.item())
    alpha, exponent = autoscale(scalar(sigma), torch.tensor(0.5, dtype=torch.float64))
    assert alpha.item() == 1.0
    assert exponent.item() == 0.5


def test_dtypes_follow_inputs():
    alpha, exponent = autoscale(scalar(0.1), NAN)
    assert alpha.dtype == torch.float32 and exponent.dtype == torch.float64
    alpha, _ = autoscale(torch.tensor(0.1, dtype=torch.float64), NAN)
    assert alpha.dtype == torch.float64
