"""Statistics: per-tile partials of every tensor of one dtype group, in one launch.

Each program owns one tile (``layout.tile_elements`` elements of one tensor) and writes its partials
to its own slot, so the result never depends on scheduling (no floating-point atomics). Forms:

* ``SINGLE_READ``: the tile is loaded once; its mean and its M2 about that mean are computed in
  registers (two-pass within the tile) and the finalize combines tiles with Chan's formula. Memory:
  one read of every element.
* ``TILE_SUMS`` then ``DEVIATIONS``: the plain two-pass form. The first launch writes tile means,
  the finalize turns them into tensor means, and the second launch reads every element again for
  its squared deviation about its tensor's mean. Memory: two reads.

A full tile is loaded without a mask, with alignment and contiguity hints, so that it compiles to
16-byte vector loads; only a tensor's last tile is masked. The host guarantees the hints: every
data pointer is 16-byte aligned and every tile starts a multiple of the tile size into its tensor.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import locate_tile

SINGLE_READ = tl.constexpr(0)
TILE_SUMS = tl.constexpr(1)
DEVIATIONS = tl.constexpr(2)


@triton.jit
def tile_stats_kernel(
    ptrs,
    numels,
    first_tile,
    tile_tensor,
    index,
    tensor_means,
    part_means,
    part_m2,
    part_offset,
    FORM: tl.constexpr,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t, start, n, base = locate_tile(ptrs, numels, first_tile, tile_tensor, DTYPE, BLOCK)
    offs = tl.arange(0, BLOCK)
    count = tl.minimum(n - start, BLOCK).to(tl.float32)
    if start + BLOCK <= n:
        inside = offs < BLOCK
        block = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
        x = tl.load(tl.multiple_of(base + start, 16) + block).to(tl.float32)
    else:
        inside = start + offs < n
        x = tl.load(base + start + offs, mask=inside, other=0.0).to(tl.float32)
    slot = part_offset + tl.program_id(0).to(tl.int64)
    if FORM == TILE_SUMS:
        tl.store(part_means + slot, tl.sum(x, axis=0) / count)
    else:
        if FORM == SINGLE_READ:
            center = tl.sum(x, axis=0) / count
            tl.store(part_means + slot, center)
        else:
            center = tl.load(tensor_means + tl.load(index + t))
        deviation = tl.where(inside, x - center, 0.0)
        tl.store(part_m2 + slot, tl.sum(deviation * deviation, axis=0))
