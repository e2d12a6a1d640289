"""The AdamW update with GAN applied on the fly: one launch per parameter dtype over every parameter
that has a gradient, reading g, p, m, v (and the running max of v with amsgrad) once and writing p,
m, v once.

Each program owns one tile of one parameter. An eligible parameter's gradient is transformed as it
is loaded — ``(g - mean) * alpha`` (mode ``gan``), ``g - mean`` (``center``) or
``(g - mean) / (std + 1e-12)`` (``znorm``) — from the statistics and finalize launches that ran
before; a parameter that is not eligible takes the plain AdamW update. The transformed gradient is
never stored: ``p.grad`` keeps the raw gradient. The update is torch's AdamW, in float32 (the
bias corrections in float64), each stored value rounded once into the parameter's dtype:

    g <- -g if maximize;  p <- p * (1 - lr * wd);  m <- m + (1 - beta1) * (g - m)
    v <- beta2 * v + (1 - beta2) * g * g;  vmax <- max(vmax, v) with amsgrad
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps)

``t`` is the parameter's step, already advanced by the finalize. On a non-finite step no program
writes anything. Full tiles are loaded and stored without a mask (16-byte vectors).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .apply import transform
from .tiles import tile_position

# Columns of the hyper-parameter table, one row per parameter group (float64), and the bits of its
# flags column.
LR = tl.constexpr(0)
BETA1 = tl.constexpr(1)
BETA2 = tl.constexpr(2)
EPS = tl.constexpr(3)
WEIGHT_DECAY = tl.constexpr(4)
FLAGS = tl.constexpr(5)
COLUMNS = tl.constexpr(6)
MAXIMIZE = tl.constexpr(1)
AMSGRAD = tl.constexpr(2)


@triton.jit
def _tile(table, t, start, DTYPE: tl.constexpr):
    """The address of this program's tile in tensor ``t`` of a pointer table: 16-byte aligned, as
    every data pointer is and every tile starts a multiple of the tile size into its tensor."""
    return tl.multiple_of(tl.load(table + t).to(tl.pointer_type(DTYPE)) + start, 16)


@triton.jit
def _load(at, inside, FULL: tl.constexpr):
    if FULL:
        x = tl.load(at)
    else:
        x = tl.load(at, mask=inside, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _store(at, x, inside, DTYPE: tl.constexpr, FULL: tl.constexpr):
    if FULL:
        tl.store(at, x.to(DTYPE))
    else:
        tl.store(at, x.to(DTYPE), mask=inside)


@triton.jit
def _update_tile(
    p_at, g_at, m_at, v_at, vmax_ptrs, t, start, offs, inside, slot, means, stds, alpha, flags,
    decay, keep1, beta2, keep2, step_size, correction, eps,
    MODE: tl.constexpr, DTYPE: tl.constexpr, FULL: tl.constexpr,
):
    g = _load(g_at + offs, inside, FULL)
    p = _load(p_at + offs, inside, FULL)
    m = _load(m_at + offs, inside, FULL)
    v = _load(v_at + offs, inside, FULL)
    if slot >= 0:
        g = transform(g, tl.load(means + slot), tl.load(alpha), tl.load(stds + slot), MODE)
    if flags & MAXIMIZE:
        g = -g
    p = p * decay
    m = m + keep1 * (g - m)
    v = v * beta2 + keep2 * g * g
    if flags & AMSGRAD:
        vmax_at = _tile(vmax_ptrs, t, start, DTYPE) + offs
        vmax = tl.maximum(_load(vmax_at, inside, FULL), v)
        _store(vmax_at, vmax, inside, DTYPE, FULL)
        denominator = tl.sqrt(vmax) / correction + eps
    else:
        denominator = tl.sqrt(v) / correction + eps
    p = p - step_size * m / denominator
    _store(p_at + offs, p, inside, DTYPE, FULL)
    _store(m_at + offs, m, inside, DTYPE, FULL)
    _store(v_at + offs, v, inside, DTYPE, FULL)


@triton.jit
def adamw_update_kernel(
    p_ptrs,
    g_ptrs,
    m_ptrs,
    v_ptrs,
    vmax_ptrs,
    step_ptrs,
    numels,
    first_tile,
    tile_tensor,
    eligible,
    group,
    hyper,
    means,
    stds,
    alpha,
    nonfinite,
    MODE: tl.constexpr,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if tl.load(nonfinite) == 0:
        t, start, n = tile_position(numels, first_tile, tile_tensor, BLOCK)
        row = hyper + tl.load(group + t) * COLUMNS
        lr = tl.load(row + LR)
        beta1 = tl.load(row + BETA1)
        beta2 = tl.load(row + BETA2)
        flags = tl.load(row + FLAGS).to(tl.int32)
        step = tl.load(tl.load(step_ptrs + t).to(tl.pointer_type(tl.float32))).to(tl.float64)
        step_size = (lr / (1.0 - tl.exp(step * tl.log(beta1)))).to(tl.float32)
        correction = tl.sqrt(1.0 - tl.exp(step * tl.log(beta2))).to(tl.float32)
        decay = (1.0 - lr * tl.load(row + WEIGHT_DECAY)).to(tl.float32)
        eps = tl.load(row + EPS).to(tl.float32)
        keep1 = (1.0 - beta1).to(tl.float32)
        keep2 = (1.0 - beta2).to(tl.float32)
        beta2 = beta2.to(tl.float32)
        slot = tl.load(eligible + t)
        p_at = _tile(p_ptrs, t, start, DTYPE)
        g_at = _tile(g_ptrs, t, start, DTYPE)
        m_at = _tile(m_ptrs, t, start, DTYPE)
        v_at = _tile(v_ptrs, t, start, DTYPE)
        offs = tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            block = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
            _update_tile(p_at, g_at, m_at, v_at, vmax_ptrs, t, start, block, offs < BLOCK, slot, means, stds,
                         alpha, flags, decay, keep1, beta2, keep2, step_size, correction, eps, MODE, DTYPE, True)
        else:
            _update_tile(p_at, g_at, m_at, v_at, vmax_ptrs, t, start, offs, start + offs < n, slot, means, stds,
                         alpha, flags, decay, keep1, beta2, keep2, step_size, correction, eps, MODE, DTYPE, False)
