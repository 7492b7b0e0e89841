"""sgdlab.keras on every installed Keras backend, and keras staying optional.

Keras picks its backend once, when it is first imported, so tests/test_keras.py and
tests/test_conformance_keras.py (Keras's own optimizer tests) run in-process on the torch backend
and here, in one subprocess per file and other backend (test_keras.py on the corners of its
grids; SGDLAB_KERAS_FULL=1 runs the full grids there too).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _clean_env(**extra):
    # The outer pytest's own variables (xdist worker ids, PYTEST_ADDOPTS) must not leak inward.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(extra)
    return env


def _run_keras_tests_on(backend, path="tests/test_keras.py"):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider",
         "-W", "ignore::DeprecationWarning"],
        cwd=ROOT,
        env=_clean_env(KERAS_BACKEND=backend),
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, f"{path} failed on {backend}:\n{tail}"
    assert " passed" in result.stdout, tail
    return result.stdout


def _summary(output):
    """pytest's last line, e.g. '26 passed in 5.1s'."""
    return output.strip().splitlines()[-1]


def _on_backend(backend, install):
    """Marks (keras, the backend's marker) and a skip where keras or the backend is missing."""
    missing = importlib.util.find_spec("keras") is None or importlib.util.find_spec(backend) is None

    def mark(test):
        for decorator in (pytest.mark.skipif(missing, reason=f"needs keras and {backend} "
                                             f"(pip install 'sgdlab[keras]' {install})"),
                          getattr(pytest.mark, backend), pytest.mark.keras):
            test = decorator(test)
        return test

    return mark


on_tensorflow = _on_backend("tensorflow", "tensorflow-cpu")
on_jax = _on_backend("jax", "jax")


@on_tensorflow
def test_keras_optimizers_on_the_tensorflow_backend():
    _run_keras_tests_on("tensorflow")


@on_tensorflow
def test_keras_own_optimizer_tests_pass_on_the_tensorflow_backend():
    output = _run_keras_tests_on("tensorflow", "tests/test_conformance_keras.py")
    # All of them run there, the sparse-gradient (tf.IndexedSlices) test too.
    assert "skipped" not in _summary(output), _summary(output)


@on_jax
def test_keras_optimizers_on_the_jax_backend():
    _run_keras_tests_on("jax")


@on_jax
def test_keras_own_optimizer_tests_pass_on_the_jax_backend():
    _run_keras_tests_on("jax", "tests/test_conformance_keras.py")


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
