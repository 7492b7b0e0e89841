"""Checks that need two processes, run by tests/test_distributed_multiprocess.py under torchrun.

``torchrun --nproc_per_node 2 tests/distributed_checks.py PHASE DIRECTORY`` runs every check of
PHASE on both ranks (gloo, CPU) and writes ``DIRECTORY/PHASE.json``: each check's name with
"ok" or the failure of either rank. One launch runs many checks, since starting processes costs
far more than the checks (a few steps of a tiny model each).

Phase "two_ranks": the wrappers (DDP, ZeroRedundancyOptimizer, FSDP2) with sgdlab optimizers
against torch.optim and against one process on the global batch; compact state on FSDP2;
distributed checkpoints (saved for the one-process phase of the test); optimizer in backward.
Phase "resume": a checkpoint written by one process is resumed by two ranks; the examples of
docs/distributed.md run.
"""

from __future__ import annotations

import datetime
import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import sgdlab

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "distributed"
GLOBAL_BATCH = 8
STEPS = 5

# --- the problem: a tiny MLP, a global batch of 8 split 4 / 4 ------------------------------------


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def global_batches(steps: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(GLOBAL_BATCH, 6, generator=generator),
             torch.randn(GLOBAL_BATCH, 3, generator=generator)) for _ in range(steps)]


def shard_of(batches, rank: int, world: int):
    size = GLOBAL_BATCH // world
    part = slice(rank * size, (rank + 1) * size)
    return [(x[part], y[part]) for x, y in batches]


SPECS: dict[str, dict[str, Any]] = {
    "sgd": dict(cls=sgdlab.SGD, torch=torch.optim.SGD,
                kw=dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam": dict(cls=sgdlab.Adam, torch=torch.optim.Adam, kw=dict(lr=0.01)),
    "adamw": dict(cls=sgdlab.AdamW, torch=torch.optim.AdamW, kw=dict(lr=0.01, weight_decay=0.1)),
    "schedule_free": dict(cls=sgdlab.ScheduleFreeAdamW, kw=dict(lr=0.01, warmup_steps=2)),
    # switch_at: the switch happens within the few steps; its SGD learning rate comes from the
    # dot products summed over the whole group, every shard's part
    "swats": dict(cls=sgdlab.SWATS, kw=dict(lr=0.01, switch_at=3)),
    "sam": dict(cls=sgdlab.SGD, kw=dict(lr=0.05, momentum=0.9), sam=dict(rho=0.05)),
}
WRAPPERS = ("ddp", "zero", "fsdp2")


def build(spec: dict[str, Any], params, wrapper: str, use_torch: bool = False):
    """(the optimizer the loop steps, the sgdlab / torch optimizer that holds the state)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    cls = spec["torch"] if use_torch else spec["cls"]
    if wrapper == "zero":
        optimizer = ZeroRedundancyOptimizer(params, optimizer_class=cls, **spec["kw"])
        inner = optimizer.optim
    else:
        optimizer = inner = cls(params, **spec["kw"])
    if "sam" in spec:
        optimizer = sgdlab.SAM(optimizer, **spec["sam"])
    if hasattr(inner, "train") and callable(inner.train):
        inner.train()
    return optimizer, inner


def train(model, optimizer, spec, batches) -> None:
    for x, y in batches:
        def closure():
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss
        if "sam" in spec:
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()


def wrap(wrapper: str, model: nn.Module, mesh=None) -> nn.Module:
    if wrapper in ("ddp", "zero"):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    fully_shard(model[0], mesh=mesh)
    fully_shard(model[2], mesh=mesh)
    return fully_shard(model, mesh=mesh)


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor.detach().clone()


def full_params(model: nn.Module) -> list[torch.Tensor]:
    return [full(p) for p in model.parameters()]


def assert_params_close(actual, expected, what: str, rtol=1e-5, atol=1e-6) -> None:
    for i, (a, b) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{what}, parameter {i}: {m}")


def one_process(spec, batches, *, eval_point: bool = False):
    """The same optimizer, one process, the whole global batch per step."""
    model = make_model()
    optimizer, inner = build(spec, model.parameters(), "plain")
    train(model, optimizer, spec, batches)
    if eval_point:
        inner.eval()
    return full_params(model), inner


# --- checks: phase two_ranks ---------------------------------------------------------------------
def wrapper_checks(ctx) -> dict[str, Callable[[], None]]:
    checks = {}
    for wrapper in WRAPPERS:
        for name, spec in SPECS.items():
            checks[f"{wrapper}-{name}-matches-one-process"] = (
                lambda wrapper=wrapper, name=name, spec=spec:
                _wrapper_vs_one_process(ctx, wrapper, name, spec))
            if "torch" in spec:
                checks[f"{wrapper}-{name}-matches-torch.optim"] = (
                    lambda wrapper=wrapper, spec=spec: _wrapper_vs_torch(ctx, wrapper, spec))
    return checks


def _run_wrapped(ctx, wrapper, spec, use_torch=False):
    model = wrap(wrapper, make_model(), ctx["mesh"])
    optimizer, inner = build(spec, model.parameters(), wrapper, use_torch)
    train(model, optimizer, spec, shard_of(global_batches(), ctx["rank"], ctx["world"]))
    return model, optimizer, inner


def _wrapper_vs_one_process(ctx, wrapper, name, spec) -> None:
    model, _, inner = _run_wrapped(ctx, wrapper, spec)
    expected, reference = one_process(spec, global_batches())
    assert_params_close(full_params(model), expected, f"{wrapper} vs one process")
    if name == "swats":
        assert inner.switch_step == reference.switch_step == 3, (
            inner.switch_step, reference.switch_step)
        assert abs(inner.sgd_lr - reference.sgd_lr) <= 1e-5 * abs(reference.sgd_lr), (
            inner.sgd_lr, reference.sgd_lr)
    if name == "schedule_free":  # the averaged point x too, after eval() on every rank
        inner.eval()
        expected_x, _ = one_process(spec, global_batches(), eval_point=True)
        assert_params_close(full_params(model), expected_x, f"{wrapper} eval point vs one process")


def _wrapper_vs_torch(ctx, wrapper, spec) -> None:
    ours, _, _ = _run_wrapped(ctx, wrapper, spec)
    theirs, _, _ = _run_wrapped(ctx, wrapper, spec, use_torch=True)
    assert_params_close(full_params(ours), full_params(theirs), f"{wrapper}: sgdlab vs torch.optim")


def refusal_checks(ctx) -> dict[str, Callable[[], None]]:
    def sam_inside_zero():
        from torch.distributed.optim import ZeroRedundancyOptimizer

        model = wrap("zero", make_model())
        before = full_params(model)
        try:
            ZeroRedundancyOptimizer(model.parameters(), optimizer_class=sgdlab.SAM,
                                    base_optimizer=sgdlab.SGD, lr=0.1, rho=0.05)
        except TypeError as error:
            assert "ZeroRedundancyOptimizer" in str(error) and "SAM(" in str(error), error
        else:
            raise AssertionError("SAM as ZeRO's optimizer_class was accepted")
        assert all(torch.equal(a, b) for a, b in zip(full_params(model), before))

    def in_backward_on_ddp():
        model = wrap("ddp", make_model())
        optimizer = sgdlab.AdamW(model.parameters(), lr=0.1)
        try:
            sgdlab.optim.optimizer_in_backward(optimizer)
        except ValueError as error:
            assert "DistributedDataParallel" in str(error), error
        else:
            raise AssertionError("optimizer_in_backward accepted replicated (DDP) parameters")
        x, y = shard_of(global_batches(1), ctx["rank"], ctx["world"])[0]
        F.mse_loss(model(x), y).backward()  # no hook left behind: backward changes no weight
        assert not optimizer.state

    return {"zero-sam-as-optimizer_class-is-refused": sam_inside_zero,
            "ddp-optimizer-in-backward-is-refused": in_backward_on_ddp}


def _state_bytes(optimizer) -> int:
    """Bytes of this rank's optimizer state tensors (its shards: local tensors of DTensors)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total


def _digits_run(ctx, state_dtype, *, epochs: int = 3) -> tuple[float, float, int]:
    """AdamW on scikit-learn's digits (MLP 64-128-10), FSDP2 over the two ranks: (final train
    loss over the whole set, test accuracy, this rank's state bytes)."""
    from torch.distributed.fsdp import fully_shard

    from sgdlab.lab.tasks import _digits_data

    x_train, y_train, x_test, y_test = _digits_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    fully_shard(model[0], mesh=ctx["mesh"])
    fully_shard(model[2], mesh=ctx["mesh"])
    fully_shard(model, mesh=ctx["mesh"])
    group = {"params": list(model.parameters())}
    if state_dtype is not None:
        group["state_dtype"] = state_dtype
    optimizer = sgdlab.AdamW([group], lr=3e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    batch, rank, world = 64, ctx["rank"], ctx["world"]
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start:start + batch][rank::world]
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[index]), y_train[index]).backward()
            optimizer.step()
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x_train), y_train))
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    for p in model.parameters():
        for value in optimizer.state[p].values():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape == p.shape:
                assert type(value) is type(p) and value.placements == p.placements, (
                    type(value), getattr(value, "placements", None))
    return loss, accuracy, _state_bytes(optimizer)


def compact_checks(ctx) -> dict[str, Callable[[], None]]:
    results: dict[Any, tuple[float, float, int]] = {}

    def run(dtype):
        if dtype not in results:
            results[dtype] = _digits_run(ctx, dtype)
        return results[dtype]

    def check(dtype, name, saving):
        def body():
            loss32, accuracy32, bytes32 = run(None)
            loss, accuracy, state_bytes = run(dtype)
            ctx["report"][f"digits-{name}"] = dict(loss=loss, accuracy=accuracy,
                                                   state_bytes=state_bytes)
            ctx["report"]["digits-float32"] = dict(loss=loss32, accuracy=accuracy32,
                                                   state_bytes=bytes32)
            print(f"rank {ctx['rank']}: FSDP2 digits AdamW, {name} state: {state_bytes} bytes of "
                  f"state on this rank (float32: {bytes32}), train loss {loss:.4f} (float32 "
                  f"{loss32:.4f}), test accuracy {accuracy:.3f} (float32 {accuracy32:.3f})",
                  flush=True)
            assert state_bytes <= saving * bytes32, (state_bytes, bytes32)
            assert loss <= loss32 * 1.15 + 0.01, (loss, loss32)
            assert accuracy >= accuracy32 - 0.03, (accuracy, accuracy32)
        return body

    # bfloat16 halves every moment; 8-bit quarters the first layer's (8192 elements; the second
    # layer's 1290 stay float32, under min_8bit_size)
    return {"fsdp2-compact-bfloat16-trains-like-float32-in-half-the-memory":
            check(torch.bfloat16, "bfloat16", 0.52),
            "fsdp2-compact-8bit-trains-like-float32-in-less-memory":
            check(torch.uint8, "8-bit", 0.40)}


def _fsdp2_adamw(ctx, state_dtype, *, min_8bit_size=0):
    model = wrap("fsdp2", make_model(), ctx["mesh"])
    group = {"params": list(model.parameters())}
    if state_dtype is not None:
        group.update(state_dtype=state_dtype, min_8bit_size=min_8bit_size)
    return model, sgdlab.AdamW([group], lr=0.01, weight_decay=0.1)


def empty_shard_checks(ctx) -> dict[str, Callable[[], None]]:
    """A layer with one output row: rank 1 holds empty shards of its weight and bias."""
    def body(make, rtol, atol):
        def run(wrapped: bool):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
            if wrapped:
                model = wrap("fsdp2", model, ctx["mesh"])
            optimizer = make(model.parameters())
            data = [(x, y[:, :1]) for x, y in global_batches()]
            if wrapped:
                data = shard_of(data, ctx["rank"], ctx["world"])
            train(model, optimizer, {}, data)
            return model, optimizer

        model, optimizer = run(True)
        reference, _ = run(False)
        assert_params_close(full_params(model), full_params(reference), "empty shards",
                            rtol=rtol, atol=atol)
        for p in model.parameters():
            for key, value in optimizer.state[p].items():
                if key.endswith(".absmax"):  # 8-bit block scales: this rank's, a plain tensor
                    assert type(value) is torch.Tensor, type(value)
                elif isinstance(value, torch.Tensor) and value.dim():
                    assert value.shape == p.shape and value.placements == p.placements

    return {
        "fsdp2-empty-shards-sgd-momentum-matches-one-process": lambda: body(
            lambda p: sgdlab.SGD(p, lr=0.05, momentum=0.9), 1e-5, 1e-6),
        "fsdp2-empty-shards-bfloat16-adamw-close-to-one-process": lambda: body(
            lambda p: sgdlab.AdamW([{"params": list(p), "state_dtype": torch.bfloat16}], lr=0.01),
            0, 1e-3),
        "fsdp2-empty-shards-8bit-adamw-close-to-one-process": lambda: body(
            lambda p: sgdlab.AdamW([{"params": list(p), "state_dtype": torch.uint8,
                                     "min_8bit_size": 0}], lr=0.01), 0, 1e-2),
    }


def checkpoint_checks(ctx) -> dict[str, Callable[[], None]]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
        set_optimizer_state_dict)

    def resume(dtype, name):
        def body():
            batches = shard_of(global_batches(6), ctx["rank"], ctx["world"])
            spec = {"kw": {}}
            model, optimizer = _fsdp2_adamw(ctx, dtype)
            train(model, optimizer, spec, batches[:3])
            path = ctx["dir"] / f"checkpoint-{name}"
            dcp.save({"model": get_model_state_dict(model),
                      "optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=path)
            train(model, optimizer, spec, batches[3:])
            uninterrupted = full_params(model)
            if ctx["rank"] == 0:  # for the one-process phase, which goes on from the checkpoint
                torch.save(uninterrupted, ctx["dir"] / f"two_ranks_continued-{name}.pt")

            model, optimizer = _fsdp2_adamw(ctx, dtype)
            saved = {"model": get_model_state_dict(model),
                     "optim": get_optimizer_state_dict(model, optimizer)}
            dcp.load(saved, checkpoint_id=path)
            set_model_state_dict(model, saved["model"])
            set_optimizer_state_dict(model, optimizer, saved["optim"])
            train(model, optimizer, spec, batches[3:])
            for i, (a, b) in enumerate(zip(full_params(model), uninterrupted)):
                assert torch.equal(a, b), (
                    f"parameter {i} differs after resuming: {(a - b).abs().max()}")
        return body

    def widened_eight_bit():
        # for the one-process phase: 8-bit state as float32 (its blocks are the shards')
        batches = shard_of(global_batches(3), ctx["rank"], ctx["world"])
        model, optimizer = _fsdp2_adamw(ctx, torch.uint8)
        train(model, optimizer, {"kw": {}}, batches)
        saved = sgdlab.optim.widen_state_dict(get_optimizer_state_dict(model, optimizer))
        for entry in saved["state"].values():
            assert entry["exp_avg"].dtype == torch.float32 and "codes" not in str(entry.keys())
        dcp.save({"model": get_model_state_dict(model), "optim": saved},
                 checkpoint_id=ctx["dir"] / "checkpoint-8bit-widened")

    return {"fsdp2-checkpoint-resumes-bit-for-bit-float32": resume(None, "float32"),
            "fsdp2-checkpoint-resumes-bit-for-bit-bfloat16": resume(torch.bfloat16, "bfloat16"),
            "fsdp2-checkpoint-resumes-bit-for-bit-8bit": resume(torch.uint8, "8bit"),
            "fsdp2-8bit-checkpoint-widens-to-float32": widened_eight_bit}


def in_backward_checks(ctx) -> dict[str, Callable[[], None]]:
    def same_as_step(name, make, exact=True):
        def body():
            batches = shard_of(global_batches(), ctx["rank"], ctx["world"])
            stepped = wrap("fsdp2", make_model(), ctx["mesh"])
            optimizer = make(stepped.parameters())
            train(stepped, optimizer, {}, batches)
            in_backward = wrap("fsdp2", make_model(), ctx["mesh"])
            optimizer = make(in_backward.parameters())
            handle = sgdlab.optim.optimizer_in_backward(optimizer)
            for x, y in batches:
                F.mse_loss(in_backward(x), y).backward()
            handle.remove()
            for i, (a, b) in enumerate(zip(full_params(in_backward), full_params(stepped))):
                if exact:
                    assert torch.equal(a, b), f"{name} parameter {i}: {(a - b).abs().max()}"
                else:  # compact state is rounded with noise that depends on the layout
                    torch.testing.assert_close(a, b, rtol=0, atol=0.01)
            if name == "swats":
                assert optimizer.switch_step == 3
        return body

    return {
        "fsdp2-in-backward-adamw-same-as-step": same_as_step(
            "adamw", lambda p: sgdlab.AdamW(p, lr=0.01, weight_decay=0.1)),
        "fsdp2-in-backward-8bit-adamw-close-to-step": same_as_step(
            "adamw-8bit", lambda p: sgdlab.AdamW([{"params": list(p), "state_dtype": torch.uint8,
                                                   "min_8bit_size": 0}], lr=0.01), exact=False),
        "fsdp2-in-backward-swats-same-as-step": same_as_step(
            "swats", lambda p: sgdlab.SWATS(p, lr=0.01, switch_at=3)),
    }


# --- checks: phase resume ------------------------------------------------------------------------
def resume_checks(ctx) -> dict[str, Callable[[], None]]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
        set_optimizer_state_dict)

    def from_one_process():
        model, optimizer = _fsdp2_adamw(ctx, None)
        saved = {"model": get_model_state_dict(model),
                 "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(saved, checkpoint_id=ctx["dir"] / "checkpoint-one-process")
        set_model_state_dict(model, saved["model"])
        set_optimizer_state_dict(model, optimizer, saved["optim"])
        batches = shard_of(global_batches(9), ctx["rank"], ctx["world"])
        train(model, optimizer, {"kw": {}}, batches[6:])
        expected = torch.load(ctx["dir"] / "one_process_continued.pt")
        assert_params_close(full_params(model), expected, "two ranks resumed from one process")

    def example(name):
        def body():
            namespace = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="distributed_checks")
            losses = namespace["train"](steps=20)
            assert losses[-1] < 0.7 * losses[0], losses
        return body

    return {"fsdp2-resumes-a-one-process-checkpoint": from_one_process,
            **{f"example-{name}-trains": example(name) for name in ("ddp", "zero", "fsdp2")}}


PHASES = {
    "two_ranks": (wrapper_checks, refusal_checks, compact_checks, empty_shard_checks,
                  checkpoint_checks,
                  in_backward_checks),
    "resume": (resume_checks,),
}


def check_names(phase: str) -> list[str]:
    """The checks of ``phase``, for the test module to parametrize over (no process group)."""
    return [name for make in PHASES[phase] for name in make({})]


def main() -> None:
    phase, directory = sys.argv[1], Path(sys.argv[2])
    # A check that fails on one rank leaves the other waiting in a collective: the timeout
    # turns that into a failure of the same check instead of a hang.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=int(os.environ.get(
        "SGDLAB_DISTRIBUTED_TIMEOUT", "60"))))
    from torch.distributed.device_mesh import init_device_mesh

    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = {"rank": rank, "world": world, "dir": directory, "report": {},
           "mesh": init_device_mesh("cpu", (world,))}
    outcomes = {}
    only = os.environ.get("SGDLAB_CHECKS")
    for make in PHASES[phase]:
        for name, check in make(ctx).items():
            if only and only not in name:
                continue
            started = time.perf_counter()
            try:
                check()
                outcomes[name] = "ok"
            except Exception:  # noqa: BLE001 - reported by the test of that name
                outcomes[name] = f"rank {rank}: " + traceback.format_exc()
                print(f"{name} failed on {outcomes[name]}", file=sys.stderr, flush=True)
            dist.barrier()
            ctx["report"].setdefault("seconds", {})[name] = round(time.perf_counter() - started, 2)
    everyone = [None] * world
    dist.gather_object((outcomes, ctx["report"]), everyone if rank == 0 else None, dst=0)
    if rank == 0:
        merged = {name: next((o[name] for o, _ in everyone if o[name] != "ok"), "ok")
                  for name in outcomes}
        reports = {f"rank {r}": report for r, (_, report) in enumerate(everyone)}
        (directory / f"{phase}.json").write_text(json.dumps({"checks": merged, "report": reports},
                                                            indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
