"""The CPU fast path: a traced program as one C loop over all tensors of a param group.

Inductor compiles a program into a good loop, but each call of a compiled function costs about
0.1 ms of Python (guards, wrappers) plus 10 us per tensor, and ResNet-50's 161 tensors then cost
a fifth of a step. torch.optim's fused kernels pay a few microseconds per tensor, in C++. This
module closes that gap the same way: the program (already reduced by tracing to straight-line
elementwise arithmetic) is printed as C, compiled once per program text by the system C compiler
and called through ``ctypes`` with a table of pointers, one row per tensor. No optimizer math
lives here: the lines are the rule's own operations, in the rule's order.

Numerics are the reference's: every operation is done in the parameter's dtype and rounded
(``-ffp-contract=off``: no fused multiply-adds the eager path would not do; those it does, in
``add(alpha=)``, ``addcmul`` and ``lerp``, are the program's ``fma``, ``addcmul`` and ``lerp``,
printed with C's ``fma``); numbers arrive rounded to that dtype, as PyTorch rounds a Python
scalar that meets a tensor. The one difference is ``sqrt``: correctly rounded here (as in
Inductor's code and torch.optim's fused kernels), while eager PyTorch's CPU ``sqrt`` (MKL's
vector sqrt) is one ulp off for 0.7 % of float32 and 0.8 % of float64 inputs (torch 2.13, AVX-512).

Work is split into chunks of ``CHUNK`` elements; ``ctypes`` releases the GIL, so threads (as many
as ``torch.get_num_threads()``) run the loop in parallel, each claiming the next chunk from a
shared counter, so a thread that wakes up late (a virtual CPU can take a millisecond) simply
takes fewer chunks. There is no OpenMP: no second thread pool spinning next to PyTorch's.

Without a C compiler (or when compiling fails) :func:`kernel` returns None once and for all, and
the caller uses Inductor or the eager program.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from sgdlab.optim.program import HASH, Program

# Elements per unit of parallel work: large enough that a chunk's bookkeeping is noise, small
# enough that two threads finish together. Measured on 8 x 4M, two threads, against 64k chunks:
# 5 % faster in float32, up to 15 % with 8-bit state (each thread streams longer runs).
CHUNK = 1 << 18
# Groups smaller than this run on one thread: waking a second costs more than it saves
# (measured on 4 x 64k and 4 x 256k: one thread 1.07-1.31x of torch fused, two 1.33-1.82x;
# from 8 x 256k on, two threads win).
PARALLEL_MIN_NUMEL = 1 << 20
DTYPES = {torch.float32: "float", torch.float64: "double"}
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]

_MATH = {  # C spelling per dtype of the functions a rule may use through ``ops``
    "float": {"sqrt": "sqrtf", "abs": "fabsf", "exp": "expf", "log": "logf", "tanh": "tanhf",
              "copysign": "copysignf", "pow": "powf", "fma": "fmaf"},
    "double": {"sqrt": "sqrt", "abs": "fabs", "exp": "exp", "log": "log", "tanh": "tanh",
               "copysign": "copysign", "pow": "pow", "fma": "fma"},
}

_PRELUDE = """
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sched.h>
#define SGDLAB_YIELD() sched_yield()
#else
#define SGDLAB_YIELD() ((void)0)
#endif

typedef TYPE real;
#define SGDLAB_HASH HASHu  /* program.HASH: the rounding noise's multiplier */

static inline real maximum(real a, real b) { return (a > b || a != a) ? a : b; }
static inline real minimum(real a, real b) { return (a < b || a != a) ? a : b; }
static inline float bf16_load(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16; float x; memcpy(&x, &bits, 4); return x;
}
/* program.round_to_bfloat16, element by element: add hashed noise below the cut, truncate.
   hash is the element's position times SGDLAB_HASH (the loop advances it by SGDLAB_HASH: a
   32-bit induction the compiler vectorizes, where position from a 64-bit index would not). */
static inline uint16_t bf16_store(float x, uint32_t hash) {
    uint32_t bits; memcpy(&bits, &x, 4);
    uint32_t noise = (hash >> 16) & 0xFFFFu;
    return (uint16_t)((bits + noise) >> 16);
}
"""


class Unsupported(Exception):
    """The program uses something this code generator does not print."""


def c_source(program: Program, dtype: torch.dtype, n_tensors: int, *,
             quantized: bool = False) -> str:
    """The C text of ``program`` for parameters of ``dtype`` (raises :class:`Unsupported`).

    ``quantized``: the state is 8-bit codes with a scale per block (:mod:`sgdlab.optim.quantized`);
    each row then also holds the state entries' scale pointers, after the tensors."""
    if dtype not in DTYPES:
        raise Unsupported(f"dtype {dtype}")
    if quantized and (dtype != torch.float32 or program.compact):
        raise Unsupported("8-bit state needs float32 parameters")
    ctype = DTYPES[dtype]
    math = _MATH[ctype]
    compact = program.compact
    state_type = "uint8_t" if quantized else "uint16_t" if compact else "real"
    types: dict[str, str] = {}  # value name -> "real" or "int" (comparisons)
    numbers: dict[str, str] = {}  # local name -> its declaration

    def operand(name: Any) -> str:
        if isinstance(name, str) and name.startswith(("s[", "c[")):
            # Numbers are read into locals once per call: no reloads in the loop, and no
            # aliasing question between them and the tensors.
            local = name.replace("[", "_").replace("]", "")
            if local not in numbers:
                cast = "" if name[0] == "s" else "(real)"
                numbers[local] = f"    const real {local} = {cast}{name};"
            return local
        if isinstance(name, str) and name in types:
            return name
        raise Unsupported(f"operand {name!r}")

    lines = ["    real x0 = t0[i];", "    real x1 = t1[i];"]
    types["x0"] = types["x1"] = "real"
    for k in range(2, n_tensors):
        load = (f"decoded{k}[i - b0]" if quantized
                else f"bf16_load(t{k}[i])" if compact else f"t{k}[i]")
        lines.append(f"    real x{k} = {load};")
        types[f"x{k}"] = "real"
    for name, op, args in program.nodes:
        a = [operand(x) for x in args] if op != "pow_literal" else [operand(args[0])]
        kind = "real"
        if op in ("+", "-", "*", "/"):
            expression = f"{a[0]} {op} {a[1]}"
        elif op in ("<", "<=", ">", ">="):
            expression, kind = f"{a[0]} {op} {a[1]}", "int"
        elif op == "neg":
            expression = f"-{a[0]}"
        elif op == "pow_literal":
            exponent = args[1]
            if exponent == 2:  # eager PyTorch: x ** 2 is x * x, x ** 0.5 is sqrt, ...
                expression = f"{a[0]} * {a[0]}"
            elif exponent == 0.5:
                expression = f"{math['sqrt']}({a[0]})"
            elif exponent == 1:
                expression = a[0]
            elif exponent == -1:
                expression = f"(real)1 / {a[0]}"
            else:
                expression = f"{math['pow']}({a[0]}, (real){float(exponent)!r})"
        elif op == "**":
            expression = f"{math['pow']}({a[0]}, {a[1]})"
        elif op in ("sqrt", "abs", "exp", "log", "tanh") and len(a) == 1:
            expression = f"{math[op]}({a[0]})"
        elif op == "copysign" and len(a) == 2:
            expression = f"{math[op]}({a[0]}, {a[1]})"
        elif op == "fma" and len(a) == 3:
            expression = f"{math['fma']}({a[0]}, {a[1]}, {a[2]})"
        elif op == "addcmul" and len(a) == 4:
            # torch.addcmul's CPU kernel: x + value * t1 * t2, the last addition fused
            x, t1, t2, value = a
            expression = f"{math['fma']}({value} * {t1}, {t2}, {x})"
        elif op == "lerp" and len(a) == 3:
            # torch.lerp's kernel: one rounding, and from the nearer end (weight below 0.5 or not)
            start, end, weight = a
            expression = (f"{math['abs']}({weight}) < (real)0.5 ? "
                          f"{math['fma']}({weight}, {end} - {start}, {start}) : "
                          f"{math['fma']}({weight} - (real)1, {end} - {start}, {end})")
        elif op in ("maximum", "minimum") and len(a) == 2:
            expression = f"{op}({a[0]}, {a[1]})"
        elif op == "square" and len(a) == 1:
            expression = f"{a[0]} * {a[0]}"
        elif op == "reciprocal" and len(a) == 1:
            expression = f"(real)1 / {a[0]}"
        elif op == "rsqrt" and len(a) == 1:
            expression = f"(real)1 / {math['sqrt']}({a[0]})"
        elif op == "where" and len(a) == 3 and types.get(args[0]) == "int":
            expression = f"{a[0]} ? {a[1]} : {a[2]}"
        else:
            raise Unsupported(f"operation {op}")
        types[name] = kind
        lines.append(f"    {'int' if kind == 'int' else 'real'} {name} = {expression};")
    for slot, name in program.outputs:
        if types.get(name) != "real":
            raise Unsupported(f"output {name}")
        if quantized and slot >= 2:
            lines.append(f"    out{slot}[i - b0] = {name};")
            lines.append(f"    q8_observe({name}, &amax{slot}, &signs{slot});")
        elif compact and slot >= 2:
            lines.append(f"    t{slot}[i] = bf16_store({name}, hash);")
        else:
            lines.append(f"    t{slot}[i] = {name};")

    pointers = "\n".join(
        f"        {'real' if k < 2 else state_type}* restrict t{k} = "
        f"({'real' if k < 2 else state_type}*)row[{k}];"
        for k in range(n_tensors)
    )
    declarations = "\n".join(numbers.values())
    if quantized:
        return _quantized_source(program, ctype, n_tensors, pointers, lines, declarations)
    body = "\n".join("        " + line for line in lines)
    return _prelude(ctype) + f"""
/* {n_tensors} tensors per row: parameter, gradient, state entries. */""" + _step_function(
        declarations, n_tensors, f"""\
{pointers}
        uint32_t hash = (seed + (uint32_t)(offset + lo)) * SGDLAB_HASH;
        for (int64_t i = lo; i < hi; i++, hash += SGDLAB_HASH) {{
{body}
        }}""")


def _prelude(ctype: str) -> str:
    return _PRELUDE.replace("TYPE", ctype).replace("HASHu", f"{HASH}u")


def _step_function(declarations: str, row_width: int, chunk: str) -> str:
    """The kernel's entry point: threads claim chunks (a row of ``row_width`` pointers, elements
    ``lo`` to ``hi``, at ``offset`` in the flat state) and run ``chunk``, the C for one."""
    return f"""
/* counters[0]: the next chunk to claim; counters[1]: threads inside this call. The calling thread
   (wait = 1) returns once every chunk is done: it waits for the threads that claimed one, not for
   those that have not started yet (a thread pool's wake-up can take longer than the work). A
   late thread finds no chunk left and returns without touching the tensors. */
void sgdlab_step(int64_t* counters, int64_t n_chunks, const int64_t* chunks, void* const* rows,
                 const int64_t* offsets, const real* s, const double* c, uint32_t seed,
                 int32_t wait)
{{
    (void)c;
    __atomic_fetch_add(counters + 1, 1, __ATOMIC_SEQ_CST);
{declarations}
    for (;;) {{
        /* Chunks are claimed one at a time: a thread that starts late takes fewer. */
        int64_t k = __atomic_fetch_add(counters, 1, __ATOMIC_SEQ_CST);
        if (k >= n_chunks) break;
        int64_t row_index = chunks[3 * k], lo = chunks[3 * k + 1], hi = chunks[3 * k + 2];
        void* const* row = rows + {row_width} * row_index;
        int64_t offset = offsets[row_index];
{chunk}
    }}
    __atomic_fetch_sub(counters + 1, 1, __ATOMIC_SEQ_CST);
    for (int spins = 1; wait && __atomic_load_n(counters + 1, __ATOMIC_SEQ_CST) > 0; spins++) {{
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (spins % 1024 == 0) SGDLAB_YIELD();  /* more threads than cores: let the others run */
    }}
}}
"""


def _quantized_source(program: Program, ctype: str, n_tensors: int, pointers: str,
                      lines: list[str], declarations: str) -> str:
    # Block by block: decode the entries with the block's old scales into floats, run the rule,
    # keep the new state values of the block in float, then encode each written entry with its
    # new scale.
    from sgdlab.optim.quantized import BLOCK, C_CODEC, SALT

    entries = range(2, n_tensors)
    outputs = {slot: name for slot, name in program.outputs if slot >= 2}
    # A nonnegative block is encoded from square roots: where the rule already takes the root of
    # the new value (Adam's sqrt(v)), the loop keeps it and the encoder skips its own.
    roots = {}
    for name, op, args in program.nodes:
        for slot, value in outputs.items():
            if args and args[0] == value and (
                    (op == "sqrt" and len(args) == 1)
                    or (op == "pow_literal" and args[1] == 0.5)):
                roots.setdefault(slot, name)
    scales = "\n".join(
        f"        float* restrict q{k} = (float*)row[{n_tensors + k - 2}];" for k in entries
    )
    decodes = "\n".join(
        f"            q8_decode_block(t{k} + b0, b1 - b0, q{k}[block], decoded{k});"
        for k in entries
    )
    buffers = "\n".join(
        f"            float out{k}[Q8_BLOCK]{f', root{k}[Q8_BLOCK]' if k in roots else ''};\n"
        f"            uint32_t amax{k} = 0, signs{k} = 0;" for k in outputs
    )
    encodes = "\n".join(
        f"            q8_encode(out{k}, {f'root{k}' if k in roots else '(const float*)0'}, "
        f"b1 - b0, t{k} + b0, &q{k}[block], amax{k}, signs{k}, "
        f"seed + {k}u * {SALT:#x}u, offset + b0);"  # quantized.entry_seed
        for k in outputs
    )
    body_lines = lines + [f"    root{k}[i - b0] = {name};" for k, name in roots.items()]
    body = "\n".join("            " + line for line in body_lines)
    decoded = "".join(f"        float decoded{k}[Q8_BLOCK];\n" for k in entries)
    return _prelude(ctype) + C_CODEC.replace("Q8_BLOCK_SIZE", str(BLOCK)) + f"""
/* {n_tensors} tensors per row (parameter, gradient, 8-bit state entries), then the entries'
   block scales. Chunks start on block boundaries. */""" + _step_function(
        declarations, 2 * n_tensors - 2, f"""\
{pointers}
{scales}
{decoded}\
        for (int64_t b0 = lo; b0 < hi; b0 += {BLOCK}) {{
            int64_t b1 = b0 + {BLOCK} < hi ? b0 + {BLOCK} : hi;
            int64_t block = b0 / {BLOCK};
{decodes}
{buffers}
            for (int64_t i = b0; i < b1; i++) {{
{body}
            }}
{encodes}
        }}""")


# --- compiling and loading ------------------------------------------------------------------------
_lock = threading.Lock()
_kernels: dict[Any, Any] = {}
_unavailable: list[str] = []


def cache_dir() -> Path:
    root = os.environ.get("SGDLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sgdlab"
    )
    return Path(root) / "kernels"


def _machine_key() -> str:
    # -march=native code is only valid on this CPU: the cache is keyed on what the CPU offers.
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        pass
    return flags + sys.platform


class NoCompiler(Exception):
    """There is no working C compiler: the C path is off for this process."""


def _writable_cache() -> Path:
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if os.access(directory, os.W_OK):
            return directory
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"sgdlab-kernels-{getattr(os, 'getuid', lambda: 0)()}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _compile(source: str) -> Path:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise NoCompiler("no C compiler found (install one, or set CC)")
    key = hashlib.sha256("\0".join([source, compiler, *FLAGS, _machine_key()]).encode())
    directory = _writable_cache()
    library = directory / f"step_{key.hexdigest()[:24]}.so"
    if library.exists():
        return library
    # Some compilers (Apple's clang on arm64) reject -march=native: then without it.
    portable = [flag for flag in FLAGS if flag != "-march=native"]
    with tempfile.TemporaryDirectory(dir=directory) as work:
        c_file = Path(work) / "step.c"
        c_file.write_text(source)
        built = Path(work) / "step.so"
        for flags in (FLAGS, portable):
            try:
                result = subprocess.run([compiler, *flags, "-o", str(built), str(c_file), "-lm"],
                                        capture_output=True, text=True)
            except OSError as error:
                raise NoCompiler(f"{compiler}: {error}") from error
            if result.returncode == 0:
                break
        else:
            raise NoCompiler(f"{compiler} failed: {result.stderr.strip()[:500]}")
        os.replace(built, library)  # atomic: concurrent processes may race to the same name
    return library


class Kernel:
    """A compiled program: ``run`` updates every row (tensor) of a group in place."""

    def __init__(self, library: Path, dtype: torch.dtype) -> None:
        self._library = ctypes.CDLL(str(library))
        self.function = self._library.sgdlab_step
        self.function.restype = None
        real = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
        self.real = real
        self.function.argtypes = [
            ctypes.POINTER(ctypes.c_int64), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(real), ctypes.POINTER(ctypes.c_double), ctypes.c_uint32,
            ctypes.c_int32,
        ]


def kernel(program: Program, dtype: torch.dtype, n_tensors: int, *,
           quantized: bool = False) -> Kernel | None:
    """The compiled kernel of ``program``, or None where this path is not available."""
    if _unavailable or os.environ.get("SGDLAB_NATIVE", "1") == "0":
        return None
    key = (dtype, n_tensors, quantized, program.source)  # (a str caches its hash)
    with _lock:
        if key in _kernels:
            return _kernels[key]
        try:
            source = c_source(program, dtype, n_tensors, quantized=quantized)
            found: Kernel | None = Kernel(_compile(source), dtype)
        except Unsupported:  # this program only: an operation the C printer does not know
            found = None
        except (NoCompiler, OSError) as error:  # no compiler, or a library that cannot load
            _unavailable.append(repr(error))
            warnings.warn(
                f"sgdlab: the C optimizer step is unavailable ({error}); steps run through "
                "Inductor or eager PyTorch instead (correct, slower)",
                RuntimeWarning,
                stacklevel=6,
            )
            found = None
        _kernels[key] = found
        return found


# --- the per-group plan: pointers and chunks ----------------------------------------------------
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    # A forked child inherits the pool object but not its threads: work submitted there would
    # wait forever. The child starts its own pool.
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < workers:  # noqa: SLF001
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sgdlab-step")
    return _pool


class Plan:
    """What a step needs besides the parameters and gradients, built once per layout: the chunk
    table, each row's offset in the flat state and the state buffers' pointers."""

    def __init__(self, numels: list[int], offsets: list[int], state_buffers: list[torch.Tensor],
                 scale_buffers: list[torch.Tensor] = (), block: int = 1) -> None:
        self.rows = len(numels)
        chunks: list[int] = []
        for row, n in enumerate(numels):
            for lo in range(0, n, CHUNK):
                chunks += [row, lo, min(n, lo + CHUNK)]
        self.n_chunks = len(chunks) // 3
        self.chunks = (ctypes.c_int64 * len(chunks))(*chunks)
        self.offsets = (ctypes.c_int64 * len(offsets))(*offsets)
        self.total = sum(numels)
        # One row per tensor: parameter, gradient (filled in every step), then the state entries
        # and their block scales, whose pointers never change.
        self.width = 2 + len(state_buffers) + len(scale_buffers)
        self.table = (ctypes.c_void_p * (self.width * self.rows))()
        for row, offset in enumerate(offsets):
            self.table[row * self.width + 2: (row + 1) * self.width] = (
                [buffer.data_ptr() + offset * buffer.element_size() for buffer in state_buffers]
                + [scales.data_ptr() + offset // block * scales.element_size()
                   for scales in scale_buffers]
            )

    def run(self, kernel: Kernel, params: list[torch.Tensor], grads: list[torch.Tensor],
            scalars: list[float], constants: list[float], seed: int) -> None:
        table, width = self.table, self.width
        table[0::width] = [param.data_ptr() for param in params]
        table[1::width] = [grad.data_ptr() for grad in grads]
        s = (kernel.real * max(1, len(scalars)))(*scalars)
        c = (ctypes.c_double * max(1, len(constants)))(*constants)
        threads = torch.get_num_threads() if self.total >= PARALLEL_MIN_NUMEL else 1
        threads = max(1, min(threads, self.n_chunks))
        call = kernel.function
        counters = (ctypes.c_int64 * 2)()  # next chunk, threads inside (see _step_function)
        args = (counters, self.n_chunks, self.chunks, table, self.offsets, s, c,
                seed & 0xFFFFFFFF)
        if threads > 1:
            # Helpers are not waited for: the call below returns when every chunk is done, and
            # a helper that starts after that finds nothing to do (args keeps what it reads alive).
            pool = _executor(threads - 1)
            for _ in range(threads - 1):
                pool.submit(call, *args, 0)
        call(*args, 1)
