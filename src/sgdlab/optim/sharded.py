"""Sharded parameters: FSDP2 (DTensor) shards and ZeroRedundancyOptimizer partitions.

A rule is elementwise, so a rank can update its shard of a parameter from its shard of the
gradient and of the state without seeing the rest. :func:`execute` runs the rule on the local
tensors of DTensor parameters (``to_local()``), through the same strategies as plain tensors, so
compact state (bfloat16, 8-bit) works on shards: each rank keeps its shard's state compact. The
state stays in torch.optim's FSDP2 layout: every entry shaped like the parameter is a DTensor
placed like it (a view of the rank's flat state buffer), so ``torch.distributed.checkpoint`` and
``get_optimizer_state_dict`` see what they see with torch.optim. 8-bit blocks start at each
shard's start, not at the full tensor's: after a shard boundary that is not a multiple of 256
elements, the blocks are shifted against the whole tensor's, so elements share a scale with
other neighbours; the error is the same on average (docs/distributed.md measures it).

What is not elementwise (SWATS's dot products, SAM's gradient norm) is a sum over the whole
param group, hence over all shards: :func:`global_sum` adds the ranks' partial sums. A local
optimizer built by ``ZeroRedundancyOptimizer`` holds only its rank's partition of the
parameters; :func:`zero_process_group` finds the ZeRO instance that builds it, since ZeRO passes
nothing but the hyperparameters to the class.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # a torch built without distributed support
    DTensor = Shard = None  # type: ignore[assignment, misc]


def is_dtensor(tensor: Any) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


# --- the rule on local shards --------------------------------------------------------------------
def execute(run: Callable[..., None], index: Any, group: dict[str, Any], params: list[Tensor],
            grads: list[Tensor], states: list[dict[str, Any]], state_dtype: Any,
            cache: dict[Any, Any]) -> None:
    """Run ``run`` (the optimizer's ``_execute``) on the local shards of DTensor ``params``.

    ``cache`` (kept by the optimizer) maps each parameter to its local state dict and the DTensors
    that wrap its entries, so that a layout of flat state buffers stays valid from step to step."""
    for param, grad in zip(params, grads):
        if not is_dtensor(grad) or grad.placements != param.placements:
            raise ValueError(
                "sgdlab: a DTensor parameter needs a DTensor gradient placed like it (got "
                f"{type(grad).__name__} {getattr(grad, 'placements', '')} for placements "
                f"{param.placements}): the rule runs on the local shards"
            )
    if state_dtype == torch.uint8:
        for param in params:
            check_eight_bit(param)
    local_params = [param.to_local() for param in params]
    local_grads = [grad.to_local() for grad in grads]
    local_states = [_local_state(cache, param, state) for param, state in zip(params, states)]
    # A rank may hold an empty shard of a small parameter: nothing to update there, but its
    # (empty) state still exists on every rank, as checkpoints expect.
    full = [i for i, p in enumerate(local_params) if p.numel()]
    if full:
        run(index, group, [local_params[i] for i in full], [local_grads[i] for i in full],
            [local_states[i] for i in full], state_dtype)
    for i, param in enumerate(local_params):
        if not param.numel():
            _empty_step(run, ("empty shard", index), group, param, local_grads[i], local_states[i])
    for param, state, local in zip(params, states, local_states):
        _wrap_state(cache, param, state, local)


def _empty_step(run: Callable[..., None], key: Any, group: dict[str, Any], param: Tensor,
                grad: Tensor, state: dict[str, Any]) -> None:
    """An empty shard: no values to update, but the entries the rule creates (SGD's momentum
    buffer) must exist on this rank as on the others. The rule runs on float copies (compact
    entries are empty, nothing is lost); each 8-bit entry gets its (empty) block scales."""
    from sgdlab.optim.quantized import SUFFIX

    wide = {k: v.to(param.dtype) if isinstance(v, Tensor) and v.dim() and v.dtype != param.dtype
            else v for k, v in state.items() if not k.endswith(SUFFIX)}
    run(key, group, [param], [grad], [wide], None)
    for k, v in wide.items():
        if k not in state:
            state[k] = v
    for k, v in list(state.items()):
        if isinstance(v, Tensor) and v.dim() and v.dtype == torch.uint8:
            state.setdefault(k + SUFFIX, torch.zeros(0, dtype=torch.float32, device=v.device))


def _local_state(cache: dict[Any, Any], param: Tensor, state: dict[str, Any]) -> dict[str, Any]:
    """The state of ``param`` as local tensors: the cached dict if ``state`` still holds the
    DTensors made from it (else a checkpoint was loaded, or state created: take it afresh)."""
    known = cache.get(param)
    if known is not None:
        local, wrapped = known
        if state.keys() == wrapped.keys() and all(state[k] is wrapped[k][1] for k in state):
            return local
    local = {key: value.to_local() if is_dtensor(value) else value for key, value in state.items()}
    cache[param] = (local, {key: (local[key], value) for key, value in state.items()})
    return local


def _wrap_state(cache: dict[Any, Any], param: Tensor, state: dict[str, Any],
                local: dict[str, Any]) -> None:
    """Mirror the local state into ``state``: entries shaped like the local shard as DTensors
    placed like ``param`` (views of the same memory), others (counters, 8-bit block scales) as
    they are."""
    from sgdlab.optim.quantized import SUFFIX  # (quantized imports this module)

    _, wrapped = cache[param]
    shard_shape = param.to_local().shape
    for key in [key for key in state if key not in local]:
        del state[key]
        wrapped.pop(key, None)
    for key, value in local.items():
        known = wrapped.get(key)
        if known is not None and known[0] is value and state.get(key) is known[1]:
            continue
        if (isinstance(value, Tensor) and value.dim() and value.shape == shard_shape
                and not key.endswith(SUFFIX)):
            outer = DTensor.from_local(value, param.device_mesh, param.placements,
                                       run_check=False, shape=param.shape, stride=param.stride())
        else:
            outer = value
        state[key] = outer
        wrapped[key] = (value, outer)
    for key in [key for key in wrapped if key not in local]:
        del wrapped[key]


# --- sums over every shard -----------------------------------------------------------------------
def reduction_groups(params: list[Tensor]) -> list[Any]:
    """The process groups over which ``params`` (DTensors) are sharded: their mesh's dimensions
    with a ``Shard`` placement (a Replicate dimension holds copies, which must not be added)."""
    groups: dict[Any, Any] = {}
    for param in params:
        if not is_dtensor(param):
            continue
        mesh = param.device_mesh
        for dim, placement in enumerate(param.placements):
            if isinstance(placement, Shard):
                group = mesh.get_group(dim)
                groups[id(group)] = group
    return list(groups.values())


def global_sum(values: list[float], params: list[Tensor], zero_group: Any = None) -> list[float]:
    """``values`` (this rank's partial sums over its shards of ``params``) summed over all
    shards: over the DTensors' sharded mesh dimensions, or over ``zero_group`` (the process
    group of the ZeroRedundancyOptimizer whose partition this rank holds). Every rank of the
    group must call it, with or without parameters of its own. In float64, so the sum loses
    nothing to the reduction."""
    groups = reduction_groups(params)
    if zero_group is not None:
        groups.append(zero_group)
    if not groups:
        return values
    import torch.distributed as dist

    device = _collective_device(params, groups)
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    for group in groups:
        dist.all_reduce(totals, group=group)
    return totals.tolist()


def _collective_device(params: list[Tensor], groups: list[Any]) -> torch.device:
    import torch.distributed as dist

    backend = dist.get_backend(groups[0])
    if "nccl" in str(backend) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return params[0].device if params else torch.device("cpu")


def local(tensor: Tensor) -> Tensor:
    """The rank's shard of ``tensor`` (the tensor itself if it is not a DTensor)."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


# --- ZeroRedundancyOptimizer ---------------------------------------------------------------------
def constructing_zero() -> Any:
    """The ``ZeroRedundancyOptimizer`` that is constructing the caller's optimizer as its local
    optimizer (None outside one). ZeRO builds it as ``optimizer_class(this_ranks_param_groups,
    **hyperparameters)``: only the call stack says that the parameters are one rank's
    partition."""
    zero_class = _zero_class()
    if zero_class is None:
        return None
    frame = sys._getframe(1)
    for _ in range(12):
        frame = frame.f_back
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, zero_class) and frame.f_code.co_name == "_init_local_optimizer":
            return owner
    return None


def zero_process_group() -> Any:
    """The process group of :func:`constructing_zero`'s ZeRO instance (None outside one)."""
    owner = constructing_zero()
    return None if owner is None else owner.process_group


def sync_zero(owner: Any) -> None:
    """After the local optimizer of ZeRO ``owner`` moved its partition of the parameters outside
    a step (schedule-free's train/eval): the param groups' keys back to ZeRO's groups (which a
    step copies to the local optimizer), and every rank's partition to every rank, as ZeRO's
    step does. Collective: every rank calls it."""
    owner._sync_param_groups(owner.optim.param_groups, owner.param_groups)
    owner._sync_params()


def _zero_class() -> Any:
    module = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    return getattr(module, "ZeroRedundancyOptimizer", None)


# --- 8-bit block scales in checkpoints -----------------------------------------------------------
# A rank's block scales (one per BLOCK elements of its shard) have no place in the parameter's
# shape. In a state_dict they are a DTensor sharded over the parameter's sharding dimension,
# each rank's part padded to the count of the largest shard, so that every rank's part has
# the size torch's even chunking gives it and torch.distributed.checkpoint can save and
# reload it (between runs of the same layout; widen_state_dict for any other).
def _shard_dim(param: Any) -> int:
    dims = [dim for dim, placement in enumerate(param.placements) if isinstance(placement, Shard)]
    if len(dims) != 1:
        raise ValueError(
            "Invalid state_dtype: 8-bit state on parameters sharded over "
            f"{len(dims)} mesh dimensions (placements {param.placements}); supported: exactly "
            "one sharded dimension (FSDP2, HSDP), or use torch.bfloat16"
        )
    return dims[0]


def largest_shard_blocks(param: Any, block: int) -> int:
    """The block count of the largest shard of DTensor ``param``."""
    dim = _shard_dim(param)
    shape = list(param.shape)
    tensor_dim = param.placements[dim].dim
    size = param.device_mesh.size(dim)
    shape[tensor_dim] = -(-shape[tensor_dim] // size)
    numel = 1
    for n in shape:
        numel *= n
    return -(-numel // block)


def check_eight_bit(param: Any) -> None:
    """A ValueError (before anything changes) if ``param``'s sharding cannot hold 8-bit state."""
    _shard_dim(param)


def global_scales(codes: Any, scales: Tensor, block: int) -> Any:
    """This rank's block ``scales`` as a part of a DTensor over all ranks' (zeros after its
    own blocks, up to the largest shard's count)."""
    from torch.distributed.tensor import Replicate

    width = largest_shard_blocks(codes, block)
    padded = torch.zeros(width, dtype=scales.dtype, device=scales.device)
    padded[:scales.numel()] = scales
    dim = _shard_dim(codes)
    placements = [Replicate()] * codes.device_mesh.ndim
    placements[dim] = Shard(0)
    size = codes.device_mesh.size(dim)
    return DTensor.from_local(padded, codes.device_mesh, placements, run_check=False,
                              shape=(width * size,), stride=(1,))


def local_scales(codes: Any, scales: Any, block: int) -> Tensor:
    """Undo :func:`global_scales`: the block scales of this rank's shard of ``codes``."""
    blocks = -(-codes.to_local().numel() // block)
    return scales.to_local()[:blocks].clone()


def expected_scales(param: Any, block: int) -> int:
    """How many elements a DTensor of block scales of ``param`` has (:func:`global_scales`)."""
    return largest_shard_blocks(param, block) * param.device_mesh.size(_shard_dim(param))


def check_in_backward(params: list[Tensor]) -> None:
    """Refuse optimizer-in-backward on parameters that several processes hold whole (DDP,
    ZeroRedundancyOptimizer): a post-accumulate-grad hook sees this rank's gradient before DDP
    averages it over the ranks. FSDP2 calls the hooks with the reduced shard (DTensors)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    plain = [i for i, param in enumerate(params) if not is_dtensor(param)]
    if plain:
        raise ValueError(
            "optimizer_in_backward with DistributedDataParallel or ZeroRedundancyOptimizer "
            f"(parameter {plain[0]} is a plain tensor in a group of {dist.get_world_size()} "
            "processes): the hook would update it from this rank's gradient before DDP averages "
            "it; use FSDP2 (fully_shard), whose hooks see the averaged gradient, or step()"
        )
