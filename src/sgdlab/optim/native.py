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

import atexit
import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from sgdlab.optim.bfloat16 import HASH
from sgdlab.optim.tracing import Program

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
        elif op == "addcdiv" and len(a) == 4:
            x, t1, t2, value = a
            expression = f"{x} + {value} * {t1} / {t2}"
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
# Loading a shared object runs its code in this process, so sgdlab loads only a library it can show
# it compiled itself (the whole trust model, and why: docs/native-code.md):
# - Directory: owned by this user and writable by no one else, below directories of this user or
#   root that no one else can write either (sticky ones, like /tmp, are fine): nobody else can add,
#   replace or rename anything on the path. sgdlab creates its directories with mode 0700 itself.
#   A directory that fails is never used: the process compiles into a fresh private temporary
#   directory instead, and says so once.
# - File: compiled in a private work directory, made read-only for its owner, then renamed into
#   place (atomically: a reader sees the whole file or none). Its name ends with the SHA-256 of
#   its bytes. Before loading, the file, opened without following links, must be a regular file
#   of this user with one link, writable by no one else, whose bytes hash to its name. Anything
#   else is deleted and compiled again, never loaded: a truncated library kills the process with
#   SIGBUS inside dlopen.
# - The bytes checked are the bytes loaded: on Linux dlopen opens /proc/self/fd/N, the very file
#   that was read, whatever its name points at by then.
_lock = threading.Lock()
_kernels: dict[Any, Any] = {}
_unavailable: list[str] = []
_private_lock = threading.Lock()
_private: list[Path] = []  # this process's temporary cache, once the configured one failed
_loaded: list[int] = []  # descriptors of loaded libraries, never closed: dlopen knows them by name
DIRECTORY_MODE = 0o700
LIBRARY_MODE = 0o500
DIGEST_CHARS = 32  # of the SHA-256's hex digits: 128 bits, plenty against damage
_POSIX = hasattr(os, "geteuid")  # owners and modes to check
_OPEN = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
         | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


class NoCompiler(Exception):
    """There is no working C compiler: the C path is off for this process."""


class Untrusted(Exception):
    """No directory that only this user can write is available to compile into."""


def configured_cache_dir() -> Path:
    """Where kernels are cached: ``$SGDLAB_CACHE_DIR/kernels``, else
    ``$XDG_CACHE_HOME/sgdlab/kernels`` (``~/.cache/sgdlab/kernels``)."""
    root = os.environ.get("SGDLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sgdlab"
    )
    return Path(root) / "kernels"


def cache_dir() -> Path:
    """The directory kernels are compiled into and loaded from: the configured one (created if
    missing) when it passes :func:`directory_problem` and can be written, else this process's
    private temporary directory (:class:`Untrusted` when even that one fails the checks).

    The path has its symbolic links resolved: the checks are of the directories it names, and
    a link in a directory others can write could point elsewhere later."""
    configured = configured_cache_dir()
    try:
        _make_directories(configured)
        problem = directory_problem(configured)
        if problem is None and not os.access(configured, os.W_OK | os.X_OK):
            problem = "it cannot be written"
    except OSError as error:
        problem = f"it cannot be created: {error.strerror or error}"
    if problem is None:
        return Path(os.path.realpath(configured))
    return _private_directory(configured, problem)


def _make_directories(path: Path) -> None:
    # Each missing directory is made owner-only explicitly: under umask 002 os.makedirs would
    # make them group-writable.
    missing = []
    for directory in (path, *path.parents):
        if os.path.lexists(directory):
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIRECTORY_MODE)
        except FileExistsError:  # another process was first: checked like any existing one
            continue
        os.chmod(directory, DIRECTORY_MODE)  # the umask may have taken the owner's bits too


def _uid() -> int:
    return os.geteuid()


def directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be trusted to hold code this process will load, or None.

    It must be a directory owned by this user that no one else can write, and so must every
    directory above it, except that those may belong to root, and may be writable by others
    when sticky (as /tmp is: others cannot rename or delete what is not theirs)."""
    if not _POSIX:
        return "owners and modes cannot be checked on this platform"
    real = Path(os.path.realpath(path))
    uid = _uid()
    for directory in (real, *real.parents):
        try:
            status = os.stat(directory)
        except OSError as error:
            return f"{directory}: {error.strerror}"
        mode = stat.S_IMODE(status.st_mode)
        if not stat.S_ISDIR(status.st_mode):
            return f"{directory} is not a directory"
        if status.st_uid != uid and (directory == real or status.st_uid != 0):
            return f"{directory} belongs to uid {status.st_uid}, not to this user (uid {uid})"
        if _others_can_write(status) and (directory == real or not mode & stat.S_ISVTX):
            return f"{directory} can be written by other users (mode {mode:o})"
    return None


def _others_can_write(status: os.stat_result) -> bool:
    return bool(status.st_mode & stat.S_IWOTH
                or status.st_mode & stat.S_IWGRP and not _private_group(status.st_gid))


@functools.lru_cache(maxsize=None)
def _private_group(gid: int) -> bool:
    # User private groups (Fedora, RHEL: umask 002 and a group of one's own): write access for a
    # group named after the user, with no other members, grants no one else anything.
    try:
        import grp
        import pwd

        user, group = pwd.getpwuid(_uid()), grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return (gid == user.pw_gid and group.gr_name == user.pw_name
            and set(group.gr_mem) <= {user.pw_name})


def _private_directory(configured: Path, problem: str) -> Path:
    with _private_lock:
        if not _private:
            # 0700, and a name no one can guess or take first
            directory = Path(os.path.realpath(tempfile.mkdtemp(prefix="sgdlab-kernels-")))
            own = directory_problem(directory) if _POSIX else None
            if own is not None:
                shutil.rmtree(directory, ignore_errors=True)
                raise Untrusted(f"not using {configured} ({problem}), nor a temporary directory "
                                f"({own})")
            atexit.register(_remove_private, directory, os.getpid())
            _private.append(directory)
            warnings.warn(
                f"sgdlab: not using the kernel cache {configured} ({problem}); compiling into "
                f"{directory}, private to this process, instead (slower start: every process "
                "compiles again). Make the cache a directory only you can write, or set "
                "SGDLAB_CACHE_DIR to one",
                RuntimeWarning,
                stacklevel=2,
            )
        return _private[0]


def _remove_private(directory: Path, pid: int) -> None:
    if os.getpid() == pid:  # a forked child leaves its parent's directory alone
        shutil.rmtree(directory, ignore_errors=True)


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc`` or ``gcc`` on the PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _machine_key() -> str:
    # -march=native code is only valid on this CPU: the cache is keyed on what the CPU offers.
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        pass
    return flags + sys.platform


def _compile(source: str) -> tuple[int, Path]:
    """An open descriptor of the verified library of ``source``, and its path: from the cache,
    else compiled now."""
    cc = compiler()
    if cc is None:
        raise NoCompiler("no C compiler found (install one, or set CC)")
    key = hashlib.sha256("\0".join([source, cc, *FLAGS, _machine_key()]).encode()).hexdigest()
    directory = cache_dir()
    stem = f"step_{key[:24]}"
    for name in sorted(os.listdir(directory)):  # (Path.glob compiles a pattern: 0.6 ms a call)
        if name.startswith(stem + "-") and name.endswith(".so"):
            descriptor = _open_verified(directory / name)
            if descriptor is not None:
                return descriptor, directory / name
    return _build(cc, source, directory, stem)


def _build(cc: str, source: str, directory: Path, stem: str) -> tuple[int, Path]:
    # Some compilers (Apple's clang on arm64) reject -march=native: then without it.
    portable = [flag for flag in FLAGS if flag != "-march=native"]
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))  # 0700, unguessable
    try:
        (work / "step.c").write_text(source)
        for flags in (FLAGS, portable):
            try:  # relative names: the output does not depend on the work directory's name
                result = subprocess.run([cc, *flags, "-o", "step.so", "step.c", "-lm"],
                                        cwd=work, capture_output=True, text=True)
            except OSError as error:
                raise NoCompiler(f"{cc}: {error}") from error
            if result.returncode == 0:
                break
        else:
            raise NoCompiler(f"{cc} failed: {result.stderr.strip()[:500]}")
        built = work / "step.so"
        os.chmod(built, LIBRARY_MODE)  # the compiler applied the umask; this is the mode meant
        descriptor = os.open(built, _OPEN)
        try:
            problem = _file_problem(os.fstat(descriptor))
            if problem is not None:
                raise OSError(f"the library just compiled is {problem}")
            library = directory / f"{stem}-{_digest(descriptor)}.so"
            # Atomic: processes compiling the same program at once each rename a whole file.
            os.replace(built, library)
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor, library
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _digest(descriptor: int) -> str:
    digest = hashlib.sha256()
    os.lseek(descriptor, 0, os.SEEK_SET)
    while chunk := os.read(descriptor, 1 << 16):
        digest.update(chunk)
    return digest.hexdigest()[:DIGEST_CHARS]


def _file_problem(status: os.stat_result) -> str | None:
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    if _POSIX and status.st_uid != _uid():
        return f"owned by uid {status.st_uid}, not by this user (uid {_uid()})"
    if _POSIX and status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by other users (mode {stat.S_IMODE(status.st_mode):o})"
    if status.st_nlink != 1:
        return f"one of {status.st_nlink} links to the same file"
    return None


def _check(descriptor: int, path: Path) -> str | None:
    problem = _file_problem(os.fstat(descriptor))
    if problem is None and _digest(descriptor) != path.stem.rpartition("-")[2]:
        problem = "damaged: its bytes do not match the digest recorded when it was compiled"
    return problem


def library_problem(path: Path) -> str | None:
    """Why the cached library ``path`` would not be loaded (it would be compiled again), or None."""
    try:
        descriptor = os.open(path, _OPEN)
    except OSError as error:
        return "a symbolic link" if error.errno == errno.ELOOP else str(error.strerror)
    try:
        return _check(descriptor, path)
    finally:
        os.close(descriptor)


def _open_verified(path: Path) -> int | None:
    """An open descriptor of ``path`` if it passes the checks; else None, and the file is gone."""
    try:
        descriptor = os.open(path, _OPEN)
    except OSError:
        problem = "cannot be opened"
    else:
        problem = _check(descriptor, path)
        if problem is None:
            return descriptor
        os.close(descriptor)
    with contextlib.suppress(OSError):
        os.unlink(path)  # (a symbolic link itself, not what it points at)
    return None


def _load(descriptor: int, path: Path) -> ctypes.CDLL:
    """``ctypes.CDLL`` of the verified file open at ``descriptor``."""
    name = f"/proc/self/fd/{descriptor}"
    try:
        if not os.path.exists(name):  # no /proc: the path, if it still names the same file
            opened, now = os.fstat(descriptor), os.stat(path)
            if (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino):
                raise OSError(f"{path} changed while it was being loaded")
            name = str(path)
        library = ctypes.CDLL(name)
        if not hasattr(library, "sgdlab_step"):
            raise OSError(f"{path} has no sgdlab_step")
    except BaseException:
        os.close(descriptor)
        raise
    _loaded.append(descriptor)  # open for good: a closed number could name another library
    return library


class Kernel:
    """A compiled program: ``run`` updates every row (tensor) of a group in place."""

    def __init__(self, library: ctypes.CDLL, path: Path, dtype: torch.dtype) -> None:
        self._library = library
        self.path = path
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


def enabled() -> bool:
    """False when ``SGDLAB_NATIVE=0`` turns the C path off."""
    return os.environ.get("SGDLAB_NATIVE", "1") != "0"


def kernel(program: Program, dtype: torch.dtype, n_tensors: int, *,
           quantized: bool = False) -> Kernel | None:
    """The compiled kernel of ``program``, or None where this path is not available."""
    if _unavailable or not enabled():
        return None
    key = (dtype, n_tensors, quantized, program.source)  # (a str caches its hash)
    with _lock:
        if key in _kernels:
            return _kernels[key]
        try:
            source = c_source(program, dtype, n_tensors, quantized=quantized)
            descriptor, path = _compile(source)
            found: Kernel | None = Kernel(_load(descriptor, path), path, dtype)
        except Unsupported:  # this program only: an operation the C printer does not know
            found = None
        except (NoCompiler, Untrusted, OSError) as error:
            # No compiler, nowhere safe to compile, a full disk, a library that cannot load
            # (a noexec mount): the same for every program, so once for the process.
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
