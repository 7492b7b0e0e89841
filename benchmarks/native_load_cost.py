"""What the checks before loading a cached C kernel cost (docs/native-code.md), warm cache.

Runs SGD, Adam and AdamW in a few configurations in float32 and float64 (compiling their kernels
into the cache if needed), then times, per kernel, the minimum over many repeats of: finding the
cached library and verifying it (directory checks, listing, open, fstat, SHA-256 of its bytes),
and the parts of that. dlopen itself is not repeated (a library loads once per process).

    .venv/bin/python benchmarks/native_load_cost.py --repeats 50
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import sgdlab
from sgdlab.optim import native

CONFIGS = [
    (sgdlab.SGD, {"lr": 0.1}),
    (sgdlab.SGD, {"lr": 0.1, "momentum": 0.9}),
    (sgdlab.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
    (sgdlab.Adam, {"lr": 1e-3}),
    (sgdlab.Adam, {"lr": 1e-3, "amsgrad": True}),
    (sgdlab.AdamW, {"lr": 1e-3}),
]


def kernel_sources() -> list[str]:
    """The C text of every kernel these optimizers' first steps use (now in the cache)."""
    sources: list[str] = []
    original = native.c_source

    def recording(*args, **kwargs):
        sources.append(original(*args, **kwargs))
        return sources[-1]

    native.c_source = recording
    try:
        for dtype in (torch.float32, torch.float64):
            for cls, options in CONFIGS:
                params = [torch.nn.Parameter(torch.randn(100, dtype=dtype))]
                optimizer = cls(params, **options)
                for _ in range(3):
                    params[0].grad = torch.randn(100, dtype=dtype)
                    optimizer.step()
    finally:
        native.c_source = original
    return sorted(set(sources))


def best(function, repeats: int) -> float:
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    sources = kernel_sources()
    if native._unavailable or not sources:
        raise SystemExit("the C loop did not run (no C compiler, or SGDLAB_NATIVE=0)")
    directory = native.cache_dir()

    def lookup(source: str) -> None:
        descriptor, _ = native._compile(source)  # warm cache: finds and verifies, compiles nothing
        os.close(descriptor)

    def verify(path) -> None:
        os.close(native._open_verified(path))

    total = sum(best(lambda: lookup(source), args.repeats) for source in sources)
    paths = sorted({found.path for found in native._kernels.values() if found is not None})
    per_file = sum(best(lambda: verify(path), args.repeats) for path in paths) / len(paths)
    size = sum(os.path.getsize(path) for path in paths) / len(paths)
    print(f"{len(sources)} kernels in {directory}, {size / 1024:.0f} KiB each on average")
    print(f"find and verify a cached kernel: {1e6 * total / len(sources):.0f} us per kernel, "
          f"{1e3 * total:.2f} ms for all {len(sources)}")
    print(f"  of which directory checks (cache_dir): "
          f"{1e6 * best(native.cache_dir, args.repeats):.0f} us, "
          f"open + fstat + SHA-256 of the file: {1e6 * per_file:.0f} us")


if __name__ == "__main__":
    main()
