"""How a rule is executed over a parameter group's tensors.

A rule is pure: it returns new values. Execution writes them back in place, so parameters keep
their identity (hooks, DDP buckets and FSDP2 DTensors keep pointing at the same tensors) and the
optimizer state keeps torch.optim's layout.

The strategies all run the rule itself (no optimizer math lives here):

``per_tensor``  the reference: one eager rule call per tensor. Used for ``foreach=False``,
                ``differentiable``, ``capturable``, complex or sparse tensors, tensor subclasses
                (DTensor), mixed devices/dtypes, and any rule that cannot be traced.
``grouped``     the default: the rule is traced once per step into an elementwise program
                (:mod:`sgdlab.optim.program`), and the state of the group is kept in one flat
                buffer per entry. On CPU (float32/64) the program runs as one C loop over all of
                the group's tensors (:mod:`sgdlab.optim.native`). Elsewhere, or without a C
                compiler, it runs once over all small tensors (concatenated) and once per large
                tensor (in place): eagerly, bit-identical to ``per_tensor``, or for groups of
                ``COMPILE_MIN_NUMEL`` elements or more compiled by Inductor. The C loop and
                Inductor are bit-identical to ``per_tensor`` run with a correctly rounded sqrt;
                eager PyTorch's CPU ``sqrt`` (MKL's) is not (Adam's parameters then differ in
                the last bits, less than torch.optim's fused Adam differs from its for-loop:
                docs/drop-in.md).
                Compact state (bfloat16, 8-bit) is stored here too: see ``GroupLayout``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from sgdlab.optim import native, quantized, replay, torch_ops

Rule = Callable[..., tuple[Any, dict[str, Any]]]


# State entries that count steps. torch.optim stores them as 0-d tensors but, unless
# ``capturable``, reads them as Python numbers, which keeps bias corrections in double precision
# whatever the state dtype; rules see them the same way.
COUNTERS = ("step",)


def rule_state(state: dict[str, Any], *, capturable: bool) -> dict[str, Any]:
    """The state as a rule sees it: counters as numbers unless ``capturable``."""
    if capturable:
        return dict(state)
    return {
        key: value.item() if key in COUNTERS and isinstance(value, Tensor) else value
        for key, value in state.items()
    }


def write_back(state: dict[str, Any], new_state: dict[str, Any]) -> None:
    """Store a rule's new state in place; entries seen for the first time are copied in."""
    for key, new in new_state.items():
        old = state.get(key)
        if isinstance(old, Tensor):
            if isinstance(new, Tensor):
                old.copy_(new)
            else:
                old.fill_(new)
        else:
            # A fresh entry may alias an input (SGD's first momentum buffer is the gradient):
            # copy it so that zeroing the gradient later cannot change the state.
            state[key] = torch.clone(new).detach() if isinstance(new, Tensor) else new


def per_tensor(
    rule: Rule,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    hyperparameters: dict[str, Any],
    *,
    capturable: bool = False,
    ops: Any = torch_ops,
) -> None:
    """The reference execution: one rule call per tensor, in eager PyTorch (``ops``)."""
    for param, grad, state in zip(params, grads, states):
        if torch.is_complex(param):
            _complex_step(rule, param, grad, state, hyperparameters, capturable)
            continue
        new_param, new_state = rule(
            param, grad, rule_state(state, capturable=capturable), ops=ops, **hyperparameters
        )
        param.copy_(new_param)
        write_back(state, new_state)


def _complex_step(rule, param, grad, state, hyperparameters, capturable) -> None:
    # Complex parameters are optimized as pairs of reals (torch.optim's convention), so Adam's
    # second moment is taken per real component, not as the complex square g*g.
    real_state = {
        key: torch.view_as_real(value) if isinstance(value, Tensor) and value.is_complex() else value
        for key, value in state.items()
    }
    new_param, new_state = rule(
        torch.view_as_real(param),
        torch.view_as_real(grad),
        rule_state(real_state, capturable=capturable),
        ops=torch_ops,
        **hyperparameters,
    )
    torch.view_as_real(param).copy_(new_param)
    write_back(real_state, new_state)
    for key, value in real_state.items():
        if isinstance(value, Tensor) and not isinstance(state.get(key), Tensor):
            state[key] = torch.view_as_complex(value)


# --- grouped execution: the fast default ----------------------------------------------------------
# Tensors with at least this many elements are updated in place, one program call each; smaller
# ones are concatenated and updated by a single call, then copied back. A call costs tens of
# microseconds, copying costs 24 bytes per element (gather parameter and gradient, scatter the
# parameter), so the break-even lies near 20k elements; ResNet-50 then needs 42 calls and copies
# 0.3M of its 25.6M parameters.
BIG_TENSOR_NUMEL = 65536
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


class GroupLayout:
    """Flat storage of the state of one param group's tensors of one device and dtype.

    Each tensor state entry (``exp_avg``, ``momentum_buffer``, ...) lives in one flat buffer per
    key; ``state[param][key]`` is a view of it shaped like the parameter, so ``state_dict()``
    keeps torch.optim's layout while the step sees one contiguous vector. Small tensors come
    first, so their state is a single slice that lines up with the concatenated parameters.
    """

    def __init__(self, params: list[Tensor], states: list[dict[str, Any]], keys: list[str],
                 storage: torch.dtype) -> None:
        self.params = params
        numels = [p.numel() for p in params]
        # 8-bit state is kept in blocks that never straddle two tensors: every tensor starts on
        # a block boundary and is updated on its own (no concatenation of small tensors).
        self.quantized = storage == torch.uint8
        align = quantized.BLOCK if self.quantized else 1
        threshold = 0 if self.quantized else BIG_TENSOR_NUMEL
        self.small = [i for i, n in enumerate(numels) if n < threshold]
        self.big = [i for i, n in enumerate(numels) if n >= threshold]
        self.offsets = [0] * len(params)
        offset = 0
        for i in self.small + self.big:
            self.offsets[i] = offset
            offset += -(-numels[i] // align) * align
        self.numels = numels
        self.total = offset
        self.small_numel = sum(numels[i] for i in self.small)
        self.storage = storage
        self.buffers: dict[str, Tensor] = {}
        self.views: dict[str, list[Tensor]] = {}
        self.scales: dict[str, Tensor] = {}  # 8-bit state: one float32 scale per block
        self.scale_views: dict[str, list[Tensor]] = {}
        for key in keys:
            self.adopt(key, states)
            for i, state in enumerate(states):
                self._take(key, i, state)
            self.install(key, states)

    def _take(self, key: str, i: int, state: dict[str, Any]) -> None:
        """Copy an existing state entry into this layout's storage, converting its format."""
        value, scales = state[key], state.pop(key + quantized.SUFFIX, None)
        if scales is not None and not self.quantized:  # 8-bit state, now stored wider
            value = quantized.decode(value.reshape(-1).to(torch.uint8), scales).view(value.shape)
        if not self.quantized:
            self.views[key][i].copy_(value)
        elif scales is not None:  # already 8-bit (torch's load_state_dict made codes floats)
            self.views[key][i].copy_(value.to(torch.uint8))
            self.scale_views[key][i].copy_(scales)
        elif value.any():  # (a fresh buffer already holds the codes of zeros)
            codes, new_scales = quantized.encode(value.reshape(-1).float(), 0, self.offsets[i])
            self.views[key][i].copy_(codes.view(value.shape))
            self.scale_views[key][i].copy_(new_scales)

    def adopt(self, key: str, states: list[dict[str, Any]]) -> Tensor:
        """Allocate the flat buffer for ``key`` (views are installed by the caller)."""
        first = self.params[0]
        # Each entry's buffer starts a different number of cache lines past the allocator's
        # alignment. Same-size buffers otherwise start on the same large power-of-two boundary,
        # and the step's streams through them compete for the same cache sets (measured on
        # 8 x 4M, one thread: Adam at 1.25x of torch fused without this, 0.86x with it).
        shift = 33 * (1 + len(self.buffers)) * 64 // self.storage.itemsize
        buffer = torch.zeros(self.total + shift, dtype=self.storage, device=first.device)[shift:]
        self.buffers[key] = buffer
        self.views[key] = [
            buffer[self.offsets[i]: self.offsets[i] + n].view(p.shape)
            for i, (p, n) in enumerate(zip(self.params, self.numels))
        ]
        if self.quantized:
            block = quantized.BLOCK
            scales = torch.zeros(self.total // block, dtype=torch.float32, device=first.device)
            self.scales[key] = scales
            self.scale_views[key] = [
                scales[self.offsets[i] // block: self.offsets[i] // block + -(-n // block)]
                for i, n in enumerate(self.numels)
            ]
        return buffer

    def scratch(self, dtypes: list[torch.dtype]) -> list[Tensor]:
        """Throw-away 2-element tensors that fill the unused slots of a batched call."""
        key = tuple(dtypes)
        cache = self.__dict__.setdefault("_scratch", {})
        if key not in cache:
            device = self.params[0].device
            cache[key] = [torch.zeros(2, dtype=dtype, device=device) for dtype in dtypes]
        return cache[key]

    def buckets(self) -> list["Bucket"]:
        """The flat state cut into block-aligned ranges of at most ``BUCKET_NUMEL`` elements
        (8-bit state's PyTorch path works a bucket at a time)."""
        found = self.__dict__.get("_buckets")
        if found is None:
            found = self._buckets = _cut_into_buckets(self.offsets, self.numels, quantized.BLOCK)
        return found

    def native_plan(self, keys: list[str]) -> Any:
        """The C path's pointer table and chunks (:class:`sgdlab.optim.native.Plan`)."""
        buffers = [self.buffers[key] for key in keys]
        scales = [self.scales[key] for key in keys] if self.quantized else []
        pointers = tuple(b.data_ptr() for b in buffers + scales)
        plan = self.__dict__.get("_plan")
        if plan is None or plan[0] != pointers:
            plan = (pointers, native.Plan(self.numels, self.offsets, buffers, scales,
                                          quantized.BLOCK))
            self._plan = plan
        return plan[1]

    def counter(self, key: str, values: list[Any]) -> Tensor | None:
        """This group's counters ``key`` as one tensor, if ``values`` are still its views."""
        owned = self.__dict__.get("_counters", {}).get(key)
        if owned is None or len(owned[1]) != len(values):
            return None
        flat, views = owned
        if any(v is not w for v, w in zip(values, views)):
            return None
        return flat

    def counter_value(self, key: str, flat: Tensor) -> Any:
        """The number this layout last wrote into counter ``flat``, if nothing has written to
        it since (its version counter says so): no tensor read, which costs more than the rest
        of a small model's step bookkeeping. None otherwise."""
        known = self.__dict__.get("_counter_values", {}).get(key)
        if known is None or known[0] is not flat or known[1] is None:
            return None
        return known[2] if _version(flat) == known[1] else None

    def remember_counter(self, key: str, flat: Tensor, value: Any) -> None:
        self.__dict__.setdefault("_counter_values", {})[key] = (flat, _version(flat), value)

    def adopt_counter(self, key: str, values: list[Tensor],
                      states: list[dict[str, Any]]) -> Tensor:
        """Keep per-tensor counters (0-d tensors, as torch.optim stores ``step``) as views of
        one tensor: one operation advances them all (161 separate ones cost a millisecond)."""
        flat = torch.stack([v.detach() for v in values])
        views = [flat[i] for i in range(len(values))]
        for state, view in zip(states, views):
            state[key] = view
        self.__dict__.setdefault("_counters", {})[key] = (flat, views)
        return flat

    def install(self, key: str, states: list[dict[str, Any]]) -> None:
        for state, view in zip(states, self.views[key]):
            state[key] = view
        if self.quantized:
            for state, view in zip(states, self.scale_views[key]):
                state[key + quantized.SUFFIX] = view

    def matches(self, params: list[Tensor], states: list[dict[str, Any]], keys: list[str],
                storage: torch.dtype) -> bool:
        if storage != self.storage or len(params) != len(self.params):
            return False
        if any(a is not b for a, b in zip(params, self.params)):
            return False
        for key in keys:
            views = self.views.get(key)
            if views is None or any(s.get(key) is not v for s, v in zip(states, views)):
                return False
            if self.quantized:
                side, views = key + quantized.SUFFIX, self.scale_views[key]
                if any(s.get(side) is not v for s, v in zip(states, views)):
                    return False
        return True


def _version(tensor: Tensor) -> int | None:
    """A tensor's version counter (bumped by every in-place write), None for an inference tensor."""
    try:
        return tensor._version
    except RuntimeError:
        return None


# 8-bit state on the PyTorch path (CUDA, no compiler) is decoded, updated and encoded this many
# elements at a time: enough that per-operation overhead is noise, small enough that the float32
# copies and the codec's temporaries (about 50 bytes per element) stay small.
BUCKET_NUMEL = 1 << 21


class Bucket:
    """A block-aligned range ``lo:hi`` of a layout's flat state and the tensor pieces in it:
    ``(tensor index, start, stop)``, each followed in the flat state by ``pads`` unused slots."""

    def __init__(self, lo: int, pieces: list[tuple[int, int, int]], pads: list[int]) -> None:
        self.lo, self.pieces, self.pads = lo, pieces, pads
        self.sizes = [n for (_, a, b), pad in zip(pieces, pads) for n in (b - a, pad)]
        self.hi = lo + sum(self.sizes)
        self.padded = any(pads)
        self._masks: dict[Any, Tensor] = {}

    def pad_mask(self, device: torch.device) -> Tensor:
        """True at the padding slots."""
        if device not in self._masks:
            mask = torch.zeros(self.hi - self.lo, dtype=torch.bool)
            position = 0
            for n, pad in zip(self.sizes[::2], self.sizes[1::2]):
                mask[position + n: position + n + pad] = True
                position += n + pad
            self._masks[device] = mask.to(device)
        return self._masks[device]


def _cut_into_buckets(offsets: list[int], numels: list[int], block: int) -> list[Bucket]:
    buckets: list[Bucket] = []
    pieces: list[tuple[int, int, int]] = []
    pads: list[int] = []
    lo = size = 0
    for i in sorted(range(len(offsets)), key=offsets.__getitem__):
        n = numels[i]
        for start in range(0, n, BUCKET_NUMEL):  # a large tensor is cut at block boundaries
            stop = min(n, start + BUCKET_NUMEL)
            padded = -(-(stop - start) // block) * block
            if pieces and size + padded > BUCKET_NUMEL:
                buckets.append(Bucket(lo, pieces, pads))
                pieces, pads, size = [], [], 0
            if not pieces:
                lo = offsets[i] + start
            pieces.append((i, start, stop))
            pads.append(padded - (stop - start))
            size += padded
    if pieces:
        buckets.append(Bucket(lo, pieces, pads))
    return buckets


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
    """Run ``rule`` over a whole group at once (see :mod:`sgdlab.optim.program`).

    All parameters must share device and dtype (:func:`grouped_supported`). ``compile=None``
    compiles groups of at least ``COMPILE_MIN_NUMEL`` elements. ``state_dtype`` stores the
    rule's tensor state in a compact format: bfloat16, or ``torch.uint8`` for 8-bit blockwise
    codes (:mod:`sgdlab.optim.quantized`), both rounded stochastically, with noise seeded by
    ``rounding_step`` (a count the caller keeps in its checkpoint). Returns False,
    having changed nothing, when the rule or the state cannot be run this way; the caller then
    uses :func:`per_tensor`.
    """
    from sgdlab.optim import program as programs

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
    except programs.TraceError:
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
        and programs.worth_compiling(program)
    )
    function = programs.compiled(program) if use_compiled else programs.eager(program)
    scalars = programs.scalar_inputs(program, device, as_tensor=use_compiled, dtype=dtype)

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
            if function is programs.eager(program):
                raise
            _give_up_compiling(error)
            function = programs.eager(program)
            scalars = programs.scalar_inputs(program, device, as_tensor=False)
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
        batch = programs.compiled_batch(program, BATCH_SLOTS)
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
    from sgdlab.optim import program as programs

    device = params[0].device
    for bucket in layout.buckets():
        try:
            _eight_bit_bucket(bucket, function, scalars, program, layout, params, grads, keys,
                              seed, compiled)
        except Exception as error:  # noqa: BLE001 - compiling failed: eager from now on, say so
            if not compiled:
                raise
            _give_up_compiling(error)
            compiled, function = False, programs.eager(program)
            scalars = programs.scalar_inputs(program, device, as_tensor=False)
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
