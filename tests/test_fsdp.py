"""GANAdamW over FSDP2 (``fully_shard``): two processes on gloo (CPU), each step against the
single-process GANAdamW and GAN(torch.optim.AdamW) on the same global batch. The model's shards
are uneven (5 and 3 rows over two ranks) and its last layer, one row, leaves rank 1 empty shards;
a one-layer model of one row leaves rank 1 nothing at all. The statistics must be those of the
unsharded gradients on every rank."""

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from gan_kernels import GAN, GANAdamW
from tests.helpers import run_ranks

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch without torch.distributed, or older than FSDP2's public API
    fully_shard = None

pytestmark = pytest.mark.skipif(fully_shard is None, reason="torch.distributed.fsdp.fully_shard is not available")

WORLD = 2
LOCAL_BATCH = 4
STEPS = 4
RESUME_AFTER = 2
LR = 1e-2
MODES = ("gan", "center", "znorm", "gc")
WIDTHS = (6, 5, 3, 1)
# The runs compared with the single process: name -> (mode, layer widths).
RUNS = {**{mode: (mode, WIDTHS) for mode in MODES}, "one_row": ("gan", (6, 1))}
# Adam divides by sqrt(v), so float32 differences in the statistics (a rank-ordered Chan
# combination against one pass over the whole tensor) stay at a few ulps of the parameters.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def make_model(seed=0, widths=WIDTHS):
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(widths, widths[1:])]
    return nn.Sequential(*[m for layer in layers for m in (layer, nn.Tanh())][:-1])


def batch(step):
    """The global batch of a step: WORLD * LOCAL_BATCH rows; rank r takes rows r*LOCAL_BATCH on."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(WORLD * LOCAL_BATCH, 6, generator=generator), torch.randn(WORLD * LOCAL_BATCH, 1, generator=generator)


def loss_of(model, x, y):
    return (model(x) - y).square().mean()


def sharded(model):
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def full_params(model):
    return [p.detach().full_tensor() for p in model.parameters()]


def local_backward(model, rank, step):
    # FSDP2 averages the gradients over the ranks: the mean over the global batch.
    x, y = batch(step)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    loss_of(model, x[rows], y[rows]).backward()


def train(model, opt, rank, steps):
    """Steps over FSDP2; the full parameters after each."""
    history = []
    for step in steps:
        local_backward(model, rank, step)
        opt.step()
        opt.zero_grad()
        history.append(full_params(model))
    return history


def snapshot(model, opt):
    """Everything a step may change, on this rank: the local shards and the GANState."""
    state = [{k: (v.to_local() if k != "step" else v).clone() for k, v in s.items()} for s in opt.state.values()]
    return [p.detach().to_local().clone() for p in model.parameters()], state, opt.gan_state.state_dict()


def layout(opt):
    """The optimizer state's structure: per parameter, each entry's type, placements and dtype."""
    return [
        {k: (type(v).__name__, tuple(getattr(v, "placements", ())), v.dtype, v.device.type) for k, v in s.items()}
        for s in opt.state.values()
    ]


def fsdp_worker(rank, workdir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    out = {}
    for name, (mode, widths) in RUNS.items():
        model = sharded(make_model(widths=widths))
        opt = GANAdamW(model.parameters(), lr=LR, mode=mode)
        out[name] = train(model, opt, rank, range(STEPS))
        out[f"{name}_stats"] = [t.clone() for t in opt.last_stats]
        if name == "gan":
            out["layout"] = layout(opt)
            out["state_dict_keys"] = sorted(opt.state_dict())

    # One collective per step, the statistics' all_gather, on every rank: counted on the last
    # run's one-row model, where rank 1 holds nothing. (FSDP2's own collectives run in the forward
    # and backward, outside the step.)
    calls = []
    all_gather = dist.all_gather
    dist.all_gather = lambda *args, **kwargs: calls.append(1) or all_gather(*args, **kwargs)
    try:
        local_backward(model, rank, STEPS)
        opt.step()
    finally:
        dist.all_gather = all_gather
    out["collectives_per_step"] = len(calls)

    # torch's AdamW under FSDP2, for the state layout GANAdamW must share.
    model = sharded(make_model())
    adamw = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    train(model, adamw, rank, range(1))
    out["torch_layout"] = layout(adamw)

    # A non-finite gradient on rank 1 only: no rank changes anything, and the run goes on as if
    # the step had not been taken.
    model = sharded(make_model())
    opt = GANAdamW(model.parameters(), lr=LR)
    train(model, opt, rank, range(RESUME_AFTER))
    before = snapshot(model, opt)
    local_backward(model, rank, 99)
    if rank == 1:
        with torch.no_grad():
            model[0].weight.grad.to_local()[0, 0] = float("inf")
    opt.step()
    opt.zero_grad()
    out["nonfinite_flag"] = opt.last_stats.nonfinite.item()
    after = snapshot(model, opt)
    out["nonfinite_unchanged"] = all(torch.equal(a, b) for a, b in zip(before[0], after[0])) and all(
        torch.equal(s[k], t[k]) for s, t in zip(before[1], after[1]) for k in s
    ) and all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    out["after_nonfinite"] = train(model, opt, rank, range(RESUME_AFTER, STEPS))[-1]

    # Interrupted after RESUME_AFTER steps, resumed into a differently initialised model from
    # (a) the optimizer's own state_dict() (DTensors and "gan"), saved per rank with torch.save,
    # (b) torch.distributed.checkpoint, whose optimizer state dict holds only "state" and
    # "param_groups": the GANState is checkpointed beside it.
    model = sharded(make_model())
    opt = GANAdamW(model.parameters(), lr=LR)
    train(model, opt, rank, range(RESUME_AFTER))
    path = os.path.join(workdir, f"rank{rank}.pt")
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, path)
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state, "gan": opt.gan_state.state_dict()},
             checkpoint_id=os.path.join(workdir, "dcp"))

    model = sharded(make_model(seed=1))
    opt = GANAdamW(model.parameters(), lr=LR)
    saved = torch.load(path)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optim"])
    out["resumed_layout"] = layout(opt)
    out["resumed_state_dict"] = train(model, opt, rank, range(RESUME_AFTER, STEPS))[-1]

    model = sharded(make_model(seed=1))
    opt = GANAdamW(model.parameters(), lr=LR)
    model_state, optim_state = get_state_dict(model, opt)
    loaded = {"model": model_state, "optim": optim_state, "gan": opt.gan_state.state_dict()}
    dcp.load(loaded, checkpoint_id=os.path.join(workdir, "dcp"))
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    opt.gan_state.load_state_dict(loaded["gan"])
    out["resumed_dcp"] = train(model, opt, rank, range(RESUME_AFTER, STEPS))[-1]

    # Placements the statistics cannot take: errors before anything changes.
    mesh = init_device_mesh("cpu", (WORLD,))
    for name, placement, mode in (("columns", Shard(1), "gc"), ("replicated", Replicate(), "gan")):
        param = nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [placement]))
        param.grad = distribute_tensor(torch.randn(4, 6), mesh, [placement])
        opt = GANAdamW([param], lr=LR, mode=mode)
        before = param.detach().to_local().clone()
        try:
            opt.step()
        except ValueError as error:
            out[f"{name}_error"] = str(error)
        out[f"{name}_untouched"] = torch.equal(param.detach().to_local(), before) and opt.gan_state.step.item() == 0
    sharded_param = nn.Parameter(distribute_tensor(torch.randn(4, 6), mesh, [Shard(0)]))
    plain = nn.Parameter(torch.randn(3, 3))
    sharded_param.grad = distribute_tensor(torch.randn(4, 6), mesh, [Shard(0)])
    plain.grad = torch.randn(3, 3)
    before = plain.detach().clone()
    try:
        GANAdamW([sharded_param, plain], lr=LR).step()
    except TypeError as error:
        out["mixed_error"] = str(error)
    out["mixed_untouched"] = torch.equal(plain.detach(), before)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(fsdp_worker, WORLD, tmp_path_factory.mktemp("fsdp"))


def single_process(make_optimizer, widths=WIDTHS):
    """The full model stepped on the global batches; the parameters after each step."""
    model = make_model(widths=widths)
    opt = make_optimizer(model.parameters())
    history = []
    for step in range(STEPS):
        opt.zero_grad()
        x, y = batch(step)
        # The mean of the ranks' local means, as FSDP2's gradient averaging gives.
        rows = [slice(r * LOCAL_BATCH, (r + 1) * LOCAL_BATCH) for r in range(WORLD)]
        (sum(loss_of(model, x[s], y[s]) for s in rows) / WORLD).backward()
        opt.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history, opt


@pytest.mark.parametrize("run", RUNS)
def test_every_step_equals_the_single_process_run(ranks, run):
    mode, widths = RUNS[run]
    fused, fused_opt = single_process(lambda params: GANAdamW(params, lr=LR, mode=mode), widths)
    composed, _ = single_process(lambda params: GAN(torch.optim.AdamW(params, lr=LR), mode=mode), widths)
    for out in ranks:
        for step, params in enumerate(out[run]):
            for expected in (fused[step], composed[step]):
                for got, want in zip(params, expected):
                    torch.testing.assert_close(got, want, **TOLERANCE, msg=lambda m: f"step {step}: {m}")
        for got, want in zip(out[f"{run}_stats"], fused_opt.last_stats):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)
    for a, b in zip(ranks[0][run], ranks[1][run]):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), "every rank must hold the same parameters"


def test_one_collective_per_step(ranks):
    assert [out["collectives_per_step"] for out in ranks] == [1] * WORLD


def test_state_is_laid_out_as_torch_adamw_keeps_it(ranks):
    for out in ranks:
        assert out["layout"] == out["torch_layout"]
        assert out["resumed_layout"] == out["torch_layout"]
        assert out["state_dict_keys"] == ["gan", "param_groups", "state"]
    from torch.distributed.tensor import Shard

    exp_avg = ranks[0]["layout"][0]["exp_avg"]
    assert exp_avg[0] == "DTensor" and exp_avg[1] == (Shard(0),)


def test_a_nonfinite_step_on_one_rank_changes_nothing_on_any(ranks):
    for out in ranks:
        assert out["nonfinite_flag"]
        assert out["nonfinite_unchanged"]
        assert all(torch.equal(a, b) for a, b in zip(out["after_nonfinite"], out["gan"][-1]))


@pytest.mark.parametrize("route", ["resumed_state_dict", "resumed_dcp"])
def test_a_resumed_run_ends_where_the_uninterrupted_one_does(ranks, route):
    for out in ranks:
        assert all(torch.equal(a, b) for a, b in zip(out[route], out["gan"][-1]))


def test_unsupported_placements_change_nothing(ranks):
    for out in ranks:
        assert "mode 'gc' subtracts one mean per row and needs whole rows" in out["columns_error"]
        assert "only Shard(dim) on a 1-D mesh is supported" in out["replicated_error"]
        assert "is a Tensor among DTensor gradients" in out["mixed_error"]
        assert out["columns_untouched"] and out["replicated_untouched"] and out["mixed_untouched"]
