"""The tables the kernels read, built once per gradient layout and cached.

A *layout* is what the kernels need to know about a list of gradients: each tensor's data pointer,
size and dtype. From it this module builds, on the host and in one go, these int64 tables (the
cached metadata of docs/performance.md):

per dtype group (one statistics and one apply launch each)
    ``ptrs[j]``         data pointer of the group's j-th tensor
    ``numels[j]``       its number of elements
    ``first_tile[j]``   its first tile, in the group's tile numbering
    ``index[j]``        its position in the whole list (where its mean and std are written)
    ``tile_tensor[t]``  the group-local tensor that tile t belongs to

for the whole list (the finalize launch)
    ``numels[i]``, ``tile_elems[i]`` (the tile size of tensor i's dtype) and ``first_part[i]``, where
    tensor i's tile partials start in the partials buffer shared by all groups.

Everything is packed in one host buffer (pinned when the target is a GPU) and sent with a single
non-blocking copy, so a rebuild never synchronises. A layout is built once per step plan
(:mod:`gan_kernels.plan`), so a training loop that keeps its gradient buffers rebuilds nothing,
which is also what lets a step be captured in a CUDA graph.

Tiles hold ``TILE_BYTES`` bytes: 4096 float32 or 8192 float16/bfloat16 elements. On an H100 that
is 16 KiB in flight per program, four 16-byte vector loads per thread at 8 warps, and for GPT-2
small about 30k tiles, enough to fill 132 SMs many times over while keeping the partials that the
finalize combines small. Offsets are 64-bit throughout, so a tensor past 2**31 elements works.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..validation import group_by_dtype

TILE_BYTES = 16384


def tile_elements(dtype: torch.dtype) -> int:
    return TILE_BYTES // dtype.itemsize


@dataclass(frozen=True)
class GroupTables:
    """The tables of one dtype group, as slices of the layout's device buffer."""

    dtype: torch.dtype
    tile: int
    num_tiles: int
    first_part: int
    ptrs: Tensor
    numels: Tensor
    first_tile: Tensor
    index: Tensor
    tile_tensor: Tensor


@dataclass(frozen=True)
class Layout:
    """Device tables for one list of gradients, plus the scratch its steps reuse: the tile
    partials, the per-tensor M2 and the finalize's arrival counter (zero between steps)."""

    groups: tuple[GroupTables, ...]
    numels: Tensor
    tile_elems: Tensor
    first_part: Tensor
    num_tensors: int
    total_elements: int
    part_means: Tensor
    part_m2: Tensor
    tensor_m2: Tensor
    arrivals: Tensor
    host_buffer: Tensor


def send(pieces: list[Tensor], device: torch.device) -> tuple[Tensor, Iterator[Tensor]]:
    """Pack int64 host tables into one buffer (pinned for a GPU), send it with one non-blocking
    copy, and return the host buffer (keep it alive with the tables) and the device tables in
    order."""
    host = torch.cat(pieces)
    if device.type == "cuda":
        host = host.pin_memory()
    table = host.to(device, non_blocking=True)
    return host, iter(table.split([len(p) for p in pieces]))


def build_layout(tensors: list[Tensor], device: torch.device) -> Layout:
    """The :class:`Layout` of ``tensors`` (dense, 16-byte aligned, on ``device``): tables filled on
    the host in one go and sent with one non-blocking copy (never a host synchronisation)."""
    groups = group_by_dtype(tensors)
    numels = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    tile_elems = torch.tensor([tile_elements(t.dtype) for t in tensors], dtype=torch.int64)
    tiles = (numels + tile_elems - 1) // tile_elems
    first_part = torch.zeros_like(numels)
    pieces = [numels, tile_elems, first_part]
    group_meta = []
    part = 0
    for dtype, indices in groups.items():
        index = torch.tensor(indices, dtype=torch.int64)
        group_tiles = tiles[index]
        first_tile = torch.cumsum(group_tiles, 0) - group_tiles
        first_part[index] = first_tile + part
        num_tiles = int(group_tiles.sum())
        tile_tensor = torch.repeat_interleave(torch.arange(len(indices)), group_tiles)
        ptrs = torch.tensor([tensors[i].data_ptr() for i in indices], dtype=torch.int64)
        group_pieces = [ptrs, numels[index], first_tile, index, tile_tensor]
        group_meta.append((dtype, tile_elements(dtype), num_tiles, part, group_pieces))
        pieces += group_pieces
        part += num_tiles

    host, views = send(pieces, device)
    numels_d, tile_elems_d, first_part_d = next(views), next(views), next(views)
    group_tables = tuple(
        GroupTables(dtype, tile, num_tiles, first, *(next(views) for _ in group_pieces))
        for dtype, tile, num_tiles, first, group_pieces in group_meta
    )
    return Layout(
        groups=group_tables,
        numels=numels_d,
        tile_elems=tile_elems_d,
        first_part=first_part_d,
        num_tensors=len(tensors),
        total_elements=int(numels.sum()),
        part_means=torch.empty(max(part, 1), dtype=torch.float32, device=device),
        part_m2=torch.empty(max(part, 1), dtype=torch.float32, device=device),
        tensor_m2=torch.empty(len(tensors), dtype=torch.float32, device=device),
        arrivals=torch.zeros(1, dtype=torch.int32, device=device),
        host_buffer=host,
    )


# The update holds five arrays per element in registers (g, p, m, v and, with amsgrad, the max of
# v), all in float32 whatever their dtype: 2048 elements per tile, 8 per thread at 8 warps, which
# is two 16-byte vectors per array in float32 and one in float16/bfloat16.
UPDATE_TILE_ELEMENTS = 2048


def update_tile_elements(dtype: torch.dtype) -> int:
    return UPDATE_TILE_ELEMENTS


@dataclass(frozen=True)
class UpdateGroup:
    """The update tables of the parameters of one dtype, as slices of one device buffer: ``tables``
    is (p, g, m, v, vmax, step pointers, numels, first_tile, tile_tensor, eligible, group) in the
    order the update kernel takes them."""

    dtype: torch.dtype
    tile: int
    num_tiles: int
    tables: tuple[Tensor, ...]


@dataclass(frozen=True)
class UpdateLayout:
    """Device tables for the fused AdamW update of one list of parameters: per dtype group the
    tables above, and the pointers of every parameter's step tensor (the finalize advances them)."""

    groups: tuple[UpdateGroup, ...]
    steps: Tensor
    num_params: int
    host_buffer: Tensor


def build_update_layout(
    arrays: list[list[Tensor | None]], eligible: list[int], group: list[int], device: torch.device
) -> UpdateLayout:
    """The :class:`UpdateLayout` of k parameters. ``arrays`` holds, per parameter, its
    ``[p, g, m, v, vmax or None, step]`` (dense, 16-byte aligned, p, g, m, v and vmax with one
    dtype and one set of strides; the step a float32 scalar); ``eligible[i]`` is parameter i's
    position among the eligible gradients (its mean and std) or -1; ``group[i]`` its row of the
    hyper-parameter table. One non-blocking copy, no host synchronisation."""
    pointers = torch.tensor([[0 if a is None else a.data_ptr() for a in row] for row in arrays], dtype=torch.int64)
    numels = torch.tensor([row[0].numel() for row in arrays], dtype=torch.int64)
    eligible_t = torch.tensor(eligible, dtype=torch.int64)
    group_t = torch.tensor(group, dtype=torch.int64)
    pieces = [pointers[:, 5].contiguous()]
    meta = []
    for dtype, indices in group_by_dtype([row[0] for row in arrays]).items():
        index = torch.tensor(indices, dtype=torch.int64)
        tile = update_tile_elements(dtype)
        tiles = (numels[index] + tile - 1) // tile
        first_tile = torch.cumsum(tiles, 0) - tiles
        tile_tensor = torch.repeat_interleave(torch.arange(len(indices)), tiles)
        group_pieces = [pointers[index, c].contiguous() for c in range(6)]
        group_pieces += [numels[index], first_tile, tile_tensor, eligible_t[index], group_t[index]]
        meta.append((dtype, tile, int(tiles.sum()), len(group_pieces)))
        pieces += group_pieces
    host, views = send(pieces, device)
    steps = next(views)
    groups = tuple(UpdateGroup(dtype, tile, num_tiles, tuple(next(views) for _ in range(count)))
                   for dtype, tile, num_tiles, count in meta)
    return UpdateLayout(groups=groups, steps=steps, num_params=len(arrays), host_buffer=host)
