"""Apply: ``g <- (g - mean_i) * alpha`` (or the center / ZNorm forms) in place, one launch per dtype
group, reading the means, stds, alpha and the non-finite flag from device memory.

Arithmetic is float32 and each element is rounded once into its tensor's dtype. When the flag is
set, no program writes anything. Full tiles load and store without a mask (16-byte vectors); only a
tensor's last tile is masked.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import locate_tile

GAN = tl.constexpr(0)
CENTER = tl.constexpr(1)
ZNORM = tl.constexpr(2)
# Mode "gc" (one mean per row) runs on the fallback; the kernels take the whole-tensor modes.
MODES = {"gan": GAN.value, "center": CENTER.value, "znorm": ZNORM.value}


@triton.jit
def transform(x, mean, alpha, std, MODE: tl.constexpr):
    if MODE == GAN:
        y = (x - mean) * alpha
    elif MODE == CENTER:
        y = x - mean
    else:
        y = (x - mean) / (std + 1e-12)
    return y


@triton.jit
def apply_kernel(
    ptrs,
    numels,
    first_tile,
    tile_tensor,
    index,
    means,
    stds,
    alpha,
    nonfinite,
    MODE: tl.constexpr,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if tl.load(nonfinite) == 0:
        t, start, n, base = locate_tile(ptrs, numels, first_tile, tile_tensor, DTYPE, BLOCK)
        slot = tl.load(index + t)
        mean = tl.load(means + slot)
        scale = tl.load(alpha)
        std = tl.load(stds + slot)
        offs = tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            block = tl.multiple_of(base + start, 16) + tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
            x = tl.load(block).to(tl.float32)
            tl.store(block, transform(x, mean, scale, std, MODE).to(DTYPE))
        else:
            inside = start + offs < n
            x = tl.load(base + start + offs, mask=inside, other=0.0).to(tl.float32)
            tl.store(base + start + offs, transform(x, mean, scale, std, MODE).to(DTYPE), mask=inside)
