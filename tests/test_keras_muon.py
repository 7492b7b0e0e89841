"""Keras's own Muon tests (keras/src/optimizers/muon_test.py, from the installed wheel) run
against sgdlab.keras.Muon, as tests/test_conformance_keras.py runs sgd/adam/adamw's; plus
sgdlab.keras.Muon against keras.optimizers.Muon over several steps of a small model.

Runs on the Keras backend named by KERAS_BACKEND (torch when unset); the last test runs this file
again on tensorflow in a subprocess."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import importlib  # noqa: E402
import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
import sgdlab.keras as sgdlab_keras  # noqa: E402  (ours: an import error fails, never skips)

pytestmark = [
    pytest.mark.keras,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]


def _load_keras_muon_suite():
    directory = pathlib.Path(importlib.import_module("keras.src.optimizers").__file__).parent
    spec = importlib.util.spec_from_file_location("sgdlab_conformance.keras.muon_test",
                                                  directory / "muon_test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.Muon = sgdlab_keras.Muon  # the tests look the class up in their module when they run
    return module


SUITE = _load_keras_muon_suite()
KerasMuonTest = SUITE.MuonTest


def test_the_suite_tests_sgdlab_muon():
    assert SUITE.Muon is sgdlab_keras.Muon and SUITE.Muon is not keras.optimizers.Muon
    assert len([m for m in dir(KerasMuonTest) if m.startswith("test_")]) >= 10


def _train(optimizer, steps=4):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="hidden"),
                              keras.layers.Dense(8, name="mid"),
                              keras.layers.Dense(1, name="last")])
    x = np.linspace(-1, 1, 5 * 6, dtype="float32").reshape(5, 6)
    y = np.linspace(0, 1, 5, dtype="float32").reshape(5, 1)
    model.compile(optimizer=optimizer, loss="mse")
    for _ in range(steps):
        model.train_on_batch(x, y)
    return [np.array(w) for w in model.get_weights()]


@pytest.mark.parametrize("kwargs", [
    {},
    {"nesterov": False, "rms_rate": None, "exclude_layers": ["last"]},
    {"momentum": 0.8, "adam_lr_ratio": 0.5, "weight_decay": 0.01, "adam_weight_decay": 0.02},
])
def test_trains_as_keras_muon(kwargs):
    kwargs = {"learning_rate": 0.01, **kwargs}
    ours = _train(sgdlab_keras.Muon(**kwargs))
    theirs = _train(keras.optimizers.Muon(**kwargs))
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)


def test_variables_are_keras_muons_in_its_order():
    ours, theirs = sgdlab_keras.Muon(), keras.optimizers.Muon()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    for optimizer in (ours, theirs):
        optimizer.build(model.trainable_variables)
    assert [(v.name, tuple(v.shape)) for v in ours.variables] == [
        (v.name, tuple(v.shape)) for v in theirs.variables]


@pytest.mark.tensorflow
@pytest.mark.skipif(os.environ["KERAS_BACKEND"] != "torch"
                    or importlib.util.find_spec("tensorflow") is None,
                    reason="runs from the torch backend's session; needs tensorflow")
def test_this_file_passes_on_tensorflow():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["KERAS_BACKEND"] = "tensorflow"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
         "-W", "ignore::DeprecationWarning"],
        env=env, capture_output=True, text=True, timeout=900,
        cwd=pathlib.Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
