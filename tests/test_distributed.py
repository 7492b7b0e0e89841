"""sgdlab optimizers work on FSDP2-sharded (DTensor) parameters, like torch.optim.

A one-process gloo group is enough to put every parameter and every state tensor in DTensor form.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import sgdlab

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.fixture
def mesh(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _train_sharded(cls, options, mesh):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = cls(model.parameters(), **options)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize(
    "ours, theirs, options",
    [
        (sgdlab.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
        (sgdlab.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    ],
    ids=["sgd", "adamw"],
)
def test_fsdp2_dtensor_parameters_train_like_torch(mesh, ours, theirs, options):
    from torch.distributed.tensor import DTensor

    model, optimizer = _train_sharded(ours, options, mesh)
    reference, _ = _train_sharded(theirs, options, mesh)
    for p in model.parameters():
        assert isinstance(p, DTensor)
        assert all(isinstance(v, DTensor) for v in optimizer.state[p].values() if v.dim() > 0)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a.full_tensor(), b.full_tensor(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.uint8], ids=["bfloat16", "8-bit"])
def test_compact_state_on_one_rank_shards_is_bit_identical_to_plain_tensors(mesh, state_dtype):
    # One rank's shard is the whole tensor: the same flat layout, hence the same rounding noise.
    options = dict(lr=0.01, weight_decay=0.1)
    group = {"state_dtype": state_dtype, "min_8bit_size": 0}

    def train(shard: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        if shard:
            from torch.distributed.fsdp import fully_shard

            for layer in (model[0], model[2], model):
                fully_shard(layer, mesh=mesh)
        optimizer = sgdlab.AdamW([{"params": list(model.parameters()), **group}], **options)
        x, y = torch.randn(16, 4), torch.randn(16, 2)
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        return model, optimizer

    sharded, optimizer = train(True)
    plain, reference = train(False)
    for p, q in zip(sharded.parameters(), plain.parameters()):
        assert torch.equal(p.full_tensor(), q)
        state = optimizer.state[p]["exp_avg"]
        assert type(state) is type(p) and state.dtype == state_dtype
        assert torch.equal(state.to_local(), reference.state[q]["exp_avg"])


def test_8bit_state_sharded_over_two_mesh_dimensions_is_refused_and_changes_nothing(mesh):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    grid = init_device_mesh("cpu", (1, 1), mesh_dim_names=("a", "b"))
    weight = torch.nn.Parameter(distribute_tensor(torch.randn(8, 8), grid, [Shard(0), Shard(1)]))
    weight.grad = distribute_tensor(torch.randn(8, 8), grid, [Shard(0), Shard(1)])
    optimizer = sgdlab.AdamW([{"params": [weight], "state_dtype": torch.uint8,
                               "min_8bit_size": 0}], lr=0.1)
    before = weight.full_tensor().clone()
    with pytest.raises(ValueError, match=r"8-bit state on parameters sharded over 2 mesh dim"):
        optimizer.step()
    assert torch.equal(weight.full_tensor(), before)
    assert not optimizer.state and "compact_state_step" not in optimizer.param_groups[0]


def test_schedule_free_resumes_bit_for_bit_from_a_distributed_checkpoint(mesh, tmp_path):
    # A fresh optimizer's state for get_optimizer_state_dict comes from a step at lr 0, which
    # schedule-free takes in train mode only: train() first (docs/distributed.md).
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        for layer in (model[0], model[2], model):
            fully_shard(layer, mesh=mesh)
        optimizer = sgdlab.ScheduleFreeAdamW(model.parameters(), lr=0.01, warmup_steps=2)
        optimizer.train()
        return model, optimizer

    def train(model, optimizer, batches):
        for x, y in batches:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()

    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator))
               for _ in range(6)]
    model, optimizer = make()
    train(model, optimizer, batches[:3])
    optimizer.eval()  # saved at x, as the schedule-free docs say
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp_path / "ckpt")
    optimizer.train()
    train(model, optimizer, batches[3:])

    resumed, resumed_optimizer = make()
    model_state, optimizer_state = get_state_dict(resumed, resumed_optimizer)
    saved = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(saved, checkpoint_id=tmp_path / "ckpt")
    set_state_dict(resumed, resumed_optimizer, model_state_dict=saved["model"],
                   optim_state_dict=saved["optimizer"])
    resumed_optimizer.train()
    train(resumed, resumed_optimizer, batches[3:])
    for p, q in zip(resumed.parameters(), model.parameters()):
        assert torch.equal(p.full_tensor(), q.full_tensor())
