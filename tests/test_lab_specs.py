"""Optimizer specs: the --opt language, the registry and its errors."""

import math

import pytest
import torch

import sgdlab
from sgdlab.lab import specs
from sgdlab.lab.specs import OptimizerSpec, SpecError, default_specs, parse_spec, parse_specs, register_optimizer
from sgdlab.lab.tasks import Task


def _param():
    return [torch.zeros(3, requires_grad=True)]


def test_spec_parses_name_and_hyperparameters():
    spec = parse_spec("sgd:lr=0.1,momentum=0.9")
    assert spec.name == "sgd"
    assert spec.hyperparameters == {"lr": 0.1, "momentum": 0.9}
    assert spec.label == "sgd:lr=0.1,momentum=0.9"
    optimizer = spec.build(_param())
    assert isinstance(optimizer, sgdlab.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[0]["momentum"] == 0.9


def test_spec_values_tuples_booleans_and_label():
    spec = parse_spec("adam:betas=(0.8,0.99),amsgrad=true,label=my-adam")
    assert spec.hyperparameters == {"betas": (0.8, 0.99), "amsgrad": True}
    assert spec.label == "my-adam"
    assert spec.build(_param()).param_groups[0]["betas"] == (0.8, 0.99)


def test_spec_text_parses_back_to_the_same_spec():
    spec = parse_spec("adamw:weight_decay=0.1, lr=3e-4")
    assert parse_spec(spec.text) == OptimizerSpec("adamw", {"lr": 3e-4, "weight_decay": 0.1})


def test_presets_apply_and_spec_values_override_them():
    assert parse_spec("nesterov").resolved() == {"lr": 0.01, "momentum": 0.9, "nesterov": True}
    assert parse_spec("momentum:momentum=0.5").resolved()["momentum"] == 0.5


def test_any_torch_optim_class_by_name_case_insensitive():
    spec = parse_spec("torch.rmsprop:lr=1e-3,alpha=0.9")
    assert spec.name == "torch.RMSprop"
    optimizer = spec.build(_param())
    assert type(optimizer) is torch.optim.RMSprop and optimizer.param_groups[0]["alpha"] == 0.9


def test_gd_is_full_batch_and_sgd_is_not():
    assert parse_spec("gd").full_batch
    assert not parse_spec("sgd").full_batch


def test_default_race_is_gd_sgd_momentum_nesterov_adam_adamw_first():
    assert [s.name for s in default_specs()][:6] == ["gd", "sgd", "momentum", "nesterov", "adam", "adamw"]


def test_unknown_optimizer_lists_valid_names_and_suggests_one():
    with pytest.raises(SpecError) as error:
        parse_spec("sgdd:lr=0.1")
    message = str(error.value)
    assert "'sgdd'" in message and "did you mean 'sgd'" in message
    assert "adamw" in message and "torch.<Class>" in message
    assert "\n" not in message


def test_unknown_torch_class_lists_torch_optimizers():
    with pytest.raises(SpecError, match="torch.RMSprop"):
        parse_spec("torch.NoSuchOptimizer")


def test_unknown_hyperparameter_lists_valid_ones():
    with pytest.raises(SpecError) as error:
        parse_spec("sgd:lrr=0.1")
    assert "'lrr'" in str(error.value) and "did you mean 'lr'" in str(error.value)
    assert "momentum" in str(error.value)


@pytest.mark.parametrize("text, argument", [("sgd:lr=-1", "lr"), ("adam:betas=(1.5,0.9)", "betas"),
                                            ("momentum:momentum=-0.5", "momentum"), ("adamw:eps=-1", "eps")])
def test_invalid_values_are_rejected_at_parse_time(text, argument):
    with pytest.raises(SpecError, match=argument):
        parse_spec(text)


@pytest.mark.parametrize("text", ["sgd:lr", "sgd:=1", "sgd:lr=", ":lr=1", "sgd:lr=1,lr=2"])
def test_malformed_specs_are_rejected(text):
    with pytest.raises(SpecError):
        parse_spec(text)


def test_duplicate_labels_are_rejected_and_label_tells_them_apart():
    with pytest.raises(SpecError, match="twice"):
        parse_specs(["sgd", "sgd"])
    assert [s.label for s in parse_specs(["sgd", "sgd:label=again"])] == ["sgd", "again"]


def test_lr_comes_from_spec_then_task_hint_then_preset():
    task = Task("t", torch.nn.Identity, torch.zeros(4, 2), torch.zeros(4).long(), torch.zeros(2, 2),
                torch.zeros(2).long(), lr={"sgd": 0.3, "momentum": 0.07})
    assert parse_spec("sgd:lr=0.5").resolved(task)["lr"] == 0.5
    assert parse_spec("sgd").resolved(task)["lr"] == 0.3
    assert parse_spec("momentum").resolved(task)["lr"] == 0.07  # by name before family
    assert parse_spec("nesterov").resolved(task)["lr"] == 0.3  # by family
    assert parse_spec("adam").resolved(task) == {}  # no hint: the class's own default
    assert parse_spec("sgd").resolved()["lr"] == 0.01


def test_register_optimizer_is_one_line(monkeypatch):
    monkeypatch.setattr(specs, "OPTIMIZERS", dict(specs.OPTIMIZERS))
    register_optimizer("heavy", "sgdlab.optim:SGD", defaults={"momentum": 0.99}, family="sgd")
    spec = parse_spec("heavy:lr=0.01")
    assert spec.build(_param()).param_groups[0]["momentum"] == 0.99
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer("heavy", "sgdlab.optim:SGD")


def test_registered_factory_that_cannot_be_imported_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(specs, "OPTIMIZERS", dict(specs.OPTIMIZERS))
    register_optimizer("missing", "sgdlab.optim:NoSuchClass")
    with pytest.raises(SpecError, match="cannot be loaded"):
        parse_spec("missing")


def test_state_keys_give_sgdlab_optimizers_compact_state():
    group = parse_spec("adamw:state=bf16").build(_param()).param_groups[0]
    assert group["state_dtype"] == torch.bfloat16
    group = parse_spec("momentum:state=8bit,min_8bit_size=0").build(_param()).param_groups[0]
    assert group["state_dtype"] == torch.uint8 and group["min_8bit_size"] == 0
    assert "state_dtype" not in parse_spec("adamw:state=float32").build(_param()).param_groups[0]


@pytest.mark.parametrize("text, message", [
    ("adamw:state=fp16", r"invalid state='fp16'.*valid: float32, fp32, bf16, bfloat16, 8bit"),
    ("torch.Adam:state=bf16", "needs an sgdlab optimizer"),
    ("adamw:min_8bit_size=0", "needs state=8bit"),
    ("adamw:state=8bit,min_8bit_size=-1", "min_8bit_size"),
    ("swats:state=bf16", "state_dtype"),
])
def test_invalid_state_keys_are_rejected_before_training(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


@pytest.mark.parametrize("text, lr", [("sgd:lr=inf", math.inf), ("sgd:lr=1e-3", 1e-3), ("adam:lr=Infinity", math.inf)])
def test_lr_words_for_numbers_parse_to_floats(text, lr):
    # torch.optim accepts an infinite lr, so the spec does too; what matters is that it arrives
    # as the float, not as the string "inf" (which the optimizer would refuse as a TypeError).
    spec = parse_spec(text)
    assert spec.hyperparameters["lr"] == lr and isinstance(spec.hyperparameters["lr"], float)
    assert parse_spec(spec.text).hyperparameters == spec.hyperparameters


def test_nan_lr_parses_to_a_float_that_the_optimizer_refuses():
    with pytest.raises(SpecError, match=r"Invalid learning rate: nan"):
        parse_spec("sgd:lr=nan")
    assert math.isnan(parse_spec("sgd:lr=nan", check=False).hyperparameters["lr"])


def test_lr_that_is_not_a_number_is_a_spec_error_even_without_check():
    with pytest.raises(SpecError, match=r"invalid lr=fast .*expected a number"):
        parse_spec("sgd:lr=fast", check=False)


def test_number_words_inside_tuples_are_floats():
    assert parse_spec("adam:betas=(0.9,inf)", check=False).hyperparameters["betas"] == (0.9, math.inf)
