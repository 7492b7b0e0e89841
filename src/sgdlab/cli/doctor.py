"""``sgdlab doctor``: how optimizer steps run here, and whether the C fast path is sound.

Prints which execution path each device and dtype takes, the C compiler, the kernel cache
directory and the checks that decide whether sgdlab will load code from it (docs/native-code.md),
then compiles, loads and runs one small kernel. Exit status 0 when everything is as configured,
1 when the C path cannot run or the configured cache is not used."""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import warnings
from pathlib import Path

# A library name the loader looks for: step_<program key>-<digest of its bytes>.so
LIBRARY_NAME = re.compile(r"step_[0-9a-f]{24}-[0-9a-f]{32}\.so")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="which execution path each device/dtype uses; check the C compiler and kernel cache",
        description=(
            "Show how sgdlab runs optimizer steps on this machine: the execution path of each "
            "device and dtype, the C compiler, the kernel cache directory and the owner and mode "
            "checks it must pass before sgdlab loads code from it, and each cached library's "
            "verification. Compiles, loads and runs one small kernel. Exit status 0 when "
            "healthy, 1 otherwise. SGDLAB_NATIVE=0 turns the C path off."
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)  # a log keeps whole lines
    problems = report(console)
    if problems:
        console.print(f"[red]{len(problems)} problem(s):[/]")
        for problem in problems:
            console.print(f"  - {problem}")
        return 1
    console.print("[green]healthy[/]")
    return 0


def report(console) -> list[str]:
    """Print the checks; return what is wrong (empty: healthy)."""
    import platform

    import torch

    from sgdlab import __version__
    from sgdlab.optim import native

    problems: list[str] = []
    console.print(f"sgdlab {__version__}, torch {torch.__version__}, Python "
                  f"{platform.python_version()}, {platform.system()} {platform.machine()}")

    console.print("\n[bold]C fast path[/] (CPU, float32 and float64)")
    if not native.enabled():
        console.print("  off: SGDLAB_NATIVE=0")
    compiler = native.compiler()
    console.print(f"  compiler  {compiler or 'none found (install one, or set CC)'}"
                  + (f"  ({_version(compiler)})" if compiler else ""))
    configured = native.configured_cache_dir()
    console.print(f"  cache     {configured}")
    if not native.enabled():  # nothing is compiled or loaded: only show what is there
        _print_directory_checks(console, configured)
        if configured.is_dir():
            _print_entries(console, configured)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                used: Path | None = native.cache_dir()  # (creates it if missing)
            except native.Untrusted as error:
                used = None
                problems.append(str(error))
        _print_directory_checks(console, configured)
        if used is None:
            console.print("  [red]no directory to compile into[/]")
        elif used != Path(os.path.realpath(configured)):
            reason = " ".join(str(w.message) for w in caught)
            problems.append(f"the configured cache is not used: {reason}")
            console.print(f"  [yellow]using instead[/] {used} (private to this process)")
        if used is not None:
            _print_entries(console, used)  # as found, before the test below compiles anything

    working = False
    if native.enabled():
        working, outcome = _try_kernel()
        console.print(f"  test      {outcome}")
        if not working:
            problems.append(f"the C path does not run: {outcome}")

    console.print("\n[bold]Execution paths[/] of the default step (foreach=None); foreach=False, "
                  "differentiable, capturable,\ncomplex, sparse and tensor-subclass parameters "
                  "run per tensor in eager PyTorch")
    for device in _devices(torch):
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            console.print(f"  {device:<8} {str(dtype).replace('torch.', ''):<9} "
                          f"{_path(device, dtype, working)}")
    return problems


def _version(compiler: str) -> str:
    import subprocess

    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return f"does not run: {error}"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else f"exit status {result.returncode}"


def _print_directory_checks(console, directory: Path) -> None:
    """Owner and mode of the cache directory and each directory above it."""
    from sgdlab.optim import native

    real = Path(os.path.realpath(directory))
    problem = native.directory_problem(directory) if real.exists() else None
    for each in (real, *real.parents):
        try:
            status = os.stat(each)
        except OSError as error:
            console.print(f"    [red]✗[/] {each}: {error.strerror}")
            continue
        bad = problem is not None and problem.startswith(f"{each} ")
        mark = "[red]✗[/]" if bad else "✓"
        console.print(f"    {mark} {each}  owner uid {status.st_uid}, "
                      f"mode {stat.S_IMODE(status.st_mode):o}")
    if problem is not None:
        console.print(f"    [red]not trusted:[/] {problem}")


def _print_entries(console, directory: Path) -> None:
    from sgdlab.optim import native

    names = sorted(os.listdir(directory))
    libraries = [name for name in names if LIBRARY_NAME.fullmatch(name)]
    failing = [(name, native.library_problem(directory / name)) for name in libraries]
    failing = [(name, problem) for name, problem in failing if problem is not None]
    console.print(f"  entries   {len(libraries)} libraries, {len(libraries) - len(failing)} "
                  "verified (owner, mode, one link, SHA-256 of the bytes)")
    for name, problem in failing:
        console.print(f"    [yellow]{name}[/]: {problem}; it will be compiled again, not loaded")
    others = len(names) - len(libraries)
    if others:
        console.print(f"    {others} other entries (never loaded: older sgdlab versions' "
                      "libraries, or a build in progress); safe to delete when no sgdlab runs")


def _try_kernel() -> tuple[bool, str]:
    """Compile (or load from the cache), load and run SGD's kernel on a float32 tensor."""
    import time

    import torch

    import sgdlab
    from sgdlab.optim import native

    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.ones(4)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sgdlab.SGD([param], lr=0.5).step()
    seconds = time.perf_counter() - start
    if native._unavailable:
        return False, f"unavailable: {native._unavailable[0]}"
    loaded = [found for key, found in native._kernels.items()
              if key[0] is torch.float32 and found is not None]
    if not loaded:
        return False, "SGD's step did not run as a C loop" + "".join(
            f"; {w.message}" for w in caught)
    if not torch.equal(param.detach(), torch.full((4,), -0.5)):
        return False, f"SGD's step gave {param.detach().tolist()}, not -0.5 everywhere"
    return True, (f"SGD's kernel loaded from {loaded[-1].path.name} and stepped correctly "
                  f"({seconds:.2f} s, compiling included if it was not cached)")


def _devices(torch) -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _path(device: str, dtype, native_works: bool) -> str:
    """The path :func:`sgdlab.optim.grouped.grouped` takes for a param group of this kind."""
    from sgdlab.optim import grouped, native

    if device == "cpu" and dtype in native.DTYPES and native_works:
        return "C loop (one call per param group)"
    if dtype in grouped.COMPILED_DTYPES and not grouped._compile_failed:
        return (f"Inductor for groups of {grouped.COMPILE_MIN_NUMEL:,} elements or more, "
                "eager PyTorch below")
    return "eager PyTorch (grouped)"
