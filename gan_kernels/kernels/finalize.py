"""Finalize: tile partials -> per-tensor means and stds, sigma, alpha, the non-finite flag and the
state update, in one launch and without leaving the device.

One program per tensor combines that tensor's tile partials with block-wide sums in a fixed order
(mean = sum(n_t * mean_t) / n; M2 = sum(M2_t) + sum(n_t * (mean_t - mean)^2)). The last program to
arrive (an atomic ticket, released after each program's results are stored) then sums the
per-tensor M2 in index order, computes sigma and the non-finite flag, applies the built-in autoscale
rule and updates the state (and, for the fused optimizer, every parameter's step); it also resets
the ticket counter, so consecutive steps (and CUDA graph replays) need no reset launch. Every sum
runs in a fixed order, so results are bitwise repeatable.

With a rule of the user's (``BUILTIN_RULE`` false) the finalize stores sigma, the flag and alpha = 1
and leaves the state alone: the host side then evaluates the rule with torch operations on the
device and commits the state (:func:`gan_kernels.rule.advance`).

The acquire/release atomic needs compute capability 7.0 or newer.
"""

from __future__ import annotations

import triton
import triton.language as tl

MEANS_ONLY = tl.constexpr(0)
CHAN = tl.constexpr(1)
ABOUT_TENSOR_MEAN = tl.constexpr(2)


@triton.jit
def isfinite(x):
    return (x == x) & (tl.abs(x) != float("inf"))


@triton.jit
def autoscale(sigma, exponent):
    """Device twin of :func:`gan_kernels.rule.autoscale` (tested equal): sigma float32 and the
    exponent float64 in, ``(alpha, exponent)`` out."""
    usable = isfinite(sigma) & (sigma > 0)
    safe = tl.where(usable, sigma, 1.0)
    first_exponent = (1.0 / tl.maximum(-tl.log(safe), 1.0)).to(tl.float64)
    exponent = tl.where(usable & (exponent != exponent), first_exponent, exponent)
    scaled = tl.minimum(tl.exp(exponent * tl.log(safe.to(tl.float64))), 1.0).to(tl.float32)
    alpha = tl.where(usable & (exponent == exponent), scaled, 1.0)
    return alpha, exponent


@triton.jit
def finalize_kernel(
    part_means,
    part_m2,
    first_part,
    numels,
    tile_elems,
    tensor_m2,
    num_tensors,
    total_elements,
    means,
    stds,
    global_std,
    alpha,
    nonfinite,
    exponent,
    step,
    arrivals,
    param_steps,
    num_params,
    PHASE: tl.constexpr,
    GAN_MODE: tl.constexpr,
    CHUNK: tl.constexpr,
    PARAM_STEPS: tl.constexpr,
    BUILTIN_RULE: tl.constexpr,
):
    i = tl.program_id(0)
    n = tl.load(numels + i)
    tile = tl.load(tile_elems + i)
    first = tl.load(first_part + i)
    tiles = (n + tile - 1) // tile
    count = n.to(tl.float32)

    weighted = tl.zeros([CHUNK], tl.float32)
    for j in range(0, tiles, CHUNK):
        k = j + tl.arange(0, CHUNK)
        inside = k < tiles
        tile_count = tl.where(inside, tl.minimum(n - k * tile, tile), 0).to(tl.float32)
        weighted += tile_count * tl.load(part_means + first + k, mask=inside, other=0.0)
    mean = tl.sum(weighted, axis=0) / tl.maximum(count, 1.0)
    tl.store(means + i, mean)

    if PHASE != MEANS_ONLY:
        spread = tl.zeros([CHUNK], tl.float32)
        for j in range(0, tiles, CHUNK):
            k = j + tl.arange(0, CHUNK)
            inside = k < tiles
            spread += tl.load(part_m2 + first + k, mask=inside, other=0.0)
            if PHASE == CHAN:
                tile_count = tl.where(inside, tl.minimum(n - k * tile, tile), 0).to(tl.float32)
                offset = tl.load(part_means + first + k, mask=inside, other=0.0) - mean
                spread += tl.where(inside, tile_count * offset * offset, 0.0)
        m2 = tl.sum(spread, axis=0)
        tl.store(tensor_m2 + i, m2)
        tl.store(stds + i, tl.where(n > 1, tl.sqrt(m2 / tl.maximum(count - 1.0, 1.0)), 0.0))

        tl.debug_barrier()
        ticket = tl.atomic_add(arrivals, 1, sem="acq_rel", scope="gpu")
        if ticket == num_tensors - 1:
            total = tl.zeros([CHUNK], tl.float32)
            bad = tl.zeros([CHUNK], tl.int32)
            for first_tensor in range(0, num_tensors, CHUNK):
                tensor = first_tensor + tl.arange(0, CHUNK)
                listed = tensor < num_tensors
                total += tl.load(tensor_m2 + tensor, mask=listed, other=0.0, cache_modifier=".cg")
                tensor_mean = tl.load(means + tensor, mask=listed, other=0.0, cache_modifier=".cg")
                bad |= (~isfinite(tensor_mean)).to(tl.int32)
            denominator = tl.maximum(total_elements - 1, 1).to(tl.float32)
            sigma = tl.where(total_elements > 1, tl.sqrt(tl.sum(total, axis=0) / denominator), 0.0)
            flag = (tl.max(bad, axis=0) != 0) | ~isfinite(sigma)
            tl.store(global_std, sigma)
            tl.store(nonfinite, flag)
            if BUILTIN_RULE:
                old_exponent = tl.load(exponent)
                scale, new_exponent = autoscale(sigma, old_exponent)
                if GAN_MODE:
                    tl.store(alpha, scale)
                else:
                    tl.store(alpha, 1.0)
                tl.store(exponent, tl.where(flag, old_exponent, new_exponent))
                tl.store(step, tl.load(step) + tl.where(flag, 0, 1).to(tl.int64))
            else:
                tl.store(alpha, 1.0)
            if PARAM_STEPS:
                # The fused optimizer's per-parameter steps (float32 scalars, through a pointer
                # table) advance here, once the flag is known, before its update launch reads them.
                for first_param in range(0, num_params, CHUNK):
                    param = first_param + tl.arange(0, CHUNK)
                    listed = (param < num_params) & ~flag
                    at = tl.load(param_steps + param, mask=listed, other=0).to(tl.pointer_type(tl.float32))
                    tl.store(at, tl.load(at, mask=listed, other=0.0) + 1.0, mask=listed)
            tl.store(arrivals, 0)
