"""The flat storage of a param group's optimizer state (:class:`GroupLayout`).

Each state entry of a group's tensors (one device and dtype) lives in one flat buffer, with
torch.optim's per-parameter tensors as views of it; compact state (bfloat16, 8-bit codes with
their block scales) is stored here too. 8-bit state's PyTorch path walks it in
:class:`Bucket` ranges.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sgdlab.optim import native, quantized

# Tensors with at least this many elements are updated in place, one program call each; smaller
# ones are concatenated and updated by a single call, then copied back. A call costs tens of
# microseconds, copying costs 24 bytes per element (gather parameter and gradient, scatter the
# parameter), so the break-even lies near 20k elements; ResNet-50 then needs 42 calls and copies
# 0.3M of its 25.6M parameters.
BIG_TENSOR_NUMEL = 65536


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

