"""Break sgdlab on purpose and show which tests notice (docs/testing.md).

Each mutation is a small wrong change to the source (a bias correction off by one step, a
rounding that leans one way, ...). For each one named, this copies ``src/`` into a temporary
directory, applies the change there (the checkout is never touched), runs pytest on the test
files that should catch it with ``PYTHONPATH`` pointing at the copy, and prints the tests that
failed. ``base`` runs the same tests on the unchanged copy: they must all pass.

    .venv/bin/python scripts/mutants.py                      # base and every mutation
    .venv/bin/python scripts/mutants.py adam-bias-correction # one
    .venv/bin/python scripts/mutants.py sam-scale -- tests/test_sam.py   # other test files

A mutation whose text is no longer found exactly once in the source stops the run with an error
(the code moved on: update the mutation). Exit status: 1 if ``base`` fails or a mutation is
caught by no test, else 0.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPACT = ["tests/test_compact_parity.py", "tests/test_rounding_bias.py"]
SAM = ["tests/test_sam_reference.py", "tests/test_sam.py"]
SWATS = ["tests/test_swats_reference.py", "tests/test_swats.py"]

# name: (what it breaks, [(file under src/, text, replacement)], test files that must catch it)
MUTATIONS = {
    "adam-bias-correction": (
        "Adam's first bias correction one step ahead: 1 - beta1^(t+1)",
        [("sgdlab/algorithms/adam.py", "bias_correction1 = 1 - beta1**step",
          "bias_correction1 = 1 - beta1**(step + 1)")],
        [*COMPACT, "tests/test_sam_reference.py", "tests/test_swats_reference.py"],
    ),
    "8bit-rounding-offset": (
        "both 8-bit codecs (PyTorch and C) round 1/8 ulp high",
        [("sgdlab/optim/quantized.py",
          "noise = (((index + seed + position) & 0xFFFFFFFF) * HASH & 0xFFFFFFFF) >> 12\n",
          "noise = ((((index + seed + position) & 0xFFFFFFFF) * HASH & 0xFFFFFFFF) >> 12)"
          " + (1 << 17)\n"),
         ("sgdlab/optim/quantized.py", "q8_u32x8 b = (q8_u32x8)y + (*hash >> 12);",
          "q8_u32x8 b = (q8_u32x8)y + (*hash >> 12) + (1u << 17);"),
         ("sgdlab/optim/quantized.py", "b += hash >> 12;", "b += (hash >> 12) + (1u << 17);")],
        COMPACT,
    ),
    "8bit-rounding-half-noise": (
        "both 8-bit codecs add noise over half the cut bits only",
        [("sgdlab/optim/quantized.py", "* HASH & 0xFFFFFFFF) >> 12\n",
          "* HASH & 0xFFFFFFFF) >> 13\n"),
         ("sgdlab/optim/quantized.py", "q8_u32x8 b = (q8_u32x8)y + (*hash >> 12);",
          "q8_u32x8 b = (q8_u32x8)y + (*hash >> 13);"),
         ("sgdlab/optim/quantized.py", "b += hash >> 12;", "b += hash >> 13;")],
        COMPACT,
    ),
    "bf16-rounding-offset": (
        "bfloat16 state (PyTorch and C) rounds 1/8 ulp high",
        [("sgdlab/optim/bfloat16.py", "noise = (h >> 16) & 0xFFFF",
          "noise = ((h >> 16) & 0xFFFF) + 0x2000"),
         ("sgdlab/optim/native.py", "uint32_t noise = (hash >> 16) & 0xFFFFu;",
          "uint32_t noise = ((hash >> 16) & 0xFFFFu) + 0x2000u;")],
        COMPACT,
    ),
    "bf16-round-to-nearest": (
        "bfloat16 state (PyTorch and C) rounded to nearest instead of stochastically",
        [("sgdlab/optim/bfloat16.py", "noise = (h >> 16) & 0xFFFF", "noise = 0x8000 + 0 * h"),
         ("sgdlab/optim/native.py", "uint32_t noise = (hash >> 16) & 0xFFFFu;",
          "uint32_t noise = 0x8000u + 0u * hash;")],
        COMPACT,
    ),
    "sam-scale": (
        "SAM's perturbation rho / sqrt(norm(g)) instead of rho / norm(g)",
        [("sgdlab/algorithms/sam.py", "scale = rho / (grad_norm + NORM_FLOOR)",
          "scale = rho / (grad_norm**0.5 + NORM_FLOOR)")],
        SAM,
    ),
    "asam-scale": (
        "ASAM's perturbation T g instead of T^2 g",
        [("sgdlab/algorithms/sam.py", "return scale * (t * t * grad)",
          "return scale * (t * grad)")],
        SAM,
    ),
    "swats-switch-late": (
        "SWATS switches one Adam step after switch_at",
        [("sgdlab/optim/swats.py", 'switch = k >= group["switch_at"]',
          'switch = k > group["switch_at"]')],
        SWATS,
    ),
    "swats-criterion-late": (
        "SWATS's criterion allowed from step 3 instead of step 2",
        [("sgdlab/algorithms/swats.py", "& (step > 1)", "& (step > 2)")],
        SWATS,
    ),
    "swats-estimate": (
        "SWATS's Lambda_k bias-corrected with beta2^(k+1)",
        [("sgdlab/algorithms/swats.py", "return lr_estimate / (1 - beta2**step)",
          "return lr_estimate / (1 - beta2**(step + 1))")],
        SWATS,
    ),
    "swats-projection-without-decay": (
        "SWATS's projection uses the gradient without its L2 term",
        [("sgdlab/algorithms/swats.py", "grad = grad + weight_decay * old_param", "grad = grad")],
        SWATS,
    ),
}


def mutate(name: str, directory: pathlib.Path) -> pathlib.Path:
    """A copy of src/ in ``directory`` with mutation ``name`` applied (none for "base")."""
    src = directory / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    for path, old, new in ([] if name == "base" else MUTATIONS[name][1]):
        file = src / path
        text = file.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{name}: {old!r} is in {path} {text.count(old)} times, not once "
                             "(the code changed: update the mutation)")
        file.write_text(text.replace(old, new))
    return src


def failures(name: str, tests: list[str]) -> tuple[list[str], str]:
    """The ids of the tests that fail with mutation ``name``, and pytest's summary line."""
    with tempfile.TemporaryDirectory(prefix=f"sgdlab-mutant-{name}-") as tmp:
        directory = pathlib.Path(tmp)
        src = mutate(name, directory)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env.update(PYTHONPATH=str(src), SGDLAB_CACHE_DIR=str(directory / "cache"),
                   TORCHINDUCTOR_CACHE_DIR=str(directory / "inductor"))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *tests, "-q", "-rf", "-p", "no:cacheprovider",
             "-W", "ignore::DeprecationWarning"],
            cwd=ROOT, env=env, capture_output=True, text=True)
    output = result.stdout
    failed = re.findall(r"^FAILED (\S+)", output, re.MULTILINE)
    lines = output.strip().splitlines()
    return failed, lines[-1] if lines else result.stderr[-2000:]


def main(argv: list[str]) -> int:
    tests = argv[argv.index("--") + 1:] if "--" in argv else None
    names = (argv[:argv.index("--")] if "--" in argv else argv) or ["base", *MUTATIONS]
    status = 0
    for name in names:
        if name != "base" and name not in MUTATIONS:
            raise SystemExit(f"unknown mutation {name!r}; known: base, {', '.join(MUTATIONS)}")
        chosen = tests or (sorted({t for m in MUTATIONS.values() for t in m[2]})
                           if name == "base" else MUTATIONS[name][2])
        failed, summary = failures(name, chosen)
        what = "unchanged source" if name == "base" else MUTATIONS[name][0]
        print(f"== {name}: {what}\n   {summary}")
        for test in failed:
            print(f"   FAILED {test}")
        if (name == "base") == bool(failed):
            status = 1
            print("   ^ base must pass" if name == "base" else "   ^ caught by no test")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
