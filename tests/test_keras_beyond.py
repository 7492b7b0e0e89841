"""sgdlab.keras SWATS / ScheduleFreeSGD / ScheduleFreeAdamW: the same numbers as the PyTorch classes.

Runs on the Keras backend named by KERAS_BACKEND (torch when unset):

    KERAS_BACKEND=tensorflow python -m pytest tests/test_keras_beyond.py
    KERAS_BACKEND=jax        python -m pytest tests/test_keras_beyond.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

keras = pytest.importorskip("keras")
import sgdlab.keras as sgdlab_keras  # noqa: E402  (ours: an import error fails, never skips)
import sgdlab  # noqa: E402

pytestmark = pytest.mark.keras

_RNG = np.random.default_rng(0)
CURVATURE = _RNG.uniform(0.5, 2.0, (3, 4))
TARGET = _RNG.standard_normal((3, 4))
START = _RNG.standard_normal((3, 4))
TOLERANCE = {"rtol": 2e-5, "atol": 2e-5}  # float32, differently ordered products


def _gradient(w):
    return (CURVATURE * (w - TARGET)).astype("float32")


def _keras_run(optimizer, steps):
    variable = keras.Variable(START.astype("float32"), name="kernel")
    for _ in range(steps):
        grad = _gradient(keras.ops.convert_to_numpy(variable))
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(grad), variable)])
    return variable


def _torch_run(optimizer_cls, steps, **kwargs):
    param = torch.nn.Parameter(torch.tensor(START, dtype=torch.float32))
    optimizer = optimizer_cls([param], **kwargs)
    if hasattr(optimizer, "train"):
        optimizer.train()
    for _ in range(steps):
        param.grad = torch.from_numpy(_gradient(param.detach().numpy()))
        optimizer.step()
    return param, optimizer


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


SF_OPTIONS = [{}, {"weight_decay": 0.05}, {"warmup_steps": 3}, {"r": 1.0, "weight_lr_power": 1.0}]


@pytest.mark.parametrize("options", SF_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_schedule_free_matches_the_pytorch_class_at_y_and_at_x(kind, options):
    if kind == "sgd":
        ours = sgdlab_keras.ScheduleFreeSGD(learning_rate=0.1, **options)
        param, reference = _torch_run(sgdlab.ScheduleFreeSGD, 8, lr=0.1, **options)
    else:
        ours = sgdlab_keras.ScheduleFreeAdamW(learning_rate=0.05, **options)
        param, reference = _torch_run(sgdlab.ScheduleFreeAdamW, 8, lr=0.05, **options)
    variable = _keras_run(ours, 8)
    np.testing.assert_allclose(_numpy(variable), param.detach().numpy(), **TOLERANCE)
    ours.eval()
    reference.eval()
    np.testing.assert_allclose(_numpy(variable), param.detach().numpy(), **TOLERANCE)


def test_schedule_free_refuses_to_train_in_eval_mode_and_round_trips():
    optimizer = sgdlab_keras.ScheduleFreeAdamW(learning_rate=0.05)
    variable = _keras_run(optimizer, 3)
    y = _numpy(variable).copy()
    optimizer.eval()
    with pytest.raises(RuntimeError, match=r"optimizer\.train\(\)"):
        optimizer.apply_gradients([(keras.ops.ones((3, 4)), variable)])
    optimizer.train()
    np.testing.assert_allclose(_numpy(variable), y, rtol=1e-6, atol=1e-6)


def test_fit_with_the_callback_ends_at_the_average():
    x = np.random.default_rng(1).standard_normal((32, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    optimizer = sgdlab_keras.ScheduleFreeSGD(learning_rate=0.05)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, epochs=2, batch_size=8, validation_data=(x, y), verbose=0,
              callbacks=[sgdlab_keras.ScheduleFreeCallback()])
    assert not optimizer.train_mode
    at_x = [w.copy() for w in model.get_weights()]
    optimizer.train()
    assert any(not np.allclose(a, b) for a, b in zip(at_x, model.get_weights()))


@pytest.mark.parametrize(
    "options", [{"switch_at": 3}, {"switch_at": 3, "weight_decay": 0.01}, {"switch_tol": 1e-3}],
    ids=["switch_at", "switch_at+l2", "criterion"],
)
def test_swats_matches_the_pytorch_class_through_the_switch(options):
    optimizer = sgdlab_keras.SWATS(learning_rate=0.05, **options)
    variable = _keras_run(optimizer, 10)
    param, reference = _torch_run(sgdlab.SWATS, 10, lr=0.05, **options)
    assert reference.switch_step is not None  # the case crosses the switch
    assert optimizer.switch_step == reference.switch_step
    assert optimizer.sgd_lr == pytest.approx(reference.sgd_lr, rel=1e-5)
    np.testing.assert_allclose(_numpy(variable), param.detach().numpy(), **TOLERANCE)


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (sgdlab_keras.SWATS, {"learning_rate": 0.01, "switch_at": 5, "weight_decay": 0.1}),
        (sgdlab_keras.ScheduleFreeSGD, {"learning_rate": 0.3, "momentum": 0.8, "warmup_steps": 4}),
        (sgdlab_keras.ScheduleFreeAdamW, {"learning_rate": 0.01, "beta_1": 0.95, "r": 1.0}),
    ],
)
def test_config_round_trip(cls, kwargs):
    optimizer = cls(**kwargs)
    config = optimizer.get_config()
    rebuilt = cls.from_config(config)
    assert rebuilt.get_config() == config
    for key, value in kwargs.items():
        if key != "learning_rate":
            assert config[key] == value


@pytest.mark.parametrize(
    "cls,kwargs,fragment",
    [
        (sgdlab_keras.SWATS, {"switch_at": 0}, "switch_at=0"),
        (sgdlab_keras.SWATS, {"beta_1": 1.5}, "beta_1=1.5"),
        (sgdlab_keras.ScheduleFreeAdamW, {"beta_1": 0.0}, "beta_1=0.0"),
        (sgdlab_keras.ScheduleFreeSGD, {"momentum": 0.0}, "momentum=0.0"),
        (sgdlab_keras.ScheduleFreeAdamW, {"warmup_steps": -2}, "warmup_steps=-2"),
        (sgdlab_keras.ScheduleFreeAdamW, {"learning_rate": -1.0}, "learning_rate=-1.0"),
    ],
)
def test_invalid_values_raise_naming_argument_and_value(cls, kwargs, fragment):
    with pytest.raises(ValueError) as excinfo:
        cls(**kwargs)
    assert fragment in str(excinfo.value)
