"""GAN on torch.distributed: two processes on the gloo backend (CPU), against the reference on the
gathered gradients. DDP needs nothing (gradients are reduced before the step); sharded gradients
(flat shards of uneven sizes, empty ones included, and DTensors) give every rank the unsharded
result."""

import pytest
import torch
import torch.distributed as dist

from gan_kernels import GAN, GANState, gan_, reference
from gan_kernels.distributed import gan_sharded_
from tests.helpers import assert_outputs_close, assert_stats_close, exact_evaluation, random_grads, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2
SHAPES = [(5000,), (33, 7), (10,), (4,), (1,)]
DTYPES = [torch.float32, torch.bfloat16, torch.float32, torch.float16, torch.float32]


def full_grads():
    return random_grads(SHAPES, DTYPES, seed=0, scale=1e-3, offset=2e-4)


def split_points(rank):
    """Uneven flat shards: rank 0 takes 30% of the first tensors, all of (10,), none of (4,);
    rank 1 the rest."""
    cuts = [1500, 70, 10, 0, 1]
    return [(0, c) if rank == 0 else (c, None) for c in cuts]


def worker(rank, workdir):
    out = {}

    # Flat ZeRO-style shards, uneven, some empty on one rank.
    grads = full_grads()
    shards = [g.reshape(-1)[a:b].clone() for g, (a, b) in zip(grads, split_points(rank))]
    state = GANState()
    out["flat_stats"] = gan_sharded_(shards, state)
    out["flat_shards"] = shards
    out["flat_state"] = state.state_dict()

    # A rank whose shards are all empty.
    shards = [g.reshape(-1).clone() if rank == 0 else g.reshape(-1)[:0].clone() for g in full_grads()]
    out["empty_rank_stats"] = gan_sharded_(shards, mode="znorm")
    out["empty_rank_shards"] = shards

    # DTensors sharded along dim 0 (uneven rows), through the public gan_.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    dtensors = [distribute_tensor(g, mesh, [Shard(0)]) for g in full_grads()]
    out["dtensor_stats"] = gan_(dtensors, mode="gc")
    out["dtensor_full"] = [d.full_tensor() for d in dtensors]

    # Unsupported placement and a group this rank is not in: errors before any change.
    replicated = [distribute_tensor(g, mesh, [Replicate()]) for g in full_grads()[:2]]
    before = [r.to_local().clone() for r in replicated]
    try:
        gan_(replicated)
    except ValueError as error:
        out["replicate_error"] = str(error)
    out["replicate_untouched"] = all(torch.equal(r.to_local(), b) for r, b in zip(replicated, before))
    try:
        gan_([distribute_tensor(full_grads()[0], mesh, [Shard(0)]), torch.randn(3)])
    except TypeError as error:
        out["mixed_error"] = str(error)
    columns = [distribute_tensor(g, mesh, [Shard(1)]) for g in full_grads() if g.ndim > 1][:1]
    try:
        gan_(columns, mode="gc")
    except ValueError as error:
        out["gc_columns_error"] = str(error)
    try:
        gan_sharded_([g.reshape(-1) for g in full_grads()], mode="gc")
    except ValueError as error:
        out["gc_flat_error"] = str(error)
    only_rank0 = dist.new_group([0])
    if rank == 1:
        shards = [g.reshape(-1) for g in full_grads()]
        try:
            gan_sharded_(shards, process_group=only_rank0)
        except ValueError as error:
            out["group_error"] = str(error)

    # DDP: the gradients are already averaged; GAN(AdamW) steps identically on every rank.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = GAN(torch.optim.AdamW(ddp.parameters(), lr=1e-2))
    generator = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        x = torch.randn(8, 6, generator=generator)
        opt.zero_grad()
        ddp(x).square().mean().backward()
        opt.step()
    out["ddp_params"] = [p.detach().clone() for p in model.parameters()]
    out["ddp_step"] = opt.gan_state.step.item()
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(worker, WORLD, tmp_path_factory.mktemp("dist"))


def gathered(shards_per_rank):
    return [torch.cat([shards[i].reshape(-1) for shards in shards_per_rank]) for i in range(len(SHAPES))]


def test_flat_uneven_shards_give_the_unsharded_result(ranks):
    expected_grads = full_grads()
    state = GANState()
    expected = reference.gan_(expected_grads, state)
    outputs = gathered([out["flat_shards"] for out in ranks])
    assert_outputs_close(outputs, [g.double().reshape(-1) for g in expected_grads], [g.reshape(-1) for g in full_grads()])
    for out in ranks:
        assert_stats_close(out["flat_stats"], expected, full_grads())
        assert torch.equal(out["flat_state"]["step"], state.step)
        torch.testing.assert_close(out["flat_state"]["exponent"], state.exponent, rtol=1e-6, atol=0)
    for a, b in zip(ranks[0]["flat_stats"], ranks[1]["flat_stats"]):
        assert torch.equal(a, b), "every rank must hold the same statistics"


def test_a_rank_with_only_empty_shards(ranks):
    expected_grads = full_grads()
    expected = reference.gan_(expected_grads, mode="znorm")
    outputs = gathered([out["empty_rank_shards"] for out in ranks])
    assert_outputs_close(outputs, [g.double().reshape(-1) for g in expected_grads], [g.reshape(-1) for g in full_grads()])
    for out in ranks:
        assert_stats_close(out["empty_rank_stats"], expected, full_grads())


def test_dtensor_gradients_through_gan_(ranks):
    """Sharded along dimension 0, every rank holds whole rows: mode "gc" (one mean per row) needs
    no more than the local rows, the statistics are those of the whole tensors."""
    expected_grads, expected = exact_evaluation(full_grads(), mode="gc")
    for out in ranks:
        assert_outputs_close(out["dtensor_full"], expected_grads, full_grads())
        assert_stats_close(out["dtensor_stats"], expected, full_grads())


def test_bad_distributed_input_changes_nothing(ranks):
    for out in ranks:
        assert "only Shard(dim) on a 1-D mesh is supported" in out["replicate_error"]
        assert out["replicate_untouched"]
        assert "grads[1] is a Tensor among DTensor gradients" in out["mixed_error"]
        assert "mode 'gc' subtracts one mean per row and needs whole rows" in out["gc_columns_error"]
        assert "flat shards do not delimit rows" in out["gc_flat_error"]
    assert "not in process_group" in ranks[1]["group_error"]


def test_ddp_needs_nothing(ranks):
    for a, b in zip(ranks[0]["ddp_params"], ranks[1]["ddp_params"]):
        assert torch.equal(a, b)
    assert ranks[0]["ddp_step"] == 3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    opt = GAN(torch.optim.AdamW(model.parameters(), lr=1e-2))
    generators = [torch.Generator().manual_seed(100 + r) for r in range(WORLD)]
    for _ in range(3):
        opt.zero_grad()
        loss = sum(model(torch.randn(8, 6, generator=g)).square().mean() for g in generators) / WORLD
        loss.backward()
        opt.step()
    for a, b in zip(model.parameters(), ranks[0]["ddp_params"]):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-6)


def test_without_an_initialised_process_group():
    with pytest.raises(ValueError, match="init_process_group"):
        gan_sharded_([torch.randn(4)])
