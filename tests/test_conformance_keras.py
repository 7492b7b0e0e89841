"""Keras's own optimizer tests, run against sgdlab.keras.

The keras wheel ships the test files of its optimizers (keras/src/optimizers/sgd_test.py,
adam_test.py, adamw_test.py). Each is loaded here from the installed package, under a name of its
own, and its module-level ``SGD`` / ``Adam`` / ``AdamW`` is rebound to sgdlab's class before any
test runs; its TestCase classes are then collected by pytest from this module. Keras's test
methods, unchanged, thus construct, step, clip, serialize and train sgdlab's optimizers. Nothing is
copied into this repository.

Runs on the Keras backend named by KERAS_BACKEND (torch when unset); tests/test_keras_backends.py
runs this file on tensorflow and jax in subprocesses:

    KERAS_BACKEND=tensorflow python -m pytest tests/test_conformance_keras.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

keras = pytest.importorskip("keras")
import sgdlab.keras as sgdlab_keras  # noqa: E402  (ours: an import error fails, never skips)

pytestmark = [
    pytest.mark.keras,
    # Keras's torch backend converts with np.array(x), which NumPy 2 flags on every conversion.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

#: Keras's test file -> the class name it tests (bound at its module level).
SUITES = {"sgd_test": "SGD", "adam_test": "Adam", "adamw_test": "AdamW"}


def load_keras_suite(file_stem, class_name):
    """Keras's ``keras/src/optimizers/<file_stem>.py``, testing sgdlab.keras's ``class_name``."""
    directory = pathlib.Path(importlib.import_module("keras.src.optimizers").__file__).parent
    spec = importlib.util.spec_from_file_location(
        f"sgdlab_conformance.keras.{file_stem}", directory / f"{file_stem}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Test methods look the class up in their module's globals when they run.
    setattr(module, class_name, getattr(sgdlab_keras, class_name))
    return module


SUITE_MODULES = {stem: load_keras_suite(stem, name) for stem, name in SUITES.items()}

# Keras's TestCase classes, collected here (pytest collects unittest.TestCase subclasses by type).
KerasSGDTest = SUITE_MODULES["sgd_test"].SGDTest
KerasAdamTest = SUITE_MODULES["adam_test"].AdamTest
KerasAdamWTest = SUITE_MODULES["adamw_test"].AdamWTest


@pytest.mark.parametrize("file_stem", sorted(SUITES))
def test_keras_suites_construct_sgdlab_classes_not_keras_ones(file_stem):
    module = SUITE_MODULES[file_stem]
    name = SUITES[file_stem]
    tested = getattr(module, name)
    assert tested is getattr(sgdlab_keras, name)
    assert tested is not getattr(keras.optimizers, name)
    test_methods = [m for m in dir(module.__dict__[f"{name}Test"]) if m.startswith("test_")]
    assert len(test_methods) >= 5  # the file really holds Keras's tests, not an empty shell
