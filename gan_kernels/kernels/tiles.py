"""How a program of the statistics, apply and AdamW-update kernels finds its tile in the layout's tables."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile_position(numels, first_tile, tile_tensor, BLOCK: tl.constexpr):
    """This program's tile: ``(t, start, n)`` — the group-local tensor it belongs to, its first
    element (64-bit) and the tensor's size."""
    tile = tl.program_id(0).to(tl.int64)
    t = tl.load(tile_tensor + tile)
    start = (tile - tl.load(first_tile + t)) * BLOCK
    n = tl.load(numels + t)
    return t, start, n


@triton.jit
def locate_tile(ptrs, numels, first_tile, tile_tensor, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """This program's tile: ``(t, start, n, base)`` — :func:`tile_position` and the tensor's data
    pointer, which the host guarantees 16-byte aligned."""
    t, start, n = tile_position(numels, first_tile, tile_tensor, BLOCK)
    base = tl.multiple_of(tl.load(ptrs + t).to(tl.pointer_type(DTYPE)), 16)
    return t, start, n, base
