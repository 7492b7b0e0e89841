"""The core's contracts: rules declared once as data, the ops contract, routes, capabilities.

Every face reads each rule's declaration (sgdlab.algorithms.rule.Rule); these tests check that
the declarations say what the faces do, that rules call nothing outside the ops contract, and
that what the declaration promises (non-elementwise rules never traced, routes) holds.
"""

from __future__ import annotations

import ast
import inspect
import os
import pathlib

import numpy as np
import pytest
import torch

import sgdlab
from sgdlab import algorithms
from sgdlab.algorithms import ops as contract
from sgdlab.algorithms.rule import Hyperparameter, Route, Rule
from sgdlab.optim import RuleOptimizer, torch_ops, tracing

os.environ.setdefault("KERAS_BACKEND", "torch")  # as tests/test_keras.py: the backend CI has

ALGORITHMS = pathlib.Path(algorithms.__file__).parent

TORCH_FACES = {
    "sgd": sgdlab.SGD,
    "adam": sgdlab.Adam,
    "schedule_free_sgd": sgdlab.ScheduleFreeSGD,
    "schedule_free_adamw": sgdlab.ScheduleFreeAdamW,
    "swats": sgdlab.SWATS,
}


# --- the ops contract ------------------------------------------------------------------------
def _ops_calls(path: pathlib.Path) -> set[str]:
    """Every ``ops.NAME`` in a module of sgdlab.algorithms."""
    tree = ast.parse(path.read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "ops"}


@pytest.mark.parametrize("path", sorted(ALGORITHMS.glob("*.py")), ids=lambda p: p.name)
def test_every_rule_calls_only_the_ops_contract(path):
    allowed = set(contract.OPERATIONS)
    if path.name == "fused.py":  # the one module that reaches the optional multiply-adds
        allowed |= set(contract.FUSED)
    assert _ops_calls(path) <= allowed, f"{path.name} calls ops outside the contract"


def test_the_scan_sees_the_calls_it_must_police():
    # The AST scan above cannot pass vacuously: it finds the calls the rules are known to make.
    assert {"sqrt", "maximum"} <= _ops_calls(ALGORITHMS / "adam.py")
    assert "sum" in _ops_calls(ALGORITHMS / "swats.py")


def _keras_shims():
    pytest.importorskip("keras")  # a third-party optional dependency, not our module
    from sgdlab.keras import _ops as keras_ops

    return [keras_ops.OPS, keras_ops.KerasOps]


def _shims():
    return [("torch", torch_ops, torch.as_tensor), ("numpy", contract.NUMPY, np.asarray)]


@pytest.mark.parametrize("name", contract.OPERATIONS)
def test_every_shim_provides_every_operation_with_the_same_meaning(name):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 3))
    calls = {
        "sqrt": lambda o, t: o.sqrt(o.abs(t(a))),
        "abs": lambda o, t: o.abs(t(a)),
        "sign": lambda o, t: o.sign(t(a)),
        "maximum": lambda o, t: o.maximum(t(a), t(b)),
        "minimum": lambda o, t: o.minimum(t(a), t(b)),
        "where": lambda o, t: o.where(t(a) > 0, t(a), t(b)),
        "sum": lambda o, t: o.sum(t(a), axis=(-2, -1), keepdims=True),
        "norm": lambda o, t: o.norm(t(a), axis=(-2, -1), keepdims=True),
        "cast": lambda o, t: o.cast(t(a), "float32"),
        "matmul": lambda o, t: o.matmul(t(a), t(b)),
        "transpose": lambda o, t: o.transpose(t(a)),
    }
    expected = np.asarray(calls[name](contract.NUMPY, np.asarray))
    for label, shim, convert in _shims():
        got = np.asarray(calls[name](shim, convert))
        np.testing.assert_allclose(got, expected, rtol=1e-6 if name == "cast" else 1e-12,
                                   err_msg=f"{label}.{name}")
    keras = pytest.importorskip("keras")
    for shim in _keras_shims():
        got = keras.ops.convert_to_numpy(calls[name](shim, keras.ops.convert_to_tensor))
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=f"keras {shim}.{name}")


class _StrictOps:
    """torch's shim, refusing every name outside the contract (and the optional multiply-adds)."""

    def __getattr__(self, name):
        if name not in contract.OPERATIONS + contract.FUSED:
            raise AssertionError(f"a rule called ops.{name}, outside the contract")
        return getattr(torch_ops, name)


@pytest.mark.parametrize("name", sorted(algorithms.RULES))
def test_every_declared_rule_runs_on_the_contract_alone(name):
    rule = algorithms.RULES[name]
    arguments = {"lr": 0.1, "ckp1": 0.5, "step": 1, "switched": False, "sgd_lr": 0.05,
                 "momentum": 0.9, "weight_decay": 0.01}
    accepted = inspect.signature(rule.update).parameters
    arguments = {k: v for k, v in arguments.items() if k in accepted}
    param, grad = torch.randn(4, 3), torch.randn(4, 3)
    state = rule.init_state(param, {k: v for k, v in arguments.items() if k != "sgd_lr"},
                            zeros_like=torch.zeros_like, clone=torch.clone)
    for _ in range(2):
        param, state = rule.update(param, grad, state, ops=_StrictOps(), **arguments)
        assert torch.isfinite(param).all()


# --- declarations say what the faces do --------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TORCH_FACES))
def test_the_torch_face_of_each_rule_reads_its_declaration(name):
    cls = TORCH_FACES[name]
    rule = algorithms.RULES[name]
    assert cls.declaration is rule
    param = torch.nn.Parameter(torch.randn(5, 4))
    optimizer = cls([param])
    if hasattr(optimizer, "train"):
        optimizer.train()
    group = optimizer.param_groups[0]
    for hyperparameter in rule.hyperparameters:  # every torch name is a param-group key
        if hyperparameter.torch_key is not None:
            assert hyperparameter.torch_key.split("[")[0] in group, hyperparameter
    param.grad = torch.randn(5, 4)
    optimizer.step()
    expected = {entry.key for entry in rule.entries(rule.arguments(group, "torch"))
                if entry.start != "from gradient"}
    assert expected <= set(optimizer.state[param]) if expected else True
    assert cls.grouped_execution_supported is rule.elementwise
    assert cls.compact_state_supported is rule.compact_state


def test_no_torch_face_keeps_its_own_table_of_names():
    # The faces' modules no longer write a rule's keyword arguments by hand.
    import sgdlab.optim.adam
    import sgdlab.optim.schedule_free
    import sgdlab.optim.sgd
    import sgdlab.optim.swats

    for module in (sgdlab.optim.sgd, sgdlab.optim.adam, sgdlab.optim.swats,
                   sgdlab.optim.schedule_free):
        source = inspect.getsource(module)
        assert "def rule_hyperparameters" not in source, module.__name__
        assert "def init_state" not in source, module.__name__


def test_a_declared_name_translates_between_faces():
    assert algorithms.ADAM.face_name("betas[0]", "keras") == "beta_1"
    assert algorithms.ADAM.face_name("eps", "keras") == "epsilon"
    values = algorithms.ADAM.arguments({"betas": (0.8, 0.95), "eps": 1e-6, "lr": 0.1}, "torch")
    assert values == {"lr": 0.1, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6}
    assert algorithms.ADAM.torch_values(values)["betas"] == (0.8, 0.95)


# --- capabilities known up front -----------------------------------------------------------------
def _normalized(param, grad, state, *, lr, ops):
    # Divides by a norm over the whole tensor: not elementwise.
    return param - lr * grad / ops.sqrt(ops.sum(grad * grad)), {}


NORMALIZED = Rule(name="normalized", update=_normalized, elementwise=False,
                  hyperparameters=(Hyperparameter("lr"),))


class NormalizedSGD(RuleOptimizer):
    declaration = NORMALIZED

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})


def _count_traces(monkeypatch):
    """A list that grows by one at every trace of a rule (the grouped path's first step)."""
    traced = []
    original = tracing.trace
    monkeypatch.setattr(tracing, "trace", lambda *a, **k: traced.append(1) or original(*a, **k))
    return traced


def test_the_trace_counter_counts(monkeypatch):
    # The grouped path does trace an elementwise rule (a new one: traces are replayed per rule
    # and configuration for the whole process): the counter can see it.
    def halved(param, grad, state, *, lr, ops):
        return param - 0.5 * lr * grad, {}

    class Halved(RuleOptimizer):
        declaration = Rule(name="halved", update=halved, hyperparameters=(Hyperparameter("lr"),))

        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

    traced = _count_traces(monkeypatch)
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.ones(4)
    Halved([param], lr=0.2).step()
    assert traced
    torch.testing.assert_close(param.detach(), torch.full((4,), -0.1))


def test_a_rule_declared_not_elementwise_is_never_traced(monkeypatch):
    traced = _count_traces(monkeypatch)
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    optimizer = NormalizedSGD(params, lr=1.0)
    for _ in range(10):
        params[0].grad = torch.tensor([3.0, 4.0, 0.0])
        params[1].grad = torch.tensor([1.0, 0.0, 0.0, 0.0])
        optimizer.step()
    assert traced == []
    torch.testing.assert_close(params[0].detach(), torch.tensor([-6.0, -8.0, 0.0]))


def test_an_undeclared_rule_that_cannot_be_traced_is_tried_once(monkeypatch):
    # A subclass without a declaration: the first step finds out, later steps remember.
    traced = _count_traces(monkeypatch)

    class Undeclared(RuleOptimizer):
        rule = staticmethod(_normalized)
        validate = staticmethod(lambda **_: None)

        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        def rule_hyperparameters(self, group):
            return {"lr": group["lr"]}

        def init_state(self, param, group):
            return {}

    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    optimizer = Undeclared(params, lr=1.0)
    for _ in range(10):
        params[0].grad = torch.tensor([3.0, 4.0, 0.0])
        params[1].grad = torch.tensor([1.0, 0.0, 0.0, 0.0])
        optimizer.step()
    assert 1 <= len(traced) <= 2  # the first step only (with stand-in numbers, then plain ones)
    torch.testing.assert_close(params[0].detach(), torch.tensor([-6.0, -8.0, 0.0]))


def test_swats_is_never_traced(monkeypatch):
    traced = _count_traces(monkeypatch)
    param = torch.nn.Parameter(torch.randn(8))
    optimizer = sgdlab.SWATS([param], switch_at=3)
    for _ in range(6):
        param.grad = torch.randn(8)
        optimizer.step()
    assert traced == [] and optimizer.switch_step == 3


# --- routes: one rule for matrices, another for the rest -------------------------------------------
def _is_matrix(param):
    return param.dim() == 2


SGD_FOR_MATRICES = Rule(
    name="sgd_for_matrices_adam_for_the_rest",
    update=algorithms.adam,
    hyperparameters=algorithms.ADAM.hyperparameters,
    state=algorithms.ADAM.state,
    validate=algorithms.validate_adam,
    routes=(Route(_is_matrix, algorithms.SGD, "2-D weights"),),
)


class Routed(RuleOptimizer):
    declaration = SGD_FOR_MATRICES

    def __init__(self, params, lr=0.01, momentum=0.9):
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": 0.0,
                                  "weight_decay": 0.0, "nesterov": False, "maximize": False,
                                  "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False,
                                  "decoupled_weight_decay": False})


def test_routes_update_each_parameter_with_its_rule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    twin = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    ours = Routed(list(model.parameters()))
    matrices = [p for p in twin if p.dim() == 2]
    vectors = [p for p in twin if p.dim() != 2]
    references = [torch.optim.SGD(matrices, lr=0.01, momentum=0.9),
                  torch.optim.Adam(vectors, lr=0.01)]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in twin]
        for p, q, g in zip(model.parameters(), twin, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        for reference in references:
            reference.step()
    for p, q in zip(model.parameters(), twin):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    kinds = {p.dim(): set(ours.state[p]) for p in model.parameters()}
    assert kinds == {2: {"momentum_buffer"}, 1: {"step", "exp_avg", "exp_avg_sq"}}


# --- the Keras face: one update_step for every rule ---------------------------------------------------
def test_the_keras_classes_share_one_update_step():
    pytest.importorskip("keras")
    import sgdlab.keras as faces

    classes = [faces.SGD, faces.Adam, faces.AdamW, faces.SWATS, faces.ScheduleFreeSGD,
               faces.ScheduleFreeAdamW]
    assert {cls.update_step for cls in classes} == {faces.RuleOptimizer.update_step}
    for cls in classes:
        assert cls.declaration in algorithms.RULES.values()


@pytest.mark.parametrize("name", ["ScheduleFreeSGD", "ScheduleFreeAdamW", "SWATS", "Adam"])
def test_keras_updates_record_no_autograd_graph_on_the_torch_backend(name):
    keras = pytest.importorskip("keras")
    if keras.config.backend() != "torch":
        pytest.skip("the torch backend's autograd")
    import sgdlab.keras as faces

    variable = keras.Variable(np.ones(3, dtype="float32"))
    optimizer = getattr(faces, name)(learning_rate=0.1)
    with torch.enable_grad():
        gradient = torch.ones(3, requires_grad=True) * 2
        optimizer.apply_gradients([(gradient, variable)])
    assert variable.value.grad_fn is None
    assert all(v.value.grad_fn is None for v in optimizer.variables)
