"""sgdlab.keras on every Keras backend, and keras staying optional.

Keras picks its backend once, when it is first imported, so the Keras test files run in-process
on the torch backend (the default of the suite) and here, in one subprocess per other backend,
all of their tests (no subset): tensorflow and jax (both in requirements-dev.txt, so in CI).
A test may skip only for a reason listed in ``BACKEND_SKIPS`` (a feature another backend owns);
any other skip, an import error among them, fails here.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERAS_FILES = ["tests/test_keras.py", "tests/test_keras_beyond.py", "tests/test_keras_muon.py",
               "tests/test_conformance_keras.py"]
# Skips that are right on a backend: the test exercises what only another framework has.
BACKEND_SKIPS = {
    "tensorflow": {
        "a torch tensor loss carries its own graph",
        "runs from the torch backend's session; needs tensorflow",  # test_keras_muon's own
        "tapes exist on tensorflow",
    },
    "jax": {
        "float64 on jax needs jax_enable_x64",
        "runs from the torch backend's session; needs tensorflow",
        "the example runs in float64",
        "tf.IndexedSlices are tensorflow's",
        "GradientTape and tf.Variable: tensorflow",
        "tf.function is tensorflow's",
        "a torch tensor loss carries its own graph",
        "the issue's example is TensorFlow code",
        "The IndexedSlices test can only run with TF backend.",  # Keras's own adam_test.py
    },
}


def _clean_env(**extra):
    # The outer pytest's own variables (xdist worker ids, PYTEST_ADDOPTS) must not leak inward.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(extra)
    return env


def _run_keras_tests_on(backend):
    """Every Keras test file on ``backend``, in one subprocess; returns pytest's output."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *KERAS_FILES, "-q", "-rs", "-p", "no:cacheprovider",
         "-W", "ignore::DeprecationWarning"],
        cwd=ROOT,
        env=_clean_env(KERAS_BACKEND=backend),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, f"Keras tests failed on {backend}:\n{tail}"
    return result.stdout


def _skip_reasons(output):
    """The reasons of pytest's ``-rs`` summary lines ('SKIPPED [n] file:line: reason')."""
    return {m.group(1).strip() for m in re.finditer(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$",
                                                     output, re.MULTILINE)}


def _backend(backend, install):
    """The backend as a parameter, marked keras and with its own marker, skipped (saying how to
    install it) where keras or the backend is missing."""
    missing = importlib.util.find_spec("keras") is None or importlib.util.find_spec(backend) is None
    reason = f"needs keras and {backend} (pip install 'sgdlab[keras]' {install})"
    return pytest.param(backend, marks=[pytest.mark.skipif(missing, reason=reason),
                                        getattr(pytest.mark, backend), pytest.mark.keras])


@pytest.mark.parametrize("backend", [_backend("tensorflow", "tensorflow-cpu"),
                                     _backend("jax", "'jax[cpu]'")])
def test_every_keras_test_runs_and_passes_on_the_backend(backend):
    output = _run_keras_tests_on(backend)
    summary = output.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped)", summary)}
    # All of them (197 when written: the full grids, not their corners), few skipped.
    assert counts.get("passed", 0) + counts.get("skipped", 0) >= 185, summary
    assert counts.get("skipped", 0) <= 20, summary
    unexpected = _skip_reasons(output) - BACKEND_SKIPS[backend]
    assert not unexpected, f"skipped on {backend} for reasons not in BACKEND_SKIPS: {unexpected}"
    assert " error" not in summary, summary


def test_importing_sgdlab_imports_neither_keras_nor_tensorflow_and_says_how_to_get_keras():
    code = (
        "import sys, sgdlab, sgdlab.optim, sgdlab.algorithms\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))\n"
        "sys.modules['keras'] = None  # as if Keras were not installed\n"
        "try:\n"
        "    import sgdlab.keras\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    loaded, message = result.stdout.strip().splitlines()
    assert loaded == "[]"
    assert "pip install 'sgdlab[keras]'" in message
