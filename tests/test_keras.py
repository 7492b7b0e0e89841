"""sgdlab.keras: Keras 3 optimizers running sgdlab's rules, checked against keras.optimizers.

Runs on the Keras backend named by KERAS_BACKEND (torch when unset, the backend CI always has):

    KERAS_BACKEND=torch      python -m pytest tests/test_keras.py
    KERAS_BACKEND=tensorflow python -m pytest tests/test_keras.py
    KERAS_BACKEND=jax        python -m pytest tests/test_keras.py

tests/test_keras_backends.py runs this file on tensorflow and jax in subprocesses (Keras fixes its
backend at import, so one process cannot test two backends).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import itertools  # noqa: E402
import pathlib  # noqa: E402
import runpy  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

keras = pytest.importorskip("keras")
import sgdlab.keras as sgdlab_keras  # noqa: E402  (ours: an import error fails, never skips)
import sgdlab  # noqa: E402

pytestmark = [
    pytest.mark.keras,
    # Keras's torch backend converts with np.array(x), which NumPy 2 flags on every conversion.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]
BACKEND = keras.config.backend()
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
STEPS = 6

# --- a small problem with gradients that depend on the parameters -------------------------------
# f(w) = sum_i 0.5 * a_i * (w_i - t_i)^2 over a "kernel" matrix and a "bias" vector; its gradient
# a_i * (w_i - t_i) is computed in NumPy from the current values, the same for every framework.
_RNG = np.random.default_rng(0)
NAMES = ("kernel", "bias")
SHAPES = ((3, 4), (4,))
CURVATURE = [_RNG.uniform(0.5, 2.0, s) for s in SHAPES]
TARGET = [_RNG.standard_normal(s) for s in SHAPES]
START = [_RNG.standard_normal(s) for s in SHAPES]


def gradient(values):
    return [a * (w - t) for a, w, t in zip(CURVATURE, values, TARGET)]


def keras_trajectory(optimizer, dtype="float32", steps=STEPS):
    """Final values after `steps` apply_gradients calls (a custom training loop)."""
    variables = [
        keras.Variable(w.astype(dtype), name=name, dtype=dtype) for w, name in zip(START, NAMES)
    ]
    for _ in range(steps):
        grads = gradient([keras.ops.convert_to_numpy(v) for v in variables])
        optimizer.apply_gradients(
            zip([keras.ops.convert_to_tensor(g.astype(dtype)) for g in grads], variables)
        )
    return [keras.ops.convert_to_numpy(v) for v in variables]


def torch_trajectory(make_optimizer, lr_at=None, dtype="float64", steps=STEPS):
    """The same loop with a torch optimizer; `lr_at(t)` sets each step's learning rate."""
    params = [torch.tensor(w.astype(dtype), requires_grad=True) for w in START]
    optimizer = make_optimizer(params)
    for step in range(steps):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        for param, grad in zip(params, gradient([p.detach().numpy() for p in params])):
            param.grad = torch.from_numpy(grad.astype(dtype))
        optimizer.step()
    return [p.detach().numpy() for p in params]


def schedule():
    return keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)


def schedule_value(step):
    """The schedule's learning rate at a step, as Keras computes it (float32)."""
    return float(keras.ops.convert_to_numpy(schedule()(step)))


def assert_same(actual, expected, dtype):
    assert_close(actual, expected, dtype, 1e-12)


def assert_close(actual, expected, dtype, float64_tolerance):
    # float32: round-off of differently ordered products, which Adam's division by sqrt(v) can
    # amplify to ~1e-6 in coordinates with tiny gradients over six steps at lr 0.1.
    tolerance = float64_tolerance if dtype == "float64" else 1e-5
    for a, e in zip(actual, expected):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, e, rtol=tolerance, atol=tolerance)


def cross_tolerance(weight_decay_by_keras):
    """float64 tolerance when comparing with the other framework.

    Keras's base class computes its decoupled decay with float32 pieces (torch backend: the factor
    1 - lr * wd from the float32 learning rate; tensorflow: within ~1e-9), for float64 variables
    too, which caps the agreement there.
    """
    return 1e-7 if weight_decay_by_keras else 1e-12


CROSS_DTYPE = "float32" if BACKEND == "jax" else "float64"


def learning_rate(kind):
    return schedule() if kind == "schedule" else 0.05


# --- numbers: the same as keras.optimizers over a grid of options ---------------------------------
# In float32: Keras itself computes some float64 updates with float32-rounded hyperparameters
# (differently per backend), so float64 is checked against torch.optim and sgdlab.SGD instead.
SGD_GRID = list(itertools.product(
    [(0.0, False), (0.9, False), (0.9, True), (0.5, True)], [None, 0.05], ["constant", "schedule"]
))


@pytest.mark.parametrize("momentum_nesterov, weight_decay, lr", SGD_GRID)
def test_sgd_matches_keras_sgd(momentum_nesterov, weight_decay, lr):
    momentum, nesterov = momentum_nesterov
    options = dict(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    expected = keras_trajectory(keras.optimizers.SGD(learning_rate=learning_rate(lr), **options))
    actual = keras_trajectory(sgdlab_keras.SGD(learning_rate=learning_rate(lr), **options))
    assert_same(actual, expected, "float32")


ADAM_GRID = list(
    itertools.product([1e-7, 0.1], [False, True], [None, 0.05], ["constant", "schedule"])
)


@pytest.mark.parametrize("epsilon, amsgrad, weight_decay, lr", ADAM_GRID)
def test_adam_matches_keras_adam(epsilon, amsgrad, weight_decay, lr):
    options = dict(epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay, beta_2=0.99)
    expected = keras_trajectory(keras.optimizers.Adam(learning_rate=learning_rate(lr), **options))
    actual = keras_trajectory(sgdlab_keras.Adam(learning_rate=learning_rate(lr), **options))
    assert_same(actual, expected, "float32")


ADAMW_GRID = list(itertools.product([False, True], [0.004, 0.2], ["constant", "schedule"]))


@pytest.mark.parametrize("amsgrad, weight_decay, lr", ADAMW_GRID)
def test_adamw_matches_keras_adamw(amsgrad, weight_decay, lr):
    options = dict(amsgrad=amsgrad, weight_decay=weight_decay, beta_1=0.8)
    expected = keras_trajectory(keras.optimizers.AdamW(learning_rate=learning_rate(lr), **options))
    actual = keras_trajectory(sgdlab_keras.AdamW(learning_rate=learning_rate(lr), **options))
    assert_same(actual, expected, "float32")


BASE_FEATURES = list(itertools.product(
    ["SGD", "Adam", "AdamW"],
    [
        dict(clipnorm=0.5),
        dict(clipvalue=0.1),
        dict(global_clipnorm=0.5),
        dict(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2),
        dict(gradient_accumulation_steps=2),
        dict(loss_scale_factor=8.0),
    ],
))


@pytest.mark.parametrize(
    "name, features", BASE_FEATURES, ids=[f"{n}-{','.join(f)}" for n, f in BASE_FEATURES]
)
def test_keras_base_class_features_match_keras(name, features):
    # Clipping, EMA, accumulation and loss scaling come from Keras's base class, untouched.
    options = dict(features, **({"momentum": 0.9} if name == "SGD" else {}))
    expected = keras_trajectory(getattr(keras.optimizers, name)(**options))
    actual = keras_trajectory(getattr(sgdlab_keras, name)(**options))
    assert_same(actual, expected, "float32")


@pytest.mark.skipif(BACKEND == "jax", reason="float64 on jax needs jax_enable_x64")
@pytest.mark.parametrize(
    "name, options, torch_options",
    [
        ("SGD", dict(momentum=0.9, nesterov=True), dict(momentum=0.9, nesterov=True)),
        ("Adam", dict(amsgrad=True, epsilon=1e-3), dict(amsgrad=True, eps=1e-3)),
    ],
)
def test_float64_variables_run_the_same_rule_as_the_torch_classes(name, options, torch_options):
    # One definition of the math: Keras class and PyTorch class agree to float64 round-off.
    actual = keras_trajectory(
        getattr(sgdlab_keras, name)(learning_rate=schedule(), **options), "float64"
    )
    expected = torch_trajectory(
        lambda p: getattr(sgdlab, name)(p, lr=0.1, convention="keras", **torch_options),
        lr_at=schedule_value,
    )
    assert_same(actual, expected, "float64")


def test_optimizer_variables_follow_keras_layout_so_checkpoints_load():
    reference = keras.optimizers.Adam(amsgrad=True, use_ema=True)
    keras_trajectory(reference, steps=2)
    ours = sgdlab_keras.Adam(amsgrad=True, use_ema=True)
    keras_trajectory(ours, steps=1)  # built, on variables of the same shapes
    assert [v.shape for v in ours.variables] == [v.shape for v in reference.variables]
    ours.set_weights([keras.ops.convert_to_numpy(v) for v in reference.variables])
    assert int(keras.ops.convert_to_numpy(ours.iterations)) == 2


# --- crossing frameworks: the `convention` option on both sides -----------------------------------
TORCH_RECIPES = [
    ("SGD", dict(momentum=0.9), dict(momentum=0.9)),
    ("SGD", dict(momentum=0.9, nesterov=True), dict(momentum=0.9, nesterov=True)),
    ("SGD", dict(momentum=0.9, weight_decay=0.05), dict(momentum=0.9, weight_decay=0.05)),
    ("Adam", dict(epsilon=1e-8, weight_decay=0.05), dict(eps=1e-8, weight_decay=0.05)),
    ("Adam", dict(epsilon=0.1, amsgrad=True), dict(eps=0.1, amsgrad=True)),
    ("AdamW", dict(epsilon=1e-8, weight_decay=0.2), dict(eps=1e-8, weight_decay=0.2)),
]


@pytest.mark.parametrize("name, keras_options, torch_options", TORCH_RECIPES)
def test_keras_class_with_torch_convention_follows_torch_optim(name, keras_options, torch_options):
    # A PyTorch recipe with a learning-rate schedule ported to Keras keeps its trajectory.
    expected = torch_trajectory(
        lambda params: getattr(torch.optim, name)(params, lr=0.1, **torch_options),
        lr_at=schedule_value,
        dtype=CROSS_DTYPE,
    )
    ours = getattr(sgdlab_keras, name)(
        learning_rate=schedule(), convention="torch", **keras_options
    )
    actual = keras_trajectory(ours, CROSS_DTYPE)
    assert_close(actual, expected, CROSS_DTYPE, cross_tolerance(name == "AdamW"))


KERAS_RECIPES = [
    ("SGD", dict(momentum=0.9), dict(momentum=0.9)),
    ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.05),
     dict(momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("Adam", dict(epsilon=0.1, weight_decay=0.05), dict(eps=0.1, weight_decay=0.05)),
    ("AdamW", dict(epsilon=1e-7, weight_decay=0.2, amsgrad=True),
     dict(eps=1e-7, weight_decay=0.2, amsgrad=True)),
]


@pytest.mark.parametrize("name, keras_options, torch_options", KERAS_RECIPES)
def test_torch_class_with_keras_convention_follows_keras_optimizers(
    name, keras_options, torch_options
):
    # A Keras recipe with a learning-rate schedule ported to PyTorch keeps its trajectory.
    # float32: in float64 Keras rounds some hyperparameters to float32 (see the grids above).
    expected = keras_trajectory(
        getattr(keras.optimizers, name)(learning_rate=schedule(), **keras_options), "float32"
    )
    actual = torch_trajectory(
        lambda params: getattr(sgdlab, name)(params, lr=0.1, convention="keras", **torch_options),
        lr_at=schedule_value,
        dtype="float32",
    )
    assert_same(actual, expected, "float32")


def _max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def test_conventions_agree_for_sgd_momentum_at_a_constant_learning_rate():
    keras_sgd = keras_trajectory(keras.optimizers.SGD(learning_rate=0.1, momentum=0.9), "float32")
    torch_sgd = torch_trajectory(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    assert _max_difference(keras_sgd, torch_sgd) < 1e-5


@pytest.mark.parametrize(
    "keras_options, torch_options, lr_at",
    [
        (dict(learning_rate=schedule, momentum=0.9), dict(lr=0.1, momentum=0.9), schedule_value),
        (
            dict(learning_rate=lambda: 0.1, momentum=0.9, weight_decay=0.05),
            dict(lr=0.1, momentum=0.9, weight_decay=0.05),
            None,
        ),
    ],
    ids=["learning-rate-schedule", "weight-decay"],
)
def test_conventions_differ_for_sgd_under_a_schedule_or_with_weight_decay(
    keras_options, torch_options, lr_at
):
    keras_options = dict(keras_options, learning_rate=keras_options["learning_rate"]())
    keras_sgd = keras_trajectory(keras.optimizers.SGD(**keras_options), "float32")
    torch_sgd = torch_trajectory(lambda p: torch.optim.SGD(p, **torch_options), lr_at=lr_at)
    # Each framework's own optimizer, same hyperparameters: visibly different trajectories ...
    assert _max_difference(keras_sgd, torch_sgd) > 1e-3
    # ... and the `convention` option reproduces the other framework on either side.
    ported_to_torch = torch_trajectory(
        lambda p: sgdlab.SGD(p, convention="keras", **torch_options), lr_at=lr_at
    )
    assert _max_difference(ported_to_torch, keras_sgd) < 1e-5
    ported_to_keras = keras_trajectory(
        sgdlab_keras.SGD(convention="torch", **keras_options), "float32"
    )
    assert _max_difference(ported_to_keras, torch_sgd) < 1e-5


@pytest.mark.skipif(BACKEND == "jax", reason="the example runs in float64")
def test_conventions_example_shows_each_class_following_the_other_framework(capsys):
    runpy.run_path(str(EXAMPLES / "keras_torch_conventions.py"), run_name="__main__")
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 3
    gaps = []
    for block in blocks:
        lines = block.splitlines()
        rows = {line[:40].strip(): [float(v) for v in line[40:].split()] for line in lines[1:5]}
        # Each sgdlab class set to the other framework's convention prints that framework's row.
        np.testing.assert_allclose(
            rows["sgdlab.SGD(convention='keras')"], rows["keras.optimizers.SGD"], atol=1e-5
        )
        np.testing.assert_allclose(
            rows["sgdlab.keras.SGD(convention='torch')"], rows["torch.optim.SGD"], atol=1e-5
        )
        gaps.append(float(lines[5].split()[-1]))
    assert gaps[0] < 1e-6 and gaps[1] > 0.1 and gaps[2] > 0.01  # same, then apart, as documented


# --- weight-decay exclusion -------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, convention", list(itertools.product(["SGD", "AdamW"], ["keras", "torch"]))
)
def test_excluded_variables_are_not_decayed(name, convention):
    options = dict(learning_rate=0.1, weight_decay=0.3, convention=convention)
    decayed = keras_trajectory(getattr(sgdlab_keras, name)(**options))
    excluding = getattr(sgdlab_keras, name)(**options)
    excluding.exclude_from_weight_decay(var_names=["bias"])
    partly = keras_trajectory(excluding)
    undecayed = keras_trajectory(getattr(sgdlab_keras, name)(**dict(options, weight_decay=0.0)))
    np.testing.assert_allclose(partly[0], decayed[0], rtol=1e-6)  # the kernel is still decayed
    np.testing.assert_allclose(partly[1], undecayed[1], rtol=1e-6)  # the bias is not
    assert _max_difference(decayed, undecayed) > 1e-3


def test_exclusion_matches_keras_exclusion():
    ours = sgdlab_keras.AdamW(weight_decay=0.3, learning_rate=0.1)
    reference = keras.optimizers.AdamW(weight_decay=0.3, learning_rate=0.1)
    for optimizer in (ours, reference):
        optimizer.exclude_from_weight_decay(var_names=["kernel"])
    assert_same(keras_trajectory(ours), keras_trajectory(reference), "float32")


# --- serialization ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: sgdlab_keras.SGD(learning_rate=schedule(), momentum=0.9, nesterov=True,
                                 weight_decay=0.01, convention="torch", clipnorm=1.0),
        lambda: sgdlab_keras.Adam(epsilon=1e-3, amsgrad=True, use_ema=True),
        lambda: sgdlab_keras.AdamW(weight_decay=0.1, gradient_accumulation_steps=4),
    ],
    ids=["SGD", "Adam", "AdamW"],
)
def test_get_config_from_config_and_serialize_round_trip(optimizer):
    original = optimizer()
    config = original.get_config()
    restored = type(original).from_config(dict(config))  # Keras's from_config edits its input
    assert type(restored) is type(original)
    assert restored.get_config() == config
    via_keras = keras.optimizers.deserialize(keras.optimizers.serialize(original))
    assert type(via_keras) is type(original)
    assert via_keras.get_config() == config


def test_a_keras_optimizer_config_loads_into_the_sgdlab_class():
    config = keras.optimizers.Adam(learning_rate=0.01, beta_1=0.8, amsgrad=True).get_config()
    ours = sgdlab_keras.Adam.from_config(config)
    assert (ours.beta_1, ours.amsgrad, ours.convention) == (0.8, True, "keras")
    assert_same(
        keras_trajectory(ours),
        keras_trajectory(keras.optimizers.Adam.from_config(config)),
        "float32",
    )


# --- model.compile + model.fit ----------------------------------------------------------------
def _regression_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 4)).astype("float32")
    y = (x @ rng.standard_normal((4, 1)) + 0.5).astype("float32")
    return x, y


FIT_OPTIMIZERS = [
    ("SGD", dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    ("Adam", dict(learning_rate=0.05)),
    ("AdamW", dict(learning_rate=0.05, weight_decay=0.01)),
]


@pytest.mark.parametrize("name, options", FIT_OPTIMIZERS, ids=[n for n, _ in FIT_OPTIMIZERS])
def test_model_fit_trains(name, options, tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _regression_data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=getattr(sgdlab_keras, name)(**options), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.2 * losses[0]
    # The saved model brings its sgdlab optimizer (and state) back.
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.optimizer.iterations),
        keras.ops.convert_to_numpy(model.optimizer.iterations),
    )


def test_model_fit_trains_in_mixed_precision_behind_keras_loss_scaling():
    keras.utils.set_random_seed(0)
    x, y = _regression_data()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=sgdlab_keras.AdamW(learning_rate=0.05), loss="mse")
        losses = model.fit(x, y, batch_size=16, epochs=6, verbose=0).history["loss"]
    finally:
        keras.mixed_precision.set_global_policy(previous)
    # Keras wraps the optimizer in its LossScaleOptimizer; ours does the float32 updates inside.
    assert type(model.optimizer.inner_optimizer) is sgdlab_keras.AdamW
    assert losses[-1] < 0.5 * losses[0]


# --- sparse gradients: an Embedding layer (tf.IndexedSlices on tensorflow) -----------------------
# The rules see the dense gradient (rows looked up twice in a batch: their two slices summed). Keras
# 3's own Adam on tensorflow squares each looked-up slice on its own instead, so with repeated
# lookups its second moment is not that of the gradient (nor its numbers on torch and jax).
def _embedding_data(repeated_lookups):
    rng = np.random.default_rng(2)
    if repeated_lookups:  # 8 samples of 5 lookups among 10 rows: rows repeat within a batch
        tokens = rng.integers(0, 10, size=(32, 5))
    else:  # each batch of 2 samples looks up each of the 10 rows once
        tokens = np.concatenate([rng.permutation(10).reshape(2, 5) for _ in range(16)])
    targets = rng.standard_normal((32, 2)).astype("float32")
    return tokens, targets


def _embedding_model():
    keras.utils.set_random_seed(0)  # the same initial weights for every optimizer compared
    return keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(10, 4),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )


def _fit_embedding_model(optimizer, repeated_lookups):
    tokens, targets = _embedding_data(repeated_lookups)
    model = _embedding_model()
    model.compile(optimizer=optimizer, loss="mse")
    batch_size = 8 if repeated_lookups else 2
    history = model.fit(tokens, targets, batch_size=batch_size, epochs=2, shuffle=False, verbose=0)
    weights = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    return weights, history.history["loss"]


EMBEDDING_CASES = [
    ("SGD", dict(learning_rate=0.1)),
    ("SGD", dict(learning_rate=0.02, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(learning_rate=0.01)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True, clipnorm=0.5)),
    ("AdamW", dict(learning_rate=0.01)),
    ("AdamW", dict(learning_rate=0.01, global_clipnorm=0.5)),
]


def _assert_same_weights(actual, expected):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, options", EMBEDDING_CASES)
def test_embedding_model_fit_gives_the_numbers_of_the_keras_class(name, options):
    expected, _ = _fit_embedding_model(getattr(keras.optimizers, name)(**options), False)
    actual, losses = _fit_embedding_model(getattr(sgdlab_keras, name)(**options), False)
    assert losses[-1] < losses[0]
    _assert_same_weights(actual, expected)


@pytest.mark.parametrize("name, options", EMBEDDING_CASES[:2])
def test_embedding_model_fit_with_repeated_lookups_gives_the_numbers_of_keras_sgd(name, options):
    # SGD is linear in the gradient: Keras's scatter of each slice and the dense sum agree.
    expected, _ = _fit_embedding_model(getattr(keras.optimizers, name)(**options), True)
    actual, losses = _fit_embedding_model(getattr(sgdlab_keras, name)(**options), True)
    assert losses[-1] < losses[0]
    _assert_same_weights(actual, expected)


def _sparse_gradient(step):
    """Rows 0 and 3 of a (5, 3) variable looked up, row 3 twice: its two slices add up."""
    import tensorflow as tf

    return tf.IndexedSlices(
        tf.constant(np.full((3, 3), 1.0 + step, dtype="float32")),
        tf.constant([3, 0, 3]),
        tf.constant([5, 3]),
    )


def _apply_three_steps(optimizer, densify):
    import tensorflow as tf

    variable = keras.Variable(np.arange(15, dtype="float32").reshape(5, 3) / 10)
    for step in range(3):
        gradient = _sparse_gradient(step)
        gradient = tf.convert_to_tensor(gradient) if densify else gradient
        optimizer.apply_gradients([(gradient, variable)])
    return keras.ops.convert_to_numpy(variable)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.IndexedSlices are tensorflow's")
def test_tensorflow_gives_the_embedding_a_sparse_gradient_with_repeated_rows():
    # The premise of the sparse tests: on tensorflow they really hand the optimizers IndexedSlices.
    import tensorflow as tf

    tokens, targets = _embedding_data(repeated_lookups=True)
    model = _embedding_model()
    with tf.GradientTape() as tape:
        loss = keras.ops.mean((model(tokens[:8]) - targets[:8]) ** 2)
    embedding_gradient = tape.gradient(loss, model.trainable_variables)[0]
    assert isinstance(embedding_gradient, tf.IndexedSlices)
    assert len(np.unique(embedding_gradient.indices)) < len(embedding_gradient.indices)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.IndexedSlices are tensorflow's")
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_repeated_rows_keras_adam_on_tensorflow_squares_each_slice_sgdlab_their_sum(name):
    # The one place where sgdlab.keras and keras.optimizers differ on purpose (docs/drop-in.md).
    keras_dense = _apply_three_steps(getattr(keras.optimizers, name)(learning_rate=0.1), True)
    keras_sparse = _apply_three_steps(getattr(keras.optimizers, name)(learning_rate=0.1), False)
    ours = _apply_three_steps(getattr(sgdlab_keras, name)(learning_rate=0.1), False)
    _assert_same_weights(ours, keras_dense)
    _assert_same_weights(ours[:3], keras_sparse[:3])  # rows looked up at most once: the same
    assert not np.allclose(ours[3], keras_sparse[3], rtol=1e-3)  # row 3, looked up twice


SPARSE_STEP_OPTIMIZERS = [
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("Adam", dict(learning_rate=0.1, amsgrad=True)),
    ("AdamW", dict(learning_rate=0.1)),
    ("SWATS", dict(learning_rate=0.1)),
    ("ScheduleFreeSGD", dict(learning_rate=0.1)),
    ("ScheduleFreeAdamW", dict(learning_rate=0.1)),
]


@pytest.mark.parametrize("name, options", SPARSE_STEP_OPTIMIZERS[3:])
def test_embedding_model_trains_with_fit_beyond_keras_own_optimizers(name, options):
    # SGD, Adam and AdamW train it in the tests above, with Keras's numbers.
    _, losses = _fit_embedding_model(getattr(sgdlab_keras, name)(**options), True)
    assert losses[-1] < losses[0]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.IndexedSlices are tensorflow's")
@pytest.mark.parametrize("name, options", SPARSE_STEP_OPTIMIZERS)
def test_a_sparse_gradient_steps_as_its_dense_form_for_every_optimizer(name, options):
    sparse = _apply_three_steps(getattr(sgdlab_keras, name)(**options), densify=False)
    dense = _apply_three_steps(getattr(sgdlab_keras, name)(**options), densify=True)
    np.testing.assert_array_equal(sparse, dense)


# --- minimize(): the TF2-era API --------------------------------------------------------------
def _minimize_twice(optimizer, variable):
    loss = lambda: (variable**2) / 2.0  # noqa: E731  gradient: the variable itself
    values = [float(keras.ops.convert_to_numpy(variable))]
    counts = []
    for _ in range(2):
        count = optimizer.minimize(loss, [variable])
        counts.append(int(keras.ops.convert_to_numpy(count)))
        values.append(float(keras.ops.convert_to_numpy(variable)))
    return counts, values


def test_minimize_takes_a_first_step_of_lr_times_grad_then_grows_with_momentum():
    counts, values = _minimize_twice(
        sgdlab_keras.SGD(learning_rate=0.1, momentum=0.9), keras.Variable(1.0)
    )
    assert counts == [1, 2]
    steps = [values[0] - values[1], values[1] - values[2]]
    np.testing.assert_allclose(steps, [0.1, 0.18], rtol=1e-6)


def test_minimize_applies_the_same_step_as_apply_gradients_in_keras():
    variable = keras.Variable(1.0)
    _, values = _minimize_twice(sgdlab_keras.Adam(learning_rate=0.1), variable)
    reference = keras.optimizers.Adam(learning_rate=0.1)
    other = keras.Variable(1.0)
    for _ in range(2):
        reference.apply_gradients([(keras.ops.convert_to_tensor(other.numpy()), other)])
    assert float(keras.ops.convert_to_numpy(other)) == pytest.approx(values[-1], rel=1e-6)


def test_minimize_accepts_a_callable_var_list():
    variable = keras.Variable(2.0)
    optimizer = sgdlab_keras.SGD(learning_rate=0.5)
    optimizer.minimize(lambda: variable * variable, lambda: [variable])
    assert float(keras.ops.convert_to_numpy(variable)) == pytest.approx(0.0)


def test_minimize_rejects_an_empty_var_list():
    with pytest.raises(ValueError, match="var_list"):
        sgdlab_keras.SGD().minimize(lambda: 0.0, [])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="GradientTape and tf.Variable: tensorflow")
def test_minimize_with_a_tensor_loss_and_its_tape_on_tensorflow():
    import tensorflow as tf

    variable = tf.Variable(3.0)
    with tf.GradientTape() as tape:
        loss = variable * variable
    with pytest.raises(ValueError, match="tape"):
        sgdlab_keras.SGD(learning_rate=0.1).minimize(loss, [variable])
    sgdlab_keras.SGD(learning_rate=0.1).minimize(loss, [variable], tape=tape)
    assert variable.numpy() == pytest.approx(3.0 - 0.1 * 6.0)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.function is tensorflow's")
def test_minimize_inside_a_tf_function():
    import tensorflow as tf

    variable = tf.Variable(1.0)
    optimizer = sgdlab_keras.SGD(learning_rate=0.1, momentum=0.9)
    step = tf.function(lambda: optimizer.minimize(lambda: variable**2 / 2.0, [variable]))
    step()
    step()
    assert variable.numpy() == pytest.approx(1.0 - 0.1 - 0.18)


@pytest.mark.skipif(BACKEND != "torch", reason="a torch tensor loss carries its own graph")
def test_minimize_with_a_tensor_loss_on_torch():
    variable = keras.Variable(3.0)
    sgdlab_keras.SGD(learning_rate=0.1).minimize(variable * variable, [variable])
    assert float(keras.ops.convert_to_numpy(variable)) == pytest.approx(3.0 - 0.1 * 6.0)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="tapes exist on tensorflow")
def test_minimize_rejects_a_tape_outside_tensorflow():
    with pytest.raises(ValueError, match="tape"):
        sgdlab_keras.SGD().minimize(lambda: 0.0, [keras.Variable(1.0)], tape=object())


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the issue's example is TensorFlow code")
def test_issue_example_prints_the_first_step_then_the_momentum_step(capsys):
    runpy.run_path(str(EXAMPLES / "keras_minimize.py"), run_name="__main__")
    printed = [float(line) for line in capsys.readouterr().out.split()]
    np.testing.assert_allclose(printed, [0.1, 0.18], rtol=1e-6)


def test_keras_runs_on_the_backend_named_by_keras_backend():
    assert BACKEND == os.environ["KERAS_BACKEND"]


# --- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, options, argument",
    [
        ("SGD", dict(momentum=-0.1), "momentum"),
        ("SGD", dict(momentum=1.5), "momentum"),
        ("SGD", dict(momentum=float("nan")), "momentum"),
        ("SGD", dict(learning_rate=-1.0), "learning_rate"),
        ("SGD", dict(weight_decay=-0.1), "weight_decay"),
        ("SGD", dict(convention="tf"), "convention"),
        ("Adam", dict(beta_1=1.0), "beta_1"),
        ("Adam", dict(beta_2=-0.5), "beta_2"),
        ("Adam", dict(epsilon=-1e-7), "epsilon"),
        ("AdamW", dict(weight_decay=None), "weight_decay"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_them(name, options, argument):
    with pytest.raises(ValueError, match=argument):
        getattr(sgdlab_keras, name)(**options)


@pytest.mark.parametrize(
    "name, options",
    [
        ("SGD", dict(momentum=-1.0)),
        ("SGD", dict(momentum=2.0)),
        ("AdamW", dict(weight_decay=None)),
    ],
)
def test_values_keras_refuses_are_refused_with_the_message_of_the_keras_class(name, options):
    with pytest.raises(ValueError) as keras_error:
        getattr(keras.optimizers, name)(**options)
    with pytest.raises(ValueError) as sgdlab_error:
        getattr(sgdlab_keras, name)(**options)
    assert str(sgdlab_error.value).startswith(str(keras_error.value))
