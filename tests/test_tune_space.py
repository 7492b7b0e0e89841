"""Search spaces: per-optimizer defaults, the --space language and its errors."""

from __future__ import annotations

import optuna
import pytest

from sgdlab.lab.specs import parse_spec
from sgdlab.lab.tasks import get_task
from sgdlab.lab.tune.space import SpaceError, parse_space


@pytest.fixture(scope="module")
def digits():
    return get_task("digits")


def _space(text, opt, task):
    return parse_space(text, parse_spec(opt, task=task), task)


def test_sgd_searches_lr_momentum_weight_decay_and_batch_size_on_log_scales(digits):
    space = _space(None, "sgd", digits)
    dims = space.dimensions
    assert list(dims) == ["lr", "schedule", "warmup", "momentum", "weight_decay", "batch_size"]
    assert (dims["lr"].low, dims["lr"].high, dims["lr"].scale) == (1e-3, 1.0, "log")
    assert dims["momentum"].scale == "log1m" and dims["momentum"].optuna_name == "1-momentum"
    assert dims["weight_decay"].scale == "log"
    assert digits.batch_size in dims["batch_size"].choices


def test_adamw_searches_both_betas_and_a_decoupled_weight_decay_range(digits):
    dims = _space(None, "adamw", digits).dimensions
    assert {"lr", "beta1", "beta2", "weight_decay"} <= set(dims)
    assert dims["lr"].high <= 0.1
    assert dims["weight_decay"].high >= 0.1  # decoupled decay is scaled by lr: larger values are useful
    assert _space(None, "adam", digits).dimensions["weight_decay"].high <= 0.01  # L2 penalty


def test_full_batch_optimizers_do_not_search_batch_size(digits):
    assert "batch_size" not in _space(None, "gd", digits).dimensions


def test_hyperparameters_fixed_in_the_spec_are_not_searched(digits):
    dims = _space(None, "sgd:momentum=0.9,lr=0.05", digits).dimensions
    assert "momentum" not in dims and "lr" not in dims and "weight_decay" in dims


def test_space_overrides_ranges_and_keeps_the_names_scale(digits):
    space = _space("lr=1e-4:1,momentum=0.8:0.99,batch_size=32|64,weight_decay=0", "sgd", digits)
    dims = space.dimensions
    assert (dims["lr"].low, dims["lr"].high, dims["lr"].scale) == (1e-4, 1.0, "log")
    assert (dims["momentum"].low, dims["momentum"].high, dims["momentum"].scale) == (0.8, 0.99, "log1m")
    assert dims["batch_size"].choices == (32, 64)
    assert dims["weight_decay"].kind == "fixed" and not dims["weight_decay"].searched


def test_explicit_scale_choice_of_booleans_and_default_keyword(digits):
    dims = _space("momentum=0.5:0.9:linear,nesterov=True|False,weight_decay=default", "sgd", digits).dimensions
    assert dims["momentum"].scale == "linear"
    assert dims["nesterov"].choices == (True, False)
    assert "weight_decay" not in dims


def test_suggestions_map_back_to_hyperparameters(digits):
    space = _space("beta2=0.99:0.9999", "adamw", digits)
    trial = optuna.trial.FixedTrial({"lr": 1e-3, "1-beta1": 0.1, "1-beta2": 0.001, "weight_decay": 0.01,
                                     "batch_size": 64, "schedule": "cosine", "warmup": 0.05})
    values = space.suggest(trial)
    assert values["beta1"] == pytest.approx(0.9) and values["beta2"] == pytest.approx(0.999)
    spec, batch_size = space.configuration(values, digits)
    assert spec.hyperparameters["betas"] == pytest.approx((0.9, 0.999))
    assert spec.hyperparameters["lr"] == 1e-3 and batch_size == 64
    assert spec.schedule(digits).name == "cosine" and spec.schedule(digits).warmup == 0.05
    spec.build([__import__("torch").zeros(2, requires_grad=True)], digits)  # a valid optimizer


def test_space_text_round_trips(digits):
    space = _space("lr=1e-4:1,momentum=0.8:0.99", "sgd", digits)
    again = _space(space.text(), "sgd", digits)
    assert again.dimensions == space.dimensions


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr=1:1e-4", "lr: the lower bound must be below the upper bound"),
        ("lr=0:1", "lr: a log scale needs a positive lower bound"),
        ("momentum=0.5:1.5", "momentum: the log1m scale"),
        ("lr=1e-3:1:cubic", "lr: unknown scale 'cubic'"),
        ("lr=a:1", "lr: 'a' is not a number"),
        ("lr", "malformed --space entry 'lr'"),
        ("lr=1e-3:1e-1,lr=1e-2:1", "lr is given twice"),
        ("momentun=0.8:0.99", "unknown hyperparameter 'momentun' for sgd (did you mean 'momentum'?)"),
        ("betas=0.9:0.99", "search beta1 and beta2 separately"),
        ("batch_size=0:64", "batch_size: expected integers"),
        ("batch_size=32|big", "batch_size: choices must be positive integers"),
        ("lr=-1:1:linear", "the space reaches invalid values for sgd"),
        ("lr=0.1,momentum=0.9,weight_decay=0,batch_size=32,schedule=constant,warmup=0", "nothing to search"),
    ],
)
def test_bad_spaces_raise_clear_errors(digits, text, message):
    with pytest.raises(SpaceError) as error:
        _space(text, "sgd", digits)
    assert message in str(error.value)


def test_a_dimension_fixed_by_opt_cannot_also_be_searched(digits):
    with pytest.raises(SpaceError, match="momentum is fixed by the --opt spec"):
        _space("momentum=0.5:0.9", "sgd:momentum=0.9", digits)


def test_batch_size_is_rejected_for_full_batch_optimizers(digits):
    with pytest.raises(SpaceError, match="full-batch"):
        _space("batch_size=8|16", "gd", digits)


def test_wrappers_are_searched_like_their_base_plus_their_own_hyperparameters(digits):
    sam = _space(None, "sam", digits).dimensions
    assert {"lr", "momentum", "rho"} <= set(sam) and sam["lr"].high == 1.0  # base: SGD with momentum
    on_adamw = _space(None, "sam:base=adamw", digits).dimensions
    assert {"beta1", "beta2", "rho"} <= set(on_adamw) and "momentum" not in on_adamw
    assert on_adamw["weight_decay"].high >= 0.1


def test_schedules_are_searched_except_for_schedule_free_optimizers(digits):
    dims = _space(None, "sgd", digits).dimensions
    assert dims["schedule"].choices == ("constant", "step", "linear", "cosine")
    assert (dims["warmup"].low, dims["warmup"].high) == (0.0, 0.1)
    assert "schedule" not in _space(None, "sgd:schedule=cosine", digits).dimensions  # fixed by the spec
    free = _space(None, "schedulefree_adamw", digits).dimensions
    assert "schedule" not in free and "warmup" not in free
