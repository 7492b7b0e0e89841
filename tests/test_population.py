"""Vectorized populations: the same runs as one at a time (to float tolerance), divergence of one
member, checkpoints and resume across both ways of running, and the fallback for what cannot be
vectorized."""

import functools
import json
import math

import pytest
import torch

from sgdlab.lab.population import Member, model_problem, plan, train_population
from sgdlab.lab.runner import LabWarning, run_race, train_run
from sgdlab.lab.specs import parse_spec
from sgdlab.lab.tasks import Task

# Measured bound (float32): batched kernels (vmap's grouped convolutions and batched matrix
# products) sum in another order than one model's, a few ulps per step, grown by training.
TOLERANCE = 1e-4


class TinyConv(torch.nn.Module):
    """A convolution and a linear head: what vmap turns into grouped convolutions and bmm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x.unsqueeze(1))).flatten(1))


class NotTraceable(torch.nn.Linear):
    def forward(self, x):
        if super().forward(x).sum().item() > 1e9:  # data-dependent Python control flow: vmap refuses it
            return x
        return super().forward(x)


def tiny_task(model=functools.partial(TinyConv), **options) -> Task:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    settings = dict(epochs=3, batch_size=16, lr={"sgd": 0.1, "gd": 0.5, "adam": 0.01})
    settings.update(options)
    return Task("tiny-pop", model, x[:48], y[:48], x[48:], y[48:], **settings)


def max_difference(a, b):
    """Largest difference between two runs' numbers; other fields must be equal."""
    assert (a.run_id, a.status, len(a.records)) == (b.run_id, b.status, len(b.records))
    worst = 0.0
    for ra, rb in zip(a.records, b.records):
        assert ra.keys() == rb.keys()
        for key in ra:
            if key == "time":
                continue
            if isinstance(ra[key], float) and isinstance(rb[key], float):
                worst = max(worst, abs(ra[key] - rb[key]))
            else:
                assert ra[key] == rb[key], (key, ra[key], rb[key])
    return worst


@pytest.mark.parametrize("texts", [
    ["momentum", "nesterov:lr=0.05", "adam", "adamw:lr=0.003", "amsgrad"],
    ["gd", "sgd:lr=0.05", "sgd:lr=0.2,label=fast", "sgdw"],
])
def test_population_gives_the_runs_of_one_at_a_time(texts):
    task = tiny_task()
    members = [Member(parse_spec(t), seed) for t in texts for seed in (0, 1)]
    together = train_population(task, members, epochs=2)
    for member, result in zip(members, together):
        alone = train_run(task, member.spec, member.seed, epochs=2)
        assert max_difference(result, alone) < TOLERANCE


def test_validation_records_and_a_target_that_ends_runs_early_as_train_run_has_them():
    base = tiny_task()
    task = Task("tiny-val", TinyConv, base.x_train[:36], base.y_train[:36], base.x_test, base.y_test,
                x_val=base.x_train[36:], y_val=base.y_train[36:], epochs=4, batch_size=12, lr={"sgd": 0.3})
    members = [Member(parse_spec(t), seed) for t in ("sgd", "sgd:lr=0.01,label=slow") for seed in (0, 1)]
    target = ("val_loss", 1.0, False)  # the fast runs reach it, the slow ones do not
    together = train_population(task, members, epochs=4, stop_at=target)
    assert "val_loss" in together[0].final and "val_accuracy" in together[0].final
    lengths = []
    for member, result in zip(members, together):
        alone = train_run(task, member.spec, member.seed, epochs=4, stop_at=target)
        assert max_difference(result, alone) < TOLERANCE
        lengths.append(len(result.records))
    assert min(lengths) < 5 == max(lengths)  # some stopped at the target, the others ran 4 epochs


def test_members_that_differ_only_in_lr_train_as_one_population():
    task = tiny_task()
    jobs = [(parse_spec(f"sgd:lr={lr}"), 0) for lr in (0.01, 0.02, 0.05, 0.1)]
    units, notes = plan(task, jobs)
    assert [len(unit) for unit in units] == [4] and notes == []
    assert [len(unit) for unit in plan(task, jobs, workers=2)[0]] == [2, 2]  # one per worker
    # Different optimizers share the model evaluations (each group updates its own members);
    # full-batch specs train alone (at such batches one model's kernels are faster).
    units, notes = plan(task, [(parse_spec(t), seed) for t in ("sgd", "momentum", "adam", "gd") for seed in (0, 1)])
    assert sorted(len(unit) for unit in units) == [1, 1, 6] and "gd" in notes[0]


def test_a_diverging_member_is_recorded_as_diverged_and_the_others_go_on():
    task = tiny_task()
    members = [Member(parse_spec("sgd:lr=0.1"), 0), Member(parse_spec("sgd:lr=inf,label=huge"), 0),
               Member(parse_spec("adam"), 1), Member(parse_spec("sgd:lr=0.05"), 1)]
    together = train_population(task, members, epochs=3)
    assert [r.status for r in together] == ["finished", "diverged", "finished", "finished"]
    assert together[1].final["diverged"] and together[1].final["epoch"] < 1  # mid-epoch: the others finish it
    for member, result in zip(members, together):
        assert max_difference(result, train_run(task, member.spec, member.seed, epochs=3)) < TOLERANCE


class Stop(Exception):
    pass


def _stop_after(epoch):
    def on_eval(record):
        if record["epoch"] == epoch and record["seed"] == 1:
            raise Stop
    return on_eval


def test_population_resumes_from_its_checkpoints_and_from_one_at_a_time_ones(tmp_path):
    task = tiny_task()
    members = [Member(parse_spec("adam"), seed, str(tmp_path / f"adam-{seed}.pt")) for seed in (0, 1, 2)]
    with pytest.raises(Stop):  # interrupted after epoch 1 (seed 0's checkpoint is at epoch 1, seed 2's at 0)
        train_population(task, members, epochs=3, on_eval=_stop_after(1))
    resumed = train_population(task, members, epochs=3)
    # A run started one at a time, continued in a population.
    single = Member(parse_spec("adam"), 3, str(tmp_path / "adam-3.pt"))
    with pytest.raises(Stop):
        train_run(task, single.spec, 3, epochs=3, checkpoint=single.checkpoint,
                  on_eval=lambda r: (_ for _ in ()).throw(Stop) if r["epoch"] == 2 else None)
    continued = train_population(task, [single], epochs=3)[0]
    for member, result in zip(members + [single], resumed + [continued]):
        assert [r["epoch"] for r in result.records] == [0, 1, 2, 3]
        assert max_difference(result, train_run(task, member.spec, member.seed, epochs=3)) < TOLERANCE
    # Finished: the checkpoint answers at once, with the same records (train_run reads it too).
    again = train_population(task, members, epochs=3)
    assert [r.records for r in again] == [r.records for r in resumed]
    assert train_run(task, members[0].spec, 0, epochs=3, checkpoint=members[0].checkpoint).records == resumed[0].records


def test_a_member_its_caller_stops_leaves_and_the_others_go_on():
    task = tiny_task()
    members = [Member(parse_spec("sgd"), seed) for seed in (0, 1, 2)]

    def on_eval(record):
        if record["seed"] == 1 and record["epoch"] == 1:
            raise Stop("pruned")

    results = train_population(task, members, epochs=3, on_eval=on_eval, stop_on=(Stop,))
    assert [r.status for r in results] == ["finished", "stopped", "finished"]
    assert [r["epoch"] for r in results[1].records] == [0, 1] and "pruned" in results[1].error
    for member, result in zip(members[::2], results[::2]):
        assert max_difference(result, train_run(task, member.spec, member.seed, epochs=3)) < TOLERANCE


def test_what_cannot_be_vectorized_runs_one_at_a_time_and_says_so_once():
    task = tiny_task()
    jobs = [(parse_spec(t), seed) for t in ("swats", "torch.RMSprop:lr=0.01", "sgd") for seed in (0, 1)]
    units, notes = plan(task, jobs)
    assert sorted(len(unit) for unit in units) == [1, 1, 1, 1, 2]  # the two sgd runs together
    assert len(notes) == 2 and any("swats" in n for n in notes) and any("torch.RMSprop" in n for n in notes)
    untraceable = tiny_task(model=functools.partial(NotTraceable, 8, 3))
    assert model_problem(untraceable) is not None
    units, notes = plan(untraceable, jobs)
    assert all(len(unit) == 1 for unit in units) and len(notes) == 1 and "vmap" in notes[0]
    results = train_population(untraceable, [Member(parse_spec("sgd"), 0), Member(parse_spec("sgd"), 1)], epochs=1)
    assert [r.status for r in results] == ["finished", "finished"]


def _log(path):
    rows = [json.loads(line) for line in (path / "runs.jsonl").read_text().splitlines()]
    return {(r["run"], r["epoch"]): r for r in rows}


def test_a_race_logs_the_same_records_with_and_without_populations(tmp_path):
    task = tiny_task()
    specs = [parse_spec(t) for t in ("gd", "momentum", "adam", "swats")]
    with pytest.warns(LabWarning, match="swats"):
        run_race(task, specs, seeds=2, epochs=2, workers=1, out=tmp_path / "pop", progress=False)
    run_race(task, specs, seeds=2, epochs=2, workers=1, out=tmp_path / "alone", progress=False, population=False)
    together, alone = _log(tmp_path / "pop"), _log(tmp_path / "alone")
    assert together.keys() == alone.keys() and len(together) == 8 * 3
    for key, record in together.items():
        for field, value in record.items():
            if field == "time":
                continue
            if isinstance(value, float):
                assert math.isclose(value, alone[key][field], abs_tol=TOLERANCE), (key, field)
            else:
                assert value == alone[key][field], (key, field)
