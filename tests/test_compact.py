"""Compact (bfloat16) optimizer state: half the bytes, float32 arithmetic, unbiased rounding."""

from __future__ import annotations

import copy

import pytest
import torch

import sgdlab
from sgdlab.optim import compact_state
from sgdlab.optim.program import round_to_bfloat16

SHAPES = [(7,), (20, 10), (3, 4, 5)]


def run(cls, options, state_dtype=None, steps=30, seed=0, shapes=SHAPES, min_8bit_size=0):
    """Train on random gradients; 8-bit state covers every tensor, however small, unless
    ``min_8bit_size`` says otherwise (these tests are about the codec, on small shapes)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    group = {"params": params}
    if state_dtype is not None:
        group["state_dtype"] = state_dtype
        group["min_8bit_size"] = min_8bit_size
    optimizer = cls([group], **options)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return params, optimizer


def assert_same_state(a, b, skip=("step",)):
    """Optimizers ``a`` and ``b`` hold bit-identical state (entries in ``skip`` aside)."""
    for state_a, state_b in zip(a.state.values(), b.state.values(), strict=True):
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            if key not in skip:
                assert torch.equal(state_a[key], state_b[key]), key


CASES = [
    (sgdlab.SGD, dict(lr=0.01, momentum=0.9)),
    (sgdlab.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (sgdlab.Adam, dict(lr=0.01)),
    (sgdlab.AdamW, dict(lr=0.01, amsgrad=True)),
]


@pytest.mark.parametrize("cls, options", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_bfloat16_state_is_stored_in_bfloat16_and_halves_the_bytes(cls, options):
    _, compact = run(cls, options, torch.bfloat16, steps=2)
    _, full = run(cls, options, steps=2)

    def tensor_bytes(opt):
        return sum(v.nbytes for s in opt.state.values() for k, v in s.items() if k != "step")

    for state in compact.state.values():
        for key, value in state.items():
            if key != "step":
                assert value.dtype == torch.bfloat16
    assert tensor_bytes(compact) * 2 == tensor_bytes(full)


@pytest.mark.parametrize("cls, options", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_bfloat16_state_follows_the_float32_trajectory(cls, options):
    compact, _ = run(cls, options, torch.bfloat16)
    full, _ = run(cls, options)
    start, _ = run(cls, options, steps=0)
    for a, b, a0 in zip(compact, full, start):
        # bfloat16 keeps 8 significant bits (0.4 % relative error per stored value, unbiased):
        # the distance travelled agrees to about 1 %.
        travelled = (b - a0).abs().max()
        torch.testing.assert_close(a - a0, b - a0, rtol=0, atol=0.01 * travelled.item())


def test_compact_state_helper_converts_an_existing_optimizer():
    params, optimizer = run(sgdlab.AdamW, dict(lr=0.01), steps=2)
    compact_state(optimizer)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in optimizer.state.values())


def test_state_dict_round_trips_the_compact_state_exactly():
    params, optimizer = run(sgdlab.AdamW, dict(lr=0.01), torch.bfloat16, steps=3)
    saved = copy.deepcopy(optimizer.state_dict())
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = sgdlab.AdamW([{"params": clone, "state_dtype": torch.bfloat16}], lr=0.01)
    restored.load_state_dict(saved)
    for p in clone:
        p.grad = torch.zeros_like(p)
    restored.step()  # the loaded (float32-cast) state is taken back into bfloat16 storage
    for p, q in zip(params, clone):
        original, reloaded = optimizer.state[p], restored.state[q]
        assert reloaded["exp_avg"].dtype == torch.bfloat16
        # One step with a zero gradient: exp_avg <- beta1 * exp_avg, from the exact saved values.
        expected = original["exp_avg"].float() * 0.9
        torch.testing.assert_close(reloaded["exp_avg"].float(), expected, rtol=2**-7, atol=0)
    assert saved["param_groups"][0]["state_dtype"] == torch.bfloat16


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.uint8], ids=["bf16", "8bit"])
@pytest.mark.parametrize("cls, options", [CASES[1], CASES[3]], ids=["sgd-nesterov", "amsgrad"])
def test_a_resumed_compact_run_rounds_exactly_like_an_uninterrupted_one(cls, options,
                                                                         state_dtype):
    # The rounding noise's seed comes from a step count kept in the param group (so in the
    # checkpoint): stop, save, load into a fresh optimizer, continue = never stopped.
    straight, resumed, saved = stop_and_resume(cls, options, state_dtype, [(7,), (300, 3)])
    assert saved["param_groups"][0]["compact_state_step"] == 3
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def stop_and_resume(cls, options, state_dtype, shapes, min_8bit_size=0):
    """Parameters after 6 steps of run(), and after 3 steps, a checkpoint, a fresh optimizer
    loading it and the same 3 further gradients; and the checkpoint."""
    straight, _ = run(cls, options, state_dtype, steps=6, shapes=shapes,
                      min_8bit_size=min_8bit_size)
    params, optimizer = run(cls, options, state_dtype, steps=3, shapes=shapes,
                            min_8bit_size=min_8bit_size)
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restarted = cls([{"params": resumed, "state_dtype": state_dtype}], **options)
    restarted.load_state_dict(saved)
    g = torch.Generator().manual_seed(0)  # replay the gradients of run(): skip the first 3
    for s in shapes:
        torch.randn(s, generator=g)
    for _ in range(3):
        for p in resumed:
            torch.randn(p.shape, generator=g)
    for _ in range(3):
        for p in resumed:
            p.grad = torch.randn(p.shape, generator=g)
        restarted.step()
    return straight, resumed, saved


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200_000,), 1.0 + 2**-10)  # 1/8 of a bfloat16 ulp above 1
    rounded = round_to_bfloat16(x, torch.tensor(7, dtype=torch.int32)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(rounded.mean().item() - (1.0 + 2**-10)) < 2e-5


def test_a_slow_average_still_decays_in_bfloat16():
    # Adam's second moment with a zero gradient: v <- 0.999 v. Round-to-nearest would keep v.
    params = [torch.nn.Parameter(torch.zeros(4096))]
    optimizer = sgdlab.Adam([{"params": params, "state_dtype": torch.bfloat16}], lr=0.0)
    params[0].grad = torch.ones(4096)
    optimizer.step()
    for _ in range(200):
        params[0].grad = torch.zeros(4096)
        optimizer.step()
    v = optimizer.state[params[0]]["exp_avg_sq"].float().mean().item()
    assert v == pytest.approx(0.001 * 0.999**200, rel=0.02)


def test_invalid_state_dtype_is_rejected_naming_it():
    params = [torch.nn.Parameter(torch.zeros(3))]
    params[0].grad = torch.ones(3)
    optimizer = sgdlab.SGD([{"params": params, "state_dtype": torch.float16}], lr=0.1,
                           momentum=0.9)
    with pytest.raises(ValueError, match="state_dtype"):
        optimizer.step()
    with pytest.raises(ValueError, match="state_dtype"):
        compact_state(sgdlab.SGD(params, lr=0.1), torch.int8)


def test_swats_refuses_compact_state_instead_of_ignoring_it():
    # SWATS's Adam phase runs tensor by tensor: 8-bit zeros would stay zeros, silently.
    params = [torch.nn.Parameter(torch.zeros(3))]
    for dtype in (torch.bfloat16, torch.uint8):
        with pytest.raises(ValueError, match="state_dtype"):
            sgdlab.SWATS([{"params": params, "state_dtype": dtype}], lr=0.1)
        with pytest.raises(ValueError, match="state_dtype"):
            compact_state(sgdlab.SWATS(params, lr=0.1), dtype)


@pytest.mark.parametrize("cls, options", [
    (sgdlab.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (sgdlab.AdamW, dict(lr=0.01)),
], ids=["sgd", "adamw"])
def test_c_loop_rounds_exactly_like_the_pytorch_program(cls, options, monkeypatch):
    # The C loop (default on CPU) and the PyTorch program (CUDA, no compiler) draw the same
    # rounding noise for the same element and step: the stored state is bit for bit the same.
    _, native = run(cls, options, torch.bfloat16, steps=5)
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    _, eager = run(cls, options, torch.bfloat16, steps=5)
    for a, b in zip(native.state.values(), eager.state.values()):
        for key in a:
            if key != "step":
                assert a[key].dtype == torch.bfloat16
                assert torch.equal(a[key], b[key]), key


# --- 8-bit blockwise-quantized state (state_dtype=torch.uint8) ------------------------------------
from sgdlab.optim import quantized  # noqa: E402

# A tensor above the C loop's chunk size and several with partial last blocks.
EIGHT_BIT_SHAPES = [(7,), (300, 3), (70_001,)]


EIGHT_BIT_CASES = [
    (sgdlab.SGD, dict(lr=0.01, momentum=0.9)),
    (sgdlab.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (sgdlab.AdamW, dict(lr=0.01)),
    (sgdlab.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
]
ids = ["sgd", "sgd-nesterov-wd", "adamw", "adam-amsgrad-l2"]


@pytest.mark.parametrize("cls, options", EIGHT_BIT_CASES, ids=ids)
def test_eight_bit_state_is_codes_and_block_scales_a_quarter_of_the_bytes(cls, options):
    params, compact = run(cls, options, torch.uint8, steps=2, shapes=EIGHT_BIT_SHAPES)
    _, full = run(cls, options, None, steps=2, shapes=EIGHT_BIT_SHAPES)
    for p in params:
        state = compact.state[p]
        for key in [k for k in state if k != "step" and not k.endswith(quantized.SUFFIX)]:
            assert state[key].dtype == torch.uint8 and state[key].shape == p.shape
            scales = state[key + quantized.SUFFIX]
            assert scales.dtype == torch.float32
            assert scales.numel() == -(-p.numel() // quantized.BLOCK)

    def tensor_bytes(opt):
        return sum(v.nbytes for s in opt.state.values() for k, v in s.items() if k != "step")

    ratio = tensor_bytes(compact) / tensor_bytes(full)
    assert 0.25 < ratio < 0.25 * (1 + 4 / quantized.BLOCK) + 0.01


@pytest.mark.parametrize("cls, options", EIGHT_BIT_CASES, ids=ids)
def test_eight_bit_c_loop_and_pytorch_codec_store_the_same_bits(cls, options, monkeypatch):
    params, native = run(cls, options, torch.uint8, steps=5, shapes=EIGHT_BIT_SHAPES)
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    _, reference = run(cls, options, torch.uint8, steps=5, shapes=EIGHT_BIT_SHAPES)
    assert_same_state(native, reference)


@pytest.mark.parametrize("cls, options", [EIGHT_BIT_CASES[0], EIGHT_BIT_CASES[3]],
                         ids=["sgd", "adam-amsgrad-l2"])
def test_eight_bit_portable_c_codec_stores_the_same_bits(cls, options, monkeypatch):
    # The C codec has an AVX2 version of its encoder; compiled without AVX2 (as on ARM), the
    # plain C loops must store the same bits as well.
    from sgdlab.optim import native

    monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-mno-avx2"])
    monkeypatch.setattr(native, "_kernels", {})
    if native._unavailable:
        pytest.skip("no C compiler")
    _, portable = run(cls, options, torch.uint8, steps=5, shapes=EIGHT_BIT_SHAPES)
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    _, reference = run(cls, options, torch.uint8, steps=5, shapes=EIGHT_BIT_SHAPES)
    assert any(key[2] and found is not None for key, found in native._kernels.items())
    assert_same_state(portable, reference)


@pytest.mark.parametrize("cls, options", [EIGHT_BIT_CASES[1], EIGHT_BIT_CASES[3]],
                         ids=["sgd-nesterov-wd", "adam-amsgrad-l2"])
def test_eight_bit_pytorch_path_in_small_buckets_stores_the_same_bits(cls, options, monkeypatch):
    # The PyTorch path works bucket by bucket: buckets of 1280 elements (5 blocks) cut the
    # (70_001,) tensor into pieces, and the first holds both small tensors, padded.
    from sgdlab.optim import layout as state_layout

    _, native = run(cls, options, torch.uint8, steps=4, shapes=EIGHT_BIT_SHAPES)
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    monkeypatch.setattr(state_layout, "BUCKET_NUMEL", 5 * quantized.BLOCK)
    params, bucketed = run(cls, options, torch.uint8, steps=4, shapes=EIGHT_BIT_SHAPES)
    layout = next(iter(bucketed._layouts.values()))
    assert len(layout.buckets()) > 50 and any(len(b.pieces) > 1 for b in layout.buckets())
    for p, q in zip(native.state, bucketed.state):
        # (Adam: eager sqrt is not correctly rounded, C's is: updates an ulp apart here and there)
        torch.testing.assert_close(p, q, rtol=4 * 2**-23, atol=1e-8)
    assert_same_state(native, bucketed)


def test_eight_bit_compiled_pytorch_path_stores_the_same_bits(monkeypatch):
    # The CUDA path: codec and program compiled by Inductor (C++ here, Triton on GPUs).
    from sgdlab.optim import grouped

    cls, options = EIGHT_BIT_CASES[3]
    params_c, native = run(cls, options, torch.uint8, steps=3, shapes=EIGHT_BIT_SHAPES)
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    monkeypatch.setattr(grouped, "COMPILE_MIN_NUMEL", 0)
    params, compiled = run(cls, options, torch.uint8, steps=3, shapes=EIGHT_BIT_SHAPES)
    assert not grouped._compile_failed
    assert_same_state(native, compiled)
    for p, q in zip(params_c, params):
        # compiled and C division/sqrt can round an update an ulp apart, and so a parameter
        torch.testing.assert_close(p, q, rtol=4 * 2**-23, atol=1e-8)


def run_on_two_threads_in_small_chunks(monkeypatch, cls, options, state_dtype, steps):
    """``run`` with the C loop's work in 4k-element chunks shared by two threads (the suite
    itself runs on one)."""
    from sgdlab.optim import native

    monkeypatch.setattr(native, "CHUNK", 1 << 12)
    monkeypatch.setattr(native, "PARALLEL_MIN_NUMEL", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return run(cls, options, state_dtype, steps=steps, shapes=EIGHT_BIT_SHAPES)
    finally:
        torch.set_num_threads(threads)


def test_a_helper_thread_that_starts_late_finds_nothing_to_do(monkeypatch):
    # The calling thread does not wait for helpers that have not started: one that wakes after
    # the step (here: 50 ms late) must return without touching parameters or state.
    import threading
    import time
    from sgdlab.optim import native

    cls, options = EIGHT_BIT_CASES[2]
    params_one, one = run(cls, options, None, steps=3, shapes=EIGHT_BIT_SHAPES)
    finished = []

    class LatePool:
        def submit(self, function, *args):
            def late():
                time.sleep(0.05)
                function(*args)
                finished.append(args[0][0])  # the chunk counter it found
            threading.Thread(target=late).start()

    monkeypatch.setattr(native, "_executor", lambda workers: LatePool())
    params_two, two = run_on_two_threads_in_small_chunks(monkeypatch, cls, options, None, 3)
    snapshot = [p.detach().clone() for p in params_two]
    time.sleep(0.3)  # every late helper has run by now
    n_chunks = next(iter(two._layouts.values()))._plan[1].n_chunks
    assert len(finished) == 3 and all(found > n_chunks for found in finished)  # claimed none
    for p, q, r in zip(params_one, params_two, snapshot):
        assert torch.equal(p, q) and torch.equal(q, r)


def test_eight_bit_compile_failure_midway_falls_back_without_stepping_twice(monkeypatch):
    # Compiling can fail on a later bucket (a new shape): that bucket and the rest run eagerly,
    # the buckets already done are not stepped again, and the result is the C loop's.
    from sgdlab.optim import grouped
    from sgdlab.optim import layout as state_layout

    cls, options = EIGHT_BIT_CASES[1]
    _, native = run(cls, options, torch.uint8, steps=3, shapes=EIGHT_BIT_SHAPES)
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    monkeypatch.setattr(grouped, "COMPILE_MIN_NUMEL", 0)
    monkeypatch.setattr(state_layout, "BUCKET_NUMEL", 5 * quantized.BLOCK)
    monkeypatch.setattr(grouped, "_compile_failed", [])
    calls = []

    def failing_codec():
        def encode(x, seed, position):
            calls.append(position)
            if len(calls) == 7:  # the seventh bucket of the first step
                raise RuntimeError("no compiler for this shape")
            return quantized.encode(x, seed, position)
        return encode, quantized.decode

    monkeypatch.setattr(quantized, "compiled_codec", failing_codec)
    with pytest.warns(RuntimeWarning, match="compiling the optimizer step failed"):
        params, fallback = run(cls, options, torch.uint8, steps=3, shapes=EIGHT_BIT_SHAPES)
    assert len(grouped._compile_failed) == 1
    assert_same_state(native, fallback)
    for p, q in zip(native.state, fallback.state):
        assert torch.equal(p, q)


@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16, torch.uint8],
                         ids=["float32", "bfloat16", "8-bit"])
@pytest.mark.parametrize("cls, options", [EIGHT_BIT_CASES[1], EIGHT_BIT_CASES[2]],
                         ids=["sgd-nesterov-wd", "adamw"])
def test_c_loop_on_two_threads_in_small_chunks_computes_the_same_bits(cls, options, state_dtype,
                                                                     monkeypatch):
    # The suite runs on one thread: here the C loop's chunks (4k elements, so the (70_001,)
    # tensor spans 18) are claimed by two threads. Rounding noise depends on the position only.
    params_one, one = run(cls, options, state_dtype, steps=4, shapes=EIGHT_BIT_SHAPES)
    params_two, two = run_on_two_threads_in_small_chunks(monkeypatch, cls, options, state_dtype, 4)
    plan = next(iter(two._layouts.values()))._plan[1]
    assert plan.n_chunks > 18
    for p, q in zip(params_one, params_two):
        assert torch.equal(p, q)
    assert_same_state(one, two, skip=())


@pytest.mark.parametrize("cls, options", EIGHT_BIT_CASES, ids=ids)
def test_eight_bit_state_follows_the_float32_trajectory(cls, options):
    shapes = [(20, 10), (3000,)]
    compact, _ = run(cls, options, torch.uint8, steps=30, shapes=shapes)
    full, _ = run(cls, options, None, steps=30, shapes=shapes)
    start, _ = run(cls, options, None, steps=0, shapes=shapes)
    for a, b, a0 in zip(compact, full, start):
        # 3 mantissa bits (up to 12.5 % error per stored value, unbiased): after 30 steps of
        # random gradients the two runs differ by about 6 % of the distance travelled.
        travelled = (b - a0).abs().mean().item()
        assert (a - b).abs().mean().item() < 0.12 * travelled


def test_codec_round_trip_is_unbiased_and_within_a_mantissa_step():
    x = torch.randn(4096) * torch.logspace(-3, 0, 4096)
    decoded = torch.stack([quantized.decode(*quantized.encode(x, seed, 0)) for seed in range(64)])
    # 3 mantissa bits; magnitudes below 2^-14 of the block's largest are flushed to zero.
    floor = x.abs().max() * 2**-14
    assert ((decoded - x).abs() <= 0.125 * x.abs() * 1.0001 + floor).all()
    # Stochastic rounding: the mean over seeds converges to x (relative error ~ 0.06 / sqrt(64)).
    assert ((decoded.mean(0) - x).abs() / x.abs()).median() < 0.01


def test_tiny_second_moments_in_a_block_are_not_flushed_to_zero():
    # Adam divides by sqrt(v): a v flushed to zero would turn its step into lr * m / eps.
    v = torch.full((quantized.BLOCK,), 1e-16)
    v[0] = 1.0  # a block-mate 10^16 times larger
    codes, scales = quantized.encode(v, 0, 0)
    assert scales[0] < 0  # marked nonnegative: stored in the square-root domain
    decoded = quantized.decode(codes, scales)
    assert (decoded[1:] > 0).all()
    torch.testing.assert_close(decoded[1:], v[1:], rtol=0.3, atol=0)


@pytest.mark.parametrize("native", ["1", "0"], ids=["c-loop", "pytorch-codec"])
def test_a_block_whose_largest_momentum_is_subnormal_is_stored_as_zeros(native, monkeypatch):
    # A unit whose gradient has been zero for long: its momentum decays into float32's subnormal
    # range, where 1 / amax overflows. Such a block is flushed to zeros, not stored as garbage.
    monkeypatch.setenv("SGDLAB_NATIVE", native)
    param = torch.nn.Parameter(torch.ones(300))
    optimizer = sgdlab.SGD([{"params": [param], "state_dtype": torch.uint8, "min_8bit_size": 0}],
                           lr=0.1, momentum=0.5)
    state = optimizer.state_dict()
    # Both signs in every block; largest magnitude 1.5e-38: normal when loaded, subnormal after
    # one step of decay.
    signs = torch.tensor([-1.0, 1.0]).repeat(150)
    state["state"][0] = {"momentum_buffer": signs * torch.linspace(0.01, 1, 300) * 1.5e-38}
    optimizer.load_state_dict(state)
    param.grad = torch.zeros(300)
    optimizer.step()
    entry = optimizer.state[param]
    stored = quantized.decode(entry["momentum_buffer"], entry["momentum_buffer" + quantized.SUFFIX])
    assert torch.equal(stored, torch.zeros(300))
    assert torch.equal(param.detach(), torch.ones(300))


def test_codec_flushes_blocks_below_the_smallest_normal_float_to_zero():
    x = torch.tensor([-1.0, 1.0]).repeat(quantized.BLOCK) * torch.linspace(0.01, 1, 2 * quantized.BLOCK)
    x[quantized.BLOCK:] *= 2e-39  # second block: subnormal largest magnitude
    decoded = quantized.decode(*quantized.encode(x, 7, 0))
    assert torch.equal(decoded[quantized.BLOCK:], torch.zeros(quantized.BLOCK))
    assert ((decoded[:quantized.BLOCK] - x[:quantized.BLOCK]).abs() <= 0.125 * x[:quantized.BLOCK].abs() + 2**-14).all()


def test_eight_bit_state_dict_round_trips_exactly_and_training_continues():
    options = dict(lr=0.01, weight_decay=0.01)
    params, optimizer = run(sgdlab.AdamW, options, torch.uint8, steps=5, shapes=EIGHT_BIT_SHAPES)
    saved = copy.deepcopy(optimizer.state_dict())
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = sgdlab.AdamW([{"params": clone, "state_dtype": torch.uint8}], **options)
    restored.load_state_dict(saved)
    for p, q in zip(params, clone):
        for key, value in optimizer.state[p].items():
            assert restored.state[q][key].dtype == value.dtype
            assert torch.equal(restored.state[q][key], value), key
    g = torch.Generator().manual_seed(9)
    for _ in range(3):
        for p, q in zip(params, clone):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        optimizer.step()
        restored.step()
    # The rounding noise's step count is in the checkpoint: the resumed run is the same run.
    for p, q in zip(params, clone):
        assert torch.equal(p, q)
        for key, value in optimizer.state[p].items():
            assert torch.equal(restored.state[q][key], value), key


def test_an_eight_bit_checkpoint_loads_into_a_float32_optimizer():
    params, optimizer = run(sgdlab.SGD, dict(lr=0.01, momentum=0.9), torch.uint8, steps=5,
                            shapes=EIGHT_BIT_SHAPES)
    expected = {
        p: quantized.decode(optimizer.state[p]["momentum_buffer"].reshape(-1),
                            optimizer.state[p]["momentum_buffer" + quantized.SUFFIX])
        for p in params
    }
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = sgdlab.SGD(clone, lr=0.01, momentum=0.9)
    plain.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert plain.param_groups[0]["state_dtype"] == torch.uint8  # groups come from the checkpoint
    plain.param_groups[0]["state_dtype"] = None
    for q in clone:
        q.grad = torch.zeros_like(q)
    plain.step()  # buffer <- 0.9 * buffer
    for p, q in zip(params, clone):
        buffer = plain.state[q]["momentum_buffer"]
        assert buffer.dtype == torch.float32 and set(plain.state[q]) == {"momentum_buffer"}
        torch.testing.assert_close(buffer.reshape(-1), 0.9 * expected[p], rtol=1e-6, atol=0)


def test_compact_state_helper_accepts_eight_bit():
    params, optimizer = run(sgdlab.AdamW, dict(lr=0.01), steps=2)
    compact_state(optimizer, torch.uint8, min_8bit_size=0)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(s["exp_avg"].dtype == torch.uint8 for s in optimizer.state.values())


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.uint8], ids=str)
def test_first_step_allocates_the_state_compact_not_in_float32(state_dtype):
    param = torch.nn.Parameter(torch.randn(1000))
    optimizer = sgdlab.AdamW([{"params": [param], "state_dtype": state_dtype, "min_8bit_size": 0}],
                             lr=0.01)
    fresh = optimizer.init_state(param, optimizer.param_groups[0])
    assert fresh["exp_avg"].dtype == state_dtype and fresh["exp_avg_sq"].dtype == state_dtype
    param.grad = torch.ones_like(param)
    optimizer.step()  # adopts those zeros: m = 0.1 g, v = 0.001 g^2 after one step
    state = optimizer.state[param]
    if state_dtype == torch.uint8:
        m = quantized.decode(state["exp_avg"], state["exp_avg" + quantized.SUFFIX])
    else:
        m = state["exp_avg"].float()
    torch.testing.assert_close(m, torch.full((1000,), 0.1), rtol=0.13, atol=0)


# --- which tensors get 8-bit state: min_8bit_size (bitsandbytes' and torchao's 4096) ---------------
MIXED_SHAPES = [(7,), (64, 80), (4095,), (4096,)]


def test_tensors_under_min_8bit_size_keep_float32_state_bit_for_bit():
    params, eight_bit = run(sgdlab.AdamW, dict(lr=0.01), torch.uint8, steps=4,
                            shapes=MIXED_SHAPES, min_8bit_size=4096)
    reference_params, reference = run(sgdlab.AdamW, dict(lr=0.01), None, steps=4,
                                      shapes=MIXED_SHAPES)
    for p, q in zip(params, reference_params):
        state = eight_bit.state[p]
        if p.numel() < 4096:  # the float32 state and parameters of a float32-state optimizer
            assert state["exp_avg"].dtype == torch.float32
            assert "exp_avg" + quantized.SUFFIX not in state
            assert torch.equal(p, q)
            assert torch.equal(state["exp_avg_sq"], reference.state[q]["exp_avg_sq"])
        else:
            assert state["exp_avg"].dtype == torch.uint8 and not torch.equal(p, q)
    assert eight_bit.param_groups[0]["compact_state_step"] == 4


def test_the_default_min_8bit_size_is_4096():
    params, optimizer = run(sgdlab.SGD, dict(lr=0.01, momentum=0.9), steps=2, shapes=MIXED_SHAPES)
    compact_state(optimizer, torch.uint8)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    dtypes = [optimizer.state[p]["momentum_buffer"].dtype for p in params]
    assert dtypes == [torch.float32, torch.uint8, torch.float32, torch.uint8]


def test_mixed_eight_bit_and_float32_state_resumes_exactly():
    straight, resumed, saved = stop_and_resume(sgdlab.Adam, dict(lr=0.01), torch.uint8,
                                               MIXED_SHAPES, min_8bit_size=4096)
    assert saved["param_groups"][0]["min_8bit_size"] == 4096
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_an_all_eight_bit_checkpoint_loads_with_the_small_tensors_widened():
    params, optimizer = run(sgdlab.AdamW, dict(lr=0.01), torch.uint8, steps=3, shapes=MIXED_SHAPES,
                            min_8bit_size=0)
    saved = copy.deepcopy(optimizer.state_dict())
    small = params[0]
    expected = quantized.decode(optimizer.state[small]["exp_avg"],
                                optimizer.state[small]["exp_avg" + quantized.SUFFIX])
    saved["param_groups"][0].pop("min_8bit_size")  # the default threshold from now on
    clone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    restored = sgdlab.AdamW([{"params": clone, "state_dtype": torch.uint8}], lr=0.01)
    restored.load_state_dict(saved)
    for p in clone:
        p.grad = torch.zeros_like(p)
    restored.step()
    state = restored.state[clone[0]]
    assert state["exp_avg"].dtype == torch.float32 and "exp_avg.absmax" not in state
    torch.testing.assert_close(state["exp_avg"], expected * 0.9)  # one step of decay, g = 0
    assert restored.state[clone[1]]["exp_avg"].dtype == torch.uint8


@pytest.mark.parametrize("value", [-1, 1.5, True, "4096"])
def test_invalid_min_8bit_size_is_rejected_naming_it(value):
    param = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="min_8bit_size"):
        sgdlab.AdamW([{"params": [param], "state_dtype": torch.uint8, "min_8bit_size": value}])
    with pytest.raises(ValueError, match="min_8bit_size"):
        compact_state(sgdlab.AdamW([param]), torch.uint8, min_8bit_size=value)


# --- non-finite values: they stay in their element, as in float32 state --------------------------
def test_codec_stores_nan_and_infinities_in_their_element_and_scales_by_the_finite_values():
    x = torch.randn(3 * quantized.BLOCK)
    x[5], x[300], x[301] = float("nan"), float("inf"), -float("inf")  # signed blocks
    v = torch.rand(2 * quantized.BLOCK)
    v[7], v[8], v[300] = float("nan"), float("inf"), -float("nan")  # nonnegative blocks
    # (3 mantissa bits: 12.5 % steps, of the square root in a nonnegative block)
    for values, step in ((x, 0.125), (v, 1.125**2 - 1)):
        codes, scales = quantized.encode(values, 3, 0)
        finite = torch.isfinite(values)
        finite_amax = values.abs().where(finite, 0).view(-1, quantized.BLOCK).amax(dim=1)
        assert torch.equal(scales.abs(), finite_amax)
        decoded = quantized.decode(codes, scales)
        assert torch.equal(torch.isnan(decoded), torch.isnan(values))
        assert torch.equal(torch.isinf(decoded), torch.isinf(values))
        assert torch.equal(decoded[torch.isinf(values)], values[torch.isinf(values)])
        assert ((decoded - values)[finite].abs() <= step * values[finite].abs() + 1e-3).all()
    assert (quantized.encode(v, 3, 0)[1] < 0).all()  # NaN's sign bit did not make them signed


def test_codec_reads_reserved_codes_back_whatever_the_scale():
    # A block whose finite values are all zero has scale 0: the specials still decode.
    x = torch.zeros(quantized.BLOCK)
    x[1], x[2], x[3] = float("nan"), float("inf"), -float("inf")
    codes, scales = quantized.encode(x, 0, 0)
    assert scales.abs().item() == 0
    decoded = quantized.decode(codes, scales)
    assert decoded[1].isnan() and decoded[2] == float("inf") and decoded[3] == -float("inf")
    assert torch.equal(decoded[4:], torch.zeros(quantized.BLOCK - 4))


def nan_run(cls, options, state_dtype, steps=6, numel=5000, bad=((1000, float("nan")),)):
    """Train a (numel,) parameter on random gradients; in the second step, the elements of
    ``bad`` get a non-finite gradient."""
    g = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(numel, generator=g))
    group = {"params": [param]}
    if state_dtype is not None:
        group["state_dtype"] = state_dtype
    optimizer = cls([group], **options)
    for step in range(steps):
        param.grad = torch.randn(numel, generator=g)
        if step == 1:
            for index, value in bad:
                param.grad[index] = value
        optimizer.step()
    return param, optimizer


NAN_CASES = [(sgdlab.AdamW, dict(lr=0.01, weight_decay=0.01)),
             (sgdlab.Adam, dict(lr=0.01, amsgrad=True)),
             (sgdlab.SGD, dict(lr=0.01, momentum=0.9, nesterov=True))]
NON_FINITE = ((1000, float("nan")), (2000, float("inf")), (2001, -float("inf")))


@pytest.mark.parametrize("state_dtype", [torch.uint8, torch.bfloat16], ids=["8bit", "bf16"])
@pytest.mark.parametrize("cls, options", NAN_CASES, ids=["adamw", "adam-amsgrad", "sgd-nesterov"])
def test_a_non_finite_gradient_poisons_its_element_only_as_in_float32(cls, options, state_dtype):
    param, optimizer = nan_run(cls, options, state_dtype, bad=NON_FINITE)
    reference, full = nan_run(cls, options, None, bad=NON_FINITE)
    start, _ = nan_run(cls, options, None, steps=0)
    # The same elements are NaN, infinite or finite as with float32 state, parameter and state.
    assert torch.equal(param.isnan(), reference.isnan())
    assert torch.equal(param.isinf(), reference.isinf())
    assert torch.equal(param[param.isinf()], reference[reference.isinf()])
    assert 1 <= (~param.isfinite()).sum() <= len(NON_FINITE)
    state, full_state = optimizer.state[param], full.state[reference]
    for key, value in full_state.items():
        if key == "step":
            continue
        stored = state[key]
        if state_dtype == torch.uint8:
            stored = quantized.decode(stored, state[key + quantized.SUFFIX])
            assert state[key + quantized.SUFFIX].isfinite().all()
        assert torch.equal(stored.float().isnan(), value.isnan()), key
        assert torch.equal(stored.float().isinf(), value.isinf()), key
    # Elsewhere, the block-mates of the bad elements included, the usual agreement with float32.
    finite = reference.isfinite()
    travelled = (reference - start)[finite].abs().mean().item()
    block = torch.zeros_like(finite)
    block[3 * quantized.BLOCK: 8 * quantized.BLOCK] = True  # the blocks of 1000, 2000, 2001
    for where in (finite & block, finite & ~block):
        assert (param - reference)[where].abs().mean().item() < 0.12 * travelled


@pytest.mark.parametrize("path", ["c-loop", "portable-c", "pytorch", "pytorch-buckets"])
@pytest.mark.parametrize("cls, options", NAN_CASES, ids=["adamw", "adam-amsgrad", "sgd"])
def test_every_codec_path_stores_non_finite_values_with_the_same_bits(cls, options, path,
                                                                       monkeypatch):
    from sgdlab.optim import native
    from sgdlab.optim import layout as state_layout

    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    _, reference = nan_run(cls, options, torch.uint8, bad=NON_FINITE)  # the PyTorch codec
    monkeypatch.setenv("SGDLAB_NATIVE", "1")
    if path == "portable-c":
        monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-mno-avx2"])
        monkeypatch.setattr(native, "_kernels", {})
    elif path.startswith("pytorch"):
        monkeypatch.setenv("SGDLAB_NATIVE", "0")
        if path == "pytorch-buckets":
            monkeypatch.setattr(state_layout, "BUCKET_NUMEL", 5 * quantized.BLOCK)
    _, other = nan_run(cls, options, torch.uint8, bad=NON_FINITE)
    assert_same_state(reference, other)
    state = next(iter(reference.state.values()))
    assert any((~quantized.decode(v, state[k + quantized.SUFFIX]).isfinite()).any()
               for k, v in state.items() if v.dtype == torch.uint8)


def test_compiled_codec_stores_and_reads_non_finite_values_with_the_same_bits():
    # The CUDA path's codec (Inductor: C++ here, Triton on GPUs) against the eager one.
    encode, decode = quantized.compiled_codec()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5 * quantized.BLOCK + 17, generator=g)
    x[2 * quantized.BLOCK:] = x[2 * quantized.BLOCK:].abs()  # nonnegative blocks too
    for i, value in [(3, "nan"), (9, "inf"), (10, "-inf"), (600, "nan"), (601, "inf"),
                     (1100, "-inf")]:
        x[i] = float(value)
    seed, position = torch.tensor(12345), torch.tensor(256)
    codes, scales = quantized.encode(x, 12345, 256)
    compiled_codes, compiled_scales = encode(x, seed, position)
    assert torch.equal(codes, compiled_codes) and torch.equal(scales, compiled_scales)
    assert scales.isfinite().all()
    decoded, compiled_decoded = quantized.decode(codes, scales), decode(codes, scales)
    assert torch.equal(decoded.view(torch.int32), compiled_decoded.view(torch.int32))
    assert torch.equal(decoded.isfinite(), x.isfinite())
