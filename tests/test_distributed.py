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
def test_compact_state_on_dtensor_parameters_is_refused_and_changes_nothing(mesh, state_dtype):
    # Compact state lives in the grouped path's flat buffers, which DTensor shards do not use.
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    fully_shard(model, mesh=mesh)
    optimizer = sgdlab.AdamW(
        [{"params": model.parameters(), "state_dtype": state_dtype, "min_8bit_size": 0}], lr=0.1)
    model(torch.randn(8, 4)).sum().backward()
    before = [p.full_tensor().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"state_dtype.*DTensor"):
        optimizer.step()
    assert "compact_state_step" not in optimizer.param_groups[0]
    for p, old in zip(model.parameters(), before):
        assert torch.equal(p.full_tensor(), old)
