"""Learning-rate schedules in specs: torch's schedulers, over the run's steps, in every lab command."""

import pytest
import torch

from sgdlab.lab.runner import train_run
from sgdlab.lab.schedules import Schedule
from sgdlab.lab.specs import SpecError, parse_spec
from sgdlab.lab.tasks import Task


def _lrs(schedule: Schedule, total: int, lr: float = 1.0) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = schedule.build(optimizer, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return rates


def test_constant_is_no_scheduler_at_all():
    assert Schedule().build(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1), 10) is None


def test_cosine_with_warmup_ramps_up_then_decays_towards_zero():
    rates = _lrs(Schedule("cosine", 0.2), 20)
    assert rates[0] == pytest.approx(1 / 5) and rates[4] == pytest.approx(1.0)  # 4 warmup steps
    assert all(a >= b for a, b in zip(rates[4:], rates[5:])) and rates[-1] < 0.02


def test_step_divides_by_ten_at_half_and_three_quarters():
    assert _lrs(Schedule("step"), 8) == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_linear_reaches_zero_at_the_end_and_warmup_counts_steps_when_whole():
    rates = _lrs(Schedule("linear", 2), 6)
    assert rates[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and rates[-1] == pytest.approx(0.25)


@pytest.mark.parametrize("text, message", [
    ("sgd:schedule=exponential", "valid: constant, step, linear, cosine"),
    ("sgd:warmup=-0.1", "invalid warmup"),
    ("schedulefree_sgd:schedule=cosine", "iterate averaging replaces the decay"),
    ("schedulefree_adamw:warmup=0.05", "use warmup_steps=N"),
])
def test_invalid_schedules_are_spec_errors(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


def _tiny_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return Task(name="tiny", model=lambda: torch.nn.Linear(4, 2), x_train=x, y_train=y, x_test=x[:16],
                y_test=y[:16], epochs=2, batch_size=16)


def test_a_scheduled_run_differs_from_a_constant_one_and_resumes_bit_identically(tmp_path):
    task = _tiny_task()
    spec = parse_spec("sgd:lr=0.5,schedule=cosine,warmup=0.25", task=task)
    plain = train_run(task, parse_spec("sgd:lr=0.5"), epochs=2)
    whole = train_run(task, spec, epochs=2)
    assert whole.final["train_loss"] != plain.final["train_loss"]
    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):  # killed after epoch 1: its checkpoint holds the scheduler
        train_run(task, spec, epochs=2, checkpoint=path, on_eval=_stop_after_epoch_1)
    resumed = train_run(task, spec, epochs=2, checkpoint=path)
    assert resumed.final["train_loss"] == whole.final["train_loss"]


def _stop_after_epoch_1(record):
    if record["epoch"] == 1:
        raise KeyboardInterrupt


def test_a_schedule_needs_a_known_run_length():
    task = _tiny_task()
    with pytest.raises(ValueError, match="epoch or step budget"):
        train_run(task, parse_spec("sgd:schedule=cosine"), time_budget=1.0)


def test_the_lr_range_test_refuses_a_schedule(capsys, tmp_path):
    from sgdlab.cli import main

    code = main(["tune", "lr", "--task", "logistic", "--opt", "sgd:schedule=cosine", "--out", str(tmp_path / "lr")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "sweeps the learning rate itself" in err and len(err.splitlines()) == 1
