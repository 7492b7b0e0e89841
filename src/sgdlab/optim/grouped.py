"""The fast default execution: a rule traced once per step, run over a whole param group.

The traced program (:mod:`sgdlab.optim.tracing`) updates the group's flat state
(:mod:`sgdlab.optim.layout`). On CPU (float32/64) it runs as one C loop over all of the group's
tensors (:mod:`sgdlab.optim.native`). Elsewhere, or without a C compiler, it runs once over all
small tensors (concatenated) and once per large tensor (in place): eagerly, bit-identical to
:func:`sgdlab.optim.per_tensor.per_tensor`, or for groups of ``COMPILE_MIN_NUMEL`` elements or
more compiled by Inductor (:mod:`sgdlab.optim.runners`). 8-bit state without the C loop is
decoded, updated and encoded bucket by bucket. Anything it cannot run, it declines, having
changed nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor

from sgdlab.optim import native, quantized, replay, runners, tracing
from sgdlab.optim.layout import GroupLayout
from sgdlab.optim.per_tensor import COUNTERS, Rule

# A param group (one device and dtype) is compiled when it holds at least this many elements:
# below, the eager program is fast enough and the one-off compile (seconds) would not pay back.
COMPILE_MIN_NUMEL = 1 << 20
COMPILED_DTYPES = (torch.float32, torch.float64)
# Large tensors per compiled call: the Python-side cost of a compiled call (guards, wrappers:
# 50 us on an idle core, much more on a busy one) is paid once per this many tensors.
BATCH_SLOTS = 8
# Compact state storage: bfloat16, or torch.uint8 for 8-bit blockwise codes (optim.quantized).
COMPACT_DTYPES = (torch.bfloat16, torch.uint8)

_compile_failed: list[str] = []


def grouped_supported(params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> bool:
    """Whether the grouped strategy applies; anything unusual takes the per-tensor path."""
    if group.get("differentiable") or group.get("capturable") or group.get("foreach") is False:
        return False
    dtype, device = params[0].dtype, params[0].device
    if dtype.is_complex or not dtype.is_floating_point:
        return False
    plain = (Tensor, torch.nn.Parameter)  # tensor subclasses (DTensor, ...) go per-tensor
    strided = torch.strided
    # torch checks a gradient's dtype, device and shape when .grad is assigned, but not when
    # .grad.data is: dtype and shape are checked again, since the C loop trusts them.
    for param, grad in zip(params, grads):
        if (
            type(param) not in plain
            or type(grad) is not Tensor
            or param.dtype is not dtype
            or grad.dtype is not dtype
            or param.device != device
            or grad.layout is not strided
            or grad.shape != param.shape
            or not param.is_contiguous()
            or not grad.is_contiguous()
        ):
            return False
    return True


def grouped(
    rule: Rule,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    hyperparameters: dict[str, Any],
    *,
    layouts: dict[Any, GroupLayout],
    layout_key: Any,
    compile: bool | None = None,
    state_dtype: torch.dtype | None = None,
    rounding_step: int = 0,
) -> bool:
    """Run ``rule`` over a whole group at once (see :mod:`sgdlab.optim.tracing`).

    All parameters must share device and dtype (:func:`grouped_supported`). ``compile=None``
    compiles groups of at least ``COMPILE_MIN_NUMEL`` elements. ``state_dtype`` stores the
    rule's tensor state in a compact format: bfloat16, or ``torch.uint8`` for 8-bit blockwise
    codes (:mod:`sgdlab.optim.quantized`), both rounded stochastically, with noise seeded by
    ``rounding_step`` (a count the caller keeps in its checkpoint). Returns False,
    having changed nothing, when the rule or the state cannot be run this way; the caller then
    uses :func:`sgdlab.optim.per_tensor.per_tensor`.
    """
    dtype = params[0].dtype
    compact = state_dtype is not None and state_dtype != dtype
    if compact and (state_dtype not in COMPACT_DTYPES or dtype != torch.float32):
        raise ValueError(
            f"Invalid state_dtype: {state_dtype} for {dtype} parameters "
            "(supported for float32 parameters: torch.bfloat16, or torch.uint8 for 8-bit "
            "blockwise-quantized state)"
        )
    storage = state_dtype if compact else dtype
    eight_bit = storage == torch.uint8

    # Classify the state: counters are numbers shared by the group, the rest tensors like the
    # parameter. Anything else (a parameter that joined late, a foreign entry) is per-tensor work.
    keyset = states[0].keys()
    if any(state.keys() != keyset for state in states):
        return False
    # 8-bit entries come with their block scales (``key + ".absmax"``): part of the entry.
    tensor_keys = sorted(key for key in keyset
                         if key not in COUNTERS and not key.endswith(quantized.SUFFIX))
    numbers: dict[str, Any] = {}
    counters: dict[str, Any] = {}
    layout = layouts.get(layout_key)
    for key in sorted(key for key in keyset if key in COUNTERS):
        values = [state[key] for state in states]
        flat = layout.counter(key, values) if layout is not None else None
        if flat is not None:  # our one tensor of this group's counters: one check, one read
            number = layout.counter_value(key, flat)
            if number is None:  # written by someone else since our last step: look
                if len(values) > 1 and not bool((flat == flat[0]).all()):
                    return False
                number = flat[0].item()
            numbers[key] = number
            counters[key] = flat
            continue
        if all(isinstance(v, Tensor) for v in values):
            if len(values) > 1 and not bool((torch.stack(values) == values[0]).all()):
                return False
            numbers[key] = values[0].item()
        elif all(isinstance(v, (int, float)) for v in values) and len(set(values)) == 1:
            numbers[key] = values[0]
        else:
            return False
        counters[key] = values
    if layout is None or not layout.matches(params, states, tensor_keys, storage):
        layout = None  # the state is not (or no longer) ours: check it before adopting it
        for key in tensor_keys:
            for state, param in zip(states, params):
                value = state[key]
                codes = key + quantized.SUFFIX in state
                if not (isinstance(value, Tensor) and value.shape == param.shape
                        and value.device == param.device
                        and (value.dtype in (dtype, storage) or codes)):
                    return False

    try:
        program = replay.trace(
            rule, tensor_keys, numbers, hyperparameters,
            compact=compact and not eight_bit,  # 8-bit codes are decoded around the program
        )
    except tracing.TraceError:
        return False

    if layout is None:
        layout = GroupLayout(params, states, tensor_keys, storage)
        layouts[layout_key] = layout
    for key in program.new_keys:
        layout.adopt(key, states)

    total = layout.total
    device = params[0].device
    tensor_scalars = program.tensor_scalars
    all_keys = tensor_keys + program.new_keys
    buffers = [layout.buffers[key] for key in all_keys]
    # The stochastic rounding's seed: a fresh one every step; the noise of an element is a
    # hash of seed + its position in the flat state, whichever path runs.
    seed = (rounding_step * 0x632BE5AB) & 0xFFFFFFFF if compact else 0
    # On CPU the rule runs as one C loop over the whole group (compiled once per program text
    # and machine: 0.2 s, up to 1 s for 8-bit state); elsewhere Inductor, or eager PyTorch.
    if compile is not False and device.type == "cpu" and dtype in native.DTYPES:
        kernel = native.kernel(program, dtype, 2 + len(buffers), quantized=eight_bit)
        if kernel is not None:
            plan = layout.native_plan(all_keys)
            plan.run(kernel, params, grads, [float(v) for v in program.scalars],
                     [float(c.item()) for c in tensor_scalars], seed)
            _store_results(program, layout, states, counters, numbers)
            return True

    use_compiled = compile if compile is not None else total >= COMPILE_MIN_NUMEL
    use_compiled = (
        use_compiled
        and dtype in COMPILED_DTYPES
        and not _compile_failed
        and runners.worth_compiling(program)
    )
    function = runners.compiled(program) if use_compiled else runners.eager(program)
    scalars = runners.scalar_inputs(program, device, as_tensor=use_compiled, dtype=dtype)

    if eight_bit:
        _eight_bit_steps(function, scalars, program, layout, params, grads, all_keys, seed,
                         compiled=use_compiled)
        _store_results(program, layout, states, counters, numbers)
        return True

    def constants(offset: int) -> list[Tensor]:
        if not compact:
            return tensor_scalars
        call_seed = (seed + offset) & 0xFFFFFFFF
        call_seed -= (call_seed >> 31) << 32  # as a signed int32: PyTorch's int32 wraps alike
        return [torch.tensor(call_seed, dtype=torch.int32, device=device), *tensor_scalars[1:]]

    def call(t: list[Tensor], offset: int) -> None:
        c = constants(offset)
        nonlocal function, scalars
        try:
            function(t, scalars, c)
        except Exception as error:  # noqa: BLE001 - e.g. no C++ compiler: run eagerly, say so once
            if function is runners.eager(program):
                raise
            _give_up_compiling(error)
            function = runners.eager(program)
            scalars = runners.scalar_inputs(program, device, as_tensor=False)
            function(t, scalars, c)

    if layout.small:
        with _one_thread(device):
            _small_region(layout, params, grads, buffers, call)
    big = [
        ([params[i].view(-1), grads[i].view(-1),
          *[b[layout.offsets[i]: layout.offsets[i] + layout.numels[i]] for b in buffers]],
         layout.offsets[i])
        for i in layout.big
    ]
    if use_compiled and len(big) > 1 and not _compile_failed:
        batch = runners.compiled_batch(program, BATCH_SLOTS)
        for first in range(0, len(big), BATCH_SLOTS):
            if _compile_failed:  # the first batch failed to compile: the rest eagerly
                for t, offset in big[first:]:
                    call(t, offset)
                break
            chunk = big[first: first + BATCH_SLOTS]
            ts = [t for t, _ in chunk]
            cs = [constants(offset) for _, offset in chunk]
            while len(ts) < BATCH_SLOTS:  # pad with scratch tensors: one compiled shape
                ts.append(layout.scratch([t.dtype for t in ts[0]]))
                cs.append(cs[0])
            try:
                batch(ts, scalars, cs)
            except Exception as error:  # noqa: BLE001 - as in call(): eager from now on
                _give_up_compiling(error)
                for t, offset in chunk:
                    call(t, offset)
    else:
        for t, offset in big:
            call(t, offset)
    _store_results(program, layout, states, counters, numbers)
    return True


def _eight_bit_steps(function, scalars, program, layout, params, grads, keys, seed,
                     compiled: bool) -> None:
    """8-bit state without the C loop (CUDA, no compiler): bucket by bucket of the flat state,
    decode it to float32, run the float program once over the bucket's pieces of parameters and
    gradients (gathered, each tensor padded to its blocks), encode what it wrote. A few dozen
    operations per bucket, not per tensor; the float32 copies never exceed a bucket. ``compiled``:
    the codec is compiled too (Inductor: Triton on GPUs), as the program is."""
    device = params[0].device
    for bucket in layout.buckets():
        try:
            _eight_bit_bucket(bucket, function, scalars, program, layout, params, grads, keys,
                              seed, compiled)
        except Exception as error:  # noqa: BLE001 - compiling failed: eager from now on, say so
            if not compiled:
                raise
            _give_up_compiling(error)
            compiled, function = False, runners.eager(program)
            scalars = runners.scalar_inputs(program, device, as_tensor=False)
            _eight_bit_bucket(bucket, function, scalars, program, layout, params, grads, keys,
                              seed, compiled)


def _eight_bit_bucket(bucket, function, scalars, program, layout, params, grads, keys, seed,
                      compiled: bool) -> None:
    # Nothing is written back until everything is computed: a failure leaves the state as it was.
    encode, decode = quantized.compiled_codec() if compiled else (quantized.encode, quantized.decode)
    param_pieces = [params[i].view(-1)[a:b] for i, a, b in bucket.pieces]
    device = params[0].device
    zeros = torch.zeros(quantized.BLOCK, dtype=params[0].dtype, device=device)

    def gather(pieces: list[Tensor]) -> Tensor:  # each piece followed by its padding
        return torch.cat([part for piece, pad in zip(pieces, bucket.pads)
                          for part in (piece, zeros[:pad])])

    flat_param = gather(param_pieces)
    flat_grad = gather([grads[i].view(-1)[a:b] for i, a, b in bucket.pieces])
    lo, hi, block = bucket.lo, bucket.hi, quantized.BLOCK
    codes = [layout.buffers[key][lo:hi] for key in keys]
    scales = [layout.scales[key][lo // block: hi // block] for key in keys]
    values = [decode(c, q) for c, q in zip(codes, scales)]
    function([flat_param, flat_grad, *values], scalars, program.tensor_scalars)
    encoded = []
    for slot, _ in program.outputs:
        if slot >= 2:
            new = values[slot - 2]
            if bucket.padded:  # what the rule made of the padding is not state: zeros, as in C
                new.masked_fill_(bucket.pad_mask(device), 0.0)
            entry_seed, position = quantized.entry_seed(seed, slot), lo
            if compiled:  # numbers as tensors: one compiled function for every step and bucket
                entry_seed = torch.tensor(entry_seed, dtype=torch.int64, device=device)
                position = torch.tensor(position, dtype=torch.int64, device=device)
            encoded.append((slot, *encode(new, entry_seed, position)))
    for slot, new_codes, new_scales in encoded:
        codes[slot - 2].copy_(new_codes)
        scales[slot - 2].copy_(new_scales)
    torch._foreach_copy_(param_pieces, list(flat_param.split(bucket.sizes)[::2]))


def _give_up_compiling(error: Exception) -> None:
    import warnings

    _compile_failed.append(repr(error))
    warnings.warn(
        f"sgdlab: compiling the optimizer step failed ({type(error).__name__}: {error}); "
        "running it eagerly from now on",
        RuntimeWarning,
        stacklevel=5,
    )


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    # Concatenating ~100 small tensors is ~100 tiny parallel regions: microseconds each on one
    # thread, but milliseconds each when another process holds the second core (OpenMP threads
    # wait for each other at every region's barrier). The small region is small: one thread.
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _small_region(layout, params, grads, buffers, call) -> None:
    """Concatenate the small tensors, run the program once over them, copy the results back."""
    small, n = layout.small, layout.small_numel
    if len(small) == 1:
        i = small[0]
        call([params[i].view(-1), grads[i].view(-1), *[b[:n] for b in buffers]], 0)
        return
    flat_params = [params[i].view(-1) for i in small]
    flat_param = torch.cat(flat_params)
    flat_grad = torch.cat([grads[i].view(-1) for i in small])
    call([flat_param, flat_grad, *[b[:n] for b in buffers]], 0)
    sizes = [layout.numels[i] for i in small]
    torch._foreach_copy_(flat_params, list(torch.split(flat_param, sizes)))


def _store_results(program, layout, states, counters, numbers) -> None:
    """Install views of newly created state buffers; write the new counter values."""
    for key in program.new_keys:
        layout.install(key, states)
    for key, value in program.numbers.items():
        olds = counters.get(key)
        if (isinstance(olds, list) and all(isinstance(v, Tensor) and v.dim() == 0
                                           and v.dtype == olds[0].dtype
                                           and v.device == olds[0].device for v in olds)):
            # Per-tensor counters (torch.optim's layout, a fresh or loaded state): from now on
            # they are views of one tensor of the layout's.
            olds = layout.adopt_counter(key, olds, states)
        elif isinstance(olds, list) and isinstance(olds[0], Tensor):  # mixed: one by one
            for old in olds:
                old.fill_(value)
            continue
        if isinstance(olds, Tensor):
            base = numbers.get(key)
            if (isinstance(value, (int, float)) and isinstance(base, (int, float))
                    and float(value).is_integer() and float(base).is_integer()
                    and abs(value) < 2**24):
                olds.add_(value - base)  # integers: exact, and no tensor built from a number
                layout.remember_counter(key, olds, float(value) if olds.is_floating_point()
                                        else int(value))
            else:
                olds.fill_(value)
        else:
            for state in states:
                state[key] = value
