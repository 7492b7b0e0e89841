"""Built-in tasks and the task registry."""

import math

import pytest
import torch

from sgdlab.lab import tasks
from sgdlab.lab.tasks import Task, UnknownTaskError, get_task, register_task, task_names

BUILTINS = {
    "digits": dict(),
    "logistic": dict(n=400, dim=5),
    "modular": dict(p=7),
    "mnist1d": dict(num_samples=100),
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SGDLAB_CACHE", str(tmp_path / "cache"))


def test_builtin_tasks_are_registered():
    assert set(BUILTINS) <= set(task_names())


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_task_shapes_loss_and_metric(name):
    task = get_task(name, **BUILTINS[name])
    assert task.name == name
    assert len(task.x_train) == len(task.y_train) > 0 and len(task.x_test) == len(task.y_test) > 0
    assert task.x_train.shape[1:] == task.x_test.shape[1:]
    torch.manual_seed(0)
    outputs = task.model()(task.x_train[:8])
    assert outputs.shape[0] == 8
    loss = task.loss(outputs, task.y_train[:8])
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert 0.0 <= task.metrics[task.metric](outputs, task.y_train[:8]) <= 1.0
    assert task.epochs >= 1 and task.batch_size >= 1 and task.target_loss is not None


def test_data_do_not_depend_on_the_global_seed():
    torch.manual_seed(1)
    a = get_task("logistic", n=200, dim=4)
    torch.manual_seed(2)
    tasks._logistic_data.cache_clear()
    b = get_task("logistic", n=200, dim=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_logistic_optimum_is_a_lower_bound_that_gradient_descent_approaches():
    task = get_task("logistic", n=400, dim=5)
    model = task.model()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = task.loss(model(task.x_train), task.y_train)
        loss.backward()
        return loss

    optimizer.step(closure)
    final = task.loss(model(task.x_train), task.y_train).item()
    assert task.optimum_loss < math.log(2)
    assert final == pytest.approx(task.optimum_loss, abs=1e-4)
    assert final >= task.optimum_loss - 1e-5


def test_modular_task_covers_every_pair_once():
    task = get_task("modular", p=7)
    pairs = torch.cat([task.x_train, task.x_val, task.x_test])[:, :2]
    assert len({tuple(p.tolist()) for p in pairs}) == 49
    assert torch.equal(torch.cat([task.y_train, task.y_val, task.y_test]), (pairs[:, 0] + pairs[:, 1]) % 7)


def test_mnist1d_is_generated_offline_and_cached_in_the_user_cache(tmp_path, monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to download")

    monkeypatch.setattr(requests, "get", no_network)
    tasks._mnist1d_data.cache_clear()
    first = get_task("mnist1d", num_samples=100)
    cached = list((tmp_path / "cache").glob("mnist1d-*.npz"))
    assert len(cached) == 1
    tasks._mnist1d_data.cache_clear()
    second = get_task("mnist1d", num_samples=100)
    assert torch.equal(first.x_train, second.x_train)
    assert first.x_train.shape[1] == 40 and set(first.y_train.unique().tolist()) <= set(range(10))


def test_user_tasks_register_and_build_from_datasets(monkeypatch):
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))
    train = torch.utils.data.TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
    test = torch.utils.data.TensorDataset(torch.randn(4, 3), torch.randint(0, 2, (4,)))
    task = Task.from_datasets("mine", lambda: torch.nn.Linear(3, 2), train, test, epochs=2)
    register_task("mine", lambda: task)
    assert get_task("mine") is task and "mine" in task_names()
    with pytest.raises(ValueError, match="already registered"):
        register_task("mine", lambda: task)


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(UnknownTaskError, match="valid tasks: .*digits"):
        get_task("cifar")


def test_inconsistent_task_data_is_rejected():
    with pytest.raises(ValueError, match="y_train"):
        Task("bad", torch.nn.Identity, torch.zeros(4, 2), torch.zeros(3), torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="metric"):
        Task("bad", torch.nn.Identity, torch.zeros(4, 2), torch.zeros(4), torch.zeros(2, 2), torch.zeros(2),
             metric="f1")


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_tasks_hold_out_a_validation_split_apart_from_train_and_test(name):
    task = get_task(name, **BUILTINS[name])
    assert task.has_validation and task.n_val == round(0.2 * (task.n_train + task.n_val))
    assert task.with_validation() is task  # the task's own split is the one every command uses
    train = {tuple(r) for r in task.x_train.tolist()}
    assert not any(tuple(r) in train for r in task.x_val.tolist()) or name == "mnist1d"  # MNIST-1D may repeat


def test_a_task_without_validation_data_gets_a_deterministic_split_of_its_training_data():
    x, y = torch.randn(50, 3), torch.randint(0, 2, (50,))
    task = Task(name="mine", model=lambda: torch.nn.Linear(3, 2), x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    assert not task.has_validation
    a, b = task.with_validation(), task.with_validation()
    assert a.n_val == 10 and a.n_train == 40 and torch.equal(a.x_val, b.x_val)
    assert sorted(torch.cat([a.x_train, a.x_val])[:, 0].tolist()) == sorted(x[:, 0].tolist())
    with pytest.raises(ValueError, match="val_fraction"):
        task.with_validation(1.5)
    with pytest.raises(ValueError, match="x_val and y_val"):
        Task(name="half", model=lambda: torch.nn.Linear(3, 2), x_train=x, y_train=y, x_test=x, y_test=y, x_val=x)


def test_mnist1d_carries_the_papers_baselines_and_a_report_shows_them_beside_the_race(tmp_path):
    import dataclasses

    from sgdlab.lab.report import build_report, references_section, write_report
    from sgdlab.lab.runner import run_race
    from sgdlab.lab.specs import parse_spec

    assert get_task("mnist1d", num_samples=100).references == {
        "logistic regression": 0.32, "MLP": 0.68, "CNN": 0.94, "GRU": 0.91}
    task = dataclasses.replace(get_task("logistic", n=200, dim=4), references={"CNN": 0.94})
    race = run_race(task, [parse_spec("sgd")], seeds=1, epochs=1, workers=1, progress=False, out=tmp_path)
    caption, header, rows = references_section(build_report(race))
    assert rows[0] == ["CNN (published)", "94%"] and rows[-1][0] == "this race, best: sgd"
    write_report(build_report(race), tmp_path)
    assert "## Published numbers" in (tmp_path / "report.md").read_text()
