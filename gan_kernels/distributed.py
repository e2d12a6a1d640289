"""GAN over sharded gradients (FSDP2 / DTensor, or ZeRO-style flat shards), on torch.distributed.

With DDP nothing is needed: gradients are all-reduced before ``optimizer.step()``, so every rank
transforms identical gradients and gets identical results. With sharded gradients each rank holds
only part of each tensor. Then every rank computes the partials of its own parts (count, mean, M2
about that mean, per tensor), one ``all_gather`` brings everyone's partials to every rank, each
rank combines them in rank order with Chan's formula — so all ranks hold the same per-tensor means,
the same sigma and the same alpha, those of the unsharded gradients — and applies them to its own
parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from . import fallback
from .rule import Rule, check_rule
from .state import GANState, GANStats
from .validation import check_grads, check_mode, check_state, stats_dtype


def check_process_group(process_group) -> None:
    """Raise unless torch.distributed is initialised and this process belongs to ``process_group``."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("sharded GAN needs torch.distributed to be initialised (init_process_group)")
    if process_group is not None and dist.get_rank() not in dist.get_process_group_ranks(process_group):
        raise ValueError(
            f"this process (global rank {dist.get_rank()}) is not in process_group "
            f"(ranks {dist.get_process_group_ranks(process_group)}); pass the group that shards the gradients"
        )


def gan_sharded_(
    shards: Sequence[Tensor],
    state: GANState | None = None,
    *,
    mode: str = "gan",
    process_group: dist.ProcessGroup | None = None,
    rule: Rule | None = None,
) -> GANStats:
    """GAN on gradients sharded across the ranks of ``process_group``, in place on this rank's parts.

    Args:
        shards: this rank's part of each of the k gradients, in the same order on every rank; any
            shapes (flat slices are typical), possibly empty, every rank listing the same k tensors.
            Each element of a gradient must live on exactly one rank.
        state: the :class:`GANState`; every rank updates its own copy identically.
        mode: ``"gan"``, ``"center"`` or ``"znorm"`` (mode ``"gc"`` needs whole rows, which flat
            shards do not delimit: DTensors sharded along dimension 0 take it).
        process_group: the group the gradients are sharded over (default: the whole world).
        rule: the alpha rule, None for the built-in one (as for :func:`gan_kernels.gan_`).

    Returns:
        :class:`GANStats` of the unsharded gradients, identical on every rank. One collective
        (an ``all_gather`` of 3k float64 values per rank); no other host synchronisation beyond
        what the backend's collective needs.
    """
    if check_mode(mode) == "gc":
        raise ValueError(
            "mode 'gc' subtracts one mean per row, and flat shards do not delimit rows; use mode "
            "'center', or pass DTensor gradients sharded along dimension 0"
        )
    return _sharded_step(shards, state, mode, process_group, check_rule(rule))


@torch.no_grad()
def _sharded_step(
    shards: Sequence[Tensor], state: GANState | None, mode: str, process_group, rule: Rule | None
) -> GANStats:
    check_process_group(process_group)
    shards = check_grads(shards)
    state = check_state(state, shards[0].device if shards else None)
    device = shards[0].device if shards else state.device
    state.to_(device)
    acc = stats_dtype(shards)

    plan = fallback.FallbackPlan(shards, device)
    counts, means, m2 = plan.partials(shards)
    # Partials in the order of the list, the same on every rank (the slot order depends on the
    # local shard sizes).
    local = torch.stack([counts, means, m2], dim=1)[plan.position].to(torch.float64)
    world = dist.get_world_size(process_group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=process_group)
    rank_counts, rank_means, rank_m2 = torch.stack(gathered).unbind(dim=2)

    total = rank_counts.sum(dim=0)
    mean = (rank_counts * rank_means).sum(dim=0) / total.clamp(min=1)
    spread = torch.where(rank_counts > 0, rank_counts * (rank_means - mean) ** 2, 0.0)
    m2_total = rank_m2.sum(dim=0) + spread.sum(dim=0)

    stats, scale = fallback.finalize(total.to(acc), mean.to(acc), m2_total.to(acc), state, mode, rule)
    plan.apply_(shards, scale[plan.order], stats.nonfinite, mode, center=stats.means[plan.order])
    return stats


def gan_dtensors_(
    grads: list, state: GANState | None, mode: str, rule: Rule | None = None, local_shards: list[Tensor] | None = None
) -> GANStats:
    """GAN on DTensor gradients (as FSDP2 holds them): each sharded along one dimension of a
    one-dimensional device mesh; the mesh's process group carries the one collective.

    Args:
        grads: the k DTensor gradients, in the same order on every rank.
        state, mode, rule: as for :func:`gan_sharded_` (mode ``"gc"`` too, when sharded along
            dimension 0).
        local_shards: where the result goes: by default each gradient's own local shard, in place;
            else k tensors holding copies of those shards (same shapes), transformed in place
            instead, so that the gradients keep their values (:class:`gan_kernels.GANAdamW`).

    Returns:
        :class:`GANStats` of the unsharded gradients, identical on every rank.
    """
    from torch.distributed.tensor import DTensor, Shard

    mesh = None
    for i, g in enumerate(grads):
        if not isinstance(g, DTensor):
            raise TypeError(f"grads[{i}] is a {type(g).__name__} among DTensor gradients; pass all or none as DTensors")
        if g.device_mesh.ndim != 1 or not all(isinstance(p, Shard) for p in g.placements):
            raise ValueError(
                f"grads[{i}] has placements {tuple(g.placements)} on a {g.device_mesh.ndim}-D mesh; "
                "only Shard(dim) on a 1-D mesh is supported (Replicate would count each element on every rank)"
            )
        if mesh is None:
            mesh = g.device_mesh
        elif g.device_mesh != mesh:
            raise ValueError(f"grads[{i}] is on a different device mesh than grads[0]")
        if mode == "gc" and g.ndim > 1 and g.placements[0] != Shard(0):
            raise ValueError(
                f"grads[{i}] has placements {tuple(g.placements)}; mode 'gc' subtracts one mean per row "
                "and needs whole rows on each rank: shard along dimension 0"
            )
    if local_shards is None:
        local_shards = [g.to_local() for g in grads]
    elif len(local_shards) != len(grads) or any(t.shape != g.to_local().shape for t, g in zip(local_shards, grads)):
        raise ValueError(
            f"local_shards must be {len(grads)} tensors of the local shards' shapes "
            f"{[tuple(g.to_local().shape) for g in grads]}, got {[tuple(t.shape) for t in local_shards]}"
        )
    # Sharded along dimension 0, every rank holds whole rows: mode "gc" needs nothing more.
    return _sharded_step(local_shards, state, mode, mesh.get_group(), rule)
