"""GANState (what persists between steps) and GANStats (what one step reports)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor


class GANStats(NamedTuple):
    """What one GAN step measured, as tensors on the gradients' device (no host sync).

    Attributes:
        alpha: 0-d, the factor that multiplied every gradient (1 in modes ``center``, ``gc`` and
            ``znorm``).
        global_std: 0-d, sigma: the global sample std of the centered gradients (every mode).
        means: shape (k,), each input tensor's mean (0 for a zero-size tensor).
        stds: shape (k,), each input tensor's sample std (0 for fewer than two elements).
        nonfinite: 0-d bool, True when a NaN/Inf was seen and nothing was modified.

    The floating fields are float32, or float64 when any input tensor is float64.
    """

    alpha: Tensor
    global_std: Tensor
    means: Tensor
    stds: Tensor
    nonfinite: Tensor


def _as_tensor(state_dict: dict[str, Any], key: str) -> Tensor:
    try:
        return torch.as_tensor(state_dict[key])
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"GANState.load_state_dict: {key!r} must be a number or a 0-d tensor, got {state_dict[key]!r}") from error


class GANState:
    """The state GAN keeps between steps, as device tensors so that a step never syncs.

    Attributes:
        exponent: 0-d float64, the autoscale exponent ``p``; NaN until the first finite step with a
            positive global std sets it (see :func:`gan_kernels.rule.autoscale`).
        step: 0-d int64, the number of steps that transformed the gradients (non-finite steps,
            which change nothing, are not counted).

    The tensors move to the gradients' device on first use and are then updated in place.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.exponent = torch.full((), math.nan, dtype=torch.float64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)

    @classmethod
    def wrap(cls, exponent: Tensor, step: Tensor) -> GANState:
        """A GANState over existing tensors (no copy): updates land in ``exponent`` and ``step``."""
        state = cls.__new__(cls)
        state.exponent, state.step = exponent, step
        return state

    @property
    def device(self) -> torch.device:
        return self.exponent.device

    def to_(self, device: torch.device) -> GANState:
        """Move the state's tensors to ``device`` (in place on this object) and return it."""
        if self.exponent.device != device:
            self.exponent = self.exponent.to(device)
            self.step = self.step.to(device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Return copies of ``exponent`` and ``step``."""
        return {"exponent": self.exponent.clone(), "step": self.step.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load ``exponent`` and ``step`` from :meth:`state_dict`'s output (tensors or numbers, on
        any device) by copying them into this state's own tensors, in place: a CUDA graph captured
        earlier, a compiled step or a :meth:`wrap` view sees the loaded values. Both are checked
        before either is written."""
        missing = {"exponent", "step"} - set(state_dict)
        if missing:
            raise KeyError(f"GANState.load_state_dict: missing keys {sorted(missing)}")
        exponent, step = (_as_tensor(state_dict, key) for key in ("exponent", "step"))
        if exponent.ndim != 0 or step.ndim != 0:
            raise ValueError("GANState.load_state_dict: 'exponent' and 'step' must be 0-d")
        if not exponent.is_floating_point() and exponent.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"GANState.load_state_dict: 'exponent' must be a number, got {exponent.dtype}")
        if step.is_floating_point() or step.is_complex() or step.dtype == torch.bool:
            raise TypeError(f"GANState.load_state_dict: 'step' must be an integer, got {step.dtype}")
        self.exponent.copy_(exponent)
        self.step.copy_(step)

    def __repr__(self) -> str:
        """Values for a state on the CPU; elsewhere only the device (reading a device tensor would
        synchronise with it)."""
        if self.exponent.device.type != "cpu" or self.step.device.type != "cpu":
            return f"GANState(device={self.device})"
        return f"GANState(exponent={self.exponent.item():.6g}, step={int(self.step.item())})"
