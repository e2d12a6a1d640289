"""How a program of the statistics and apply kernels finds its tile in the layout's tables."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def locate_tile(ptrs, numels, first_tile, tile_tensor, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """This program's tile: ``(t, start, n, base)`` — the group-local tensor it belongs to, its
    first element (64-bit), the tensor's size and its data pointer, which the host guarantees
    16-byte aligned."""
    tile = tl.program_id(0).to(tl.int64)
    t = tl.load(tile_tensor + tile)
    start = (tile - tl.load(first_tile + t)) * BLOCK
    n = tl.load(numels + t)
    base = tl.multiple_of(tl.load(ptrs + t).to(tl.pointer_type(DTYPE)), 16)
    return t, start, n, base
