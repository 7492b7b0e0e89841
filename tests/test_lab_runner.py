"""Runs and races: budgets, determinism, divergence, resume, parallel workers, statistics, reports."""

import functools
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from sgdlab.lab.report import build_report, write_report
from sgdlab.lab.runner import Budget, LabWarning, run_race, train_run
from sgdlab.lab.specs import OptimizerSpec, parse_spec
from sgdlab.lab.stats import difference_ci, mean_ci
from sgdlab.lab.tasks import Task


def tiny_task(**options) -> Task:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    settings = dict(epochs=3, batch_size=16, lr={"sgd": 0.1, "gd": 0.5}, target_loss=0.9)
    settings.update(options)
    return Task("tiny", functools.partial(torch.nn.Linear, 4, 3), x[:48], y[:48], x[48:], y[48:], **settings)


def regression_task() -> Task:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def mse(outputs, targets):
        return torch.nn.functional.mse_loss(outputs, targets).item()

    return Task("regression", functools.partial(torch.nn.Linear, 3, 1), x[:32], y[:32], x[32:], y[32:],
                loss=torch.nn.functional.mse_loss, metrics={"mse": mse}, metric="mse", higher_is_better=False,
                epochs=3, batch_size=8)


def _numbers(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_run_evaluates_at_start_and_after_every_epoch():
    result = train_run(tiny_task(), parse_spec("sgd"), seed=0, epochs=3)
    assert result.status == "finished"
    assert [r["epoch"] for r in result.records] == [0, 1, 2, 3]
    assert [r["step"] for r in result.records] == [0, 3, 6, 9]  # 48 examples, batches of 16
    assert {"train_loss", "test_loss", "train_accuracy", "test_accuracy", "time", "diverged"} <= set(result.final)
    assert result.final["train_loss"] < result.records[0]["train_loss"]


def test_gd_takes_one_full_batch_step_per_epoch():
    result = train_run(tiny_task(), parse_spec("gd"), seed=0, epochs=4)
    assert [r["step"] for r in result.records] == [0, 1, 2, 3, 4]
    assert result.final["examples"] == 4 * 48


def test_step_budget_stops_mid_epoch_and_records_the_fraction():
    result = train_run(tiny_task(), parse_spec("sgd"), seed=0, steps=4)
    assert result.final["step"] == 4 and result.final["epoch"] == pytest.approx(4 * 16 / 48, abs=1e-3)


def test_same_seed_same_numbers_other_seed_other_numbers():
    task, spec = tiny_task(), parse_spec("momentum:lr=0.05")
    a = train_run(task, spec, seed=3, epochs=2)
    b = train_run(task, spec, seed=3, epochs=2)
    c = train_run(task, spec, seed=4, epochs=2)
    assert _numbers(a.records) == _numbers(b.records)
    assert _numbers(a.records) != _numbers(c.records)


def test_a_diverging_run_is_recorded_and_the_others_go_on(tmp_path):
    task = regression_task()
    race = run_race(task, [parse_spec("sgd:lr=1000,label=huge"), parse_spec("sgd:lr=0.05,label=ok")], seeds=2,
                    epochs=3, workers=1, out=tmp_path, progress=False)
    statuses = {(r.optimizer, r.seed): r.status for r in race.runs}
    assert statuses == {("huge", 0): "diverged", ("huge", 1): "diverged", ("ok", 0): "finished", ("ok", 1): "finished"}
    diverged = race.runs[0]
    assert diverged.final["diverged"] is True and diverged.final["train_loss"] is None  # inf/NaN: not a number
    report = build_report(race)
    assert report.summaries["huge"].diverged == 2
    assert report.summaries["ok"].final_metric.n == 2
    write_report(report, tmp_path)  # diverged runs do not break the figures
    assert json.loads((tmp_path / "summary.json").read_text())["optimizers"]["huge"]["diverged"] == 2


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("text", ["adam:lr=0.01", "adam:lr=0.01,state=bf16",
                                  "adam:lr=0.01,state=8bit,min_8bit_size=0"],
                         ids=["float32", "bf16", "8bit"])
def test_an_interrupted_run_resumes_from_its_checkpoint_with_the_same_numbers(tmp_path, text):
    task, spec = tiny_task(epochs=5), parse_spec(text)
    reference = train_run(task, spec, seed=1)
    checkpoint = tmp_path / "run.pt"

    def kill_after_epoch_2(record):
        if record["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_run(task, spec, seed=1, checkpoint=checkpoint, on_eval=kill_after_epoch_2)
    seen = []
    resumed = train_run(task, spec, seed=1, checkpoint=checkpoint, on_eval=seen.append)
    assert [r["epoch"] for r in seen] == [3, 4, 5]  # only the epochs it had not finished
    assert _numbers(resumed.records) == _numbers(reference.records)

    again = train_run(task, spec, seed=1, checkpoint=checkpoint, on_eval=seen.append)
    assert again.status == "finished" and len(seen) == 3  # a finished run is not trained again


def test_rerunning_a_race_with_the_same_out_skips_finished_runs(tmp_path):
    task, specs = tiny_task(), [parse_spec("sgd"), parse_spec("gd")]
    first = run_race(task, specs, seeds=2, workers=1, out=tmp_path, progress=False)
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == sum(len(r.records) for r in first.runs) == 4 * 4
    second = run_race(task, specs, seeds=2, workers=1, out=tmp_path, progress=False)
    assert (tmp_path / "runs.jsonl").read_text().splitlines() == lines  # nothing new was trained or logged
    assert [_numbers(r.records) for r in second.runs] == [_numbers(r.records) for r in first.runs]


def test_a_log_line_torn_by_a_power_cut_is_set_aside_and_the_next_records_stay_readable(tmp_path):
    task, specs = tiny_task(epochs=2), [parse_spec("sgd")]
    first = run_race(task, specs, seeds=1, workers=1, out=tmp_path, progress=False)
    log = tmp_path / "runs.jsonl"
    lines = log.read_text().splitlines()
    torn = lines[-1][: len(lines[-1]) // 2]
    log.write_text("\n".join(lines[:-1]) + "\n" + torn)  # the last record cut mid-write, no newline

    with pytest.warns(LabWarning, match=rf"runs.jsonl: line {len(lines)} is not a whole record"):
        second = run_race(task, [*specs, parse_spec("gd")], seeds=1, workers=1, out=tmp_path, progress=False)

    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line parses
    assert sorted(map(json.dumps, records)) == sorted(map(json.dumps, second.records()))  # none lost, none twice
    assert _numbers(second.runs[0].records) == _numbers(first.runs[0].records)
    aside = list(tmp_path.glob("runs.jsonl.damaged-*"))
    assert len(aside) == 1 and aside[0].read_text() == torn + "\n"


def test_a_truncated_checkpoint_is_set_aside_by_name_and_its_run_starts_over(tmp_path):
    task, spec = tiny_task(epochs=3), parse_spec("sgd")
    reference = train_run(task, spec, seed=0)
    checkpoint = tmp_path / "run.pt"
    train_run(task, spec, seed=0, checkpoint=checkpoint)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])  # as a power cut could leave it

    with pytest.warns(LabWarning, match=rf"checkpoint {re.escape(str(checkpoint))} cannot be read.*starts over"):
        again = train_run(task, spec, seed=0, checkpoint=checkpoint)

    assert again.status == "finished" and _numbers(again.records) == _numbers(reference.records)
    aside = list(tmp_path.glob("run.pt.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[: len(data) // 3]
    assert train_run(task, spec, seed=0, checkpoint=checkpoint).status == "finished"  # the new one reads


def test_a_race_with_a_damaged_checkpoint_reruns_that_run_instead_of_failing_it(tmp_path):
    task, specs = tiny_task(epochs=2), [parse_spec("sgd"), parse_spec("gd")]
    first = run_race(task, specs, seeds=1, workers=1, out=tmp_path, progress=False)
    damaged = sorted((tmp_path / "checkpoints").glob("*.pt"))[0]
    damaged.write_bytes(b"")

    with pytest.warns(LabWarning, match=re.escape(damaged.name)):
        second = run_race(task, specs, seeds=1, workers=1, out=tmp_path, progress=False)

    assert [r.status for r in second.runs] == ["finished", "finished"]
    assert [_numbers(r.records) for r in second.runs] == [_numbers(r.records) for r in first.runs]


def test_checkpoints_are_replaced_whole(tmp_path, monkeypatch):
    # A kill during a save must leave the previous checkpoint: the new one is written aside, then renamed.
    task, spec = tiny_task(epochs=3), parse_spec("sgd")
    checkpoint = tmp_path / "run.pt"
    saves = []
    real_replace = os.replace

    def replace(source, target):
        saves.append((Path(source).name, Path(target).name, Path(source).stat().st_size > 0))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    train_run(task, spec, seed=0, checkpoint=checkpoint)
    assert saves and all(s == ("run.pt.tmp", "run.pt", True) for s in saves)


@pytest.mark.slow  # two spawned worker processes import torch: a few seconds
def test_parallel_workers_give_the_same_numbers_and_write_the_report(tmp_path):
    task, specs = tiny_task(), [parse_spec("gd"), parse_spec("sgd"), parse_spec("adam:lr=0.01")]
    serial = run_race(task, specs, seeds=2, workers=1, progress=False)
    parallel = run_race(task, specs, seeds=2, workers=2, out=tmp_path, progress=False)
    assert [_numbers(r.records) for r in parallel.runs] == [_numbers(r.records) for r in serial.runs]

    report = build_report(parallel)
    paths = write_report(report, tmp_path)
    html = paths["html"].read_text()
    assert html.count('src="data:image/png;base64,') == 2 and "Verdict" in html
    assert "plots/learning_curves.png" in paths["markdown"].read_text()
    assert (tmp_path / "plots" / "final_metrics.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(paths["summary"].read_text())
    assert set(summary["optimizers"]) == {"gd", "sgd", "adam:lr=0.01"}
    assert summary["optimizers"]["sgd"]["final_metric"]["n"] == 2
    assert any("GD vs" in f["question"] for f in summary["verdict"])
    logged = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(logged) == sum(len(r.records) for r in parallel.runs)


def test_mean_ci_uses_student_t():
    estimate = mean_ci([1.0, 2.0, 3.0])
    assert estimate.mean == 2.0
    assert estimate.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) * s / sqrt(n)
    assert mean_ci([5.0]).n == 1 and math.isnan(mean_ci([5.0]).half_width)
    assert mean_ci([1.0, float("nan"), None]).n == 1


def test_difference_ci_is_welch():
    d = difference_ci([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    va, vb = 1.0 / 3, 3.0 / 3
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    from scipy import stats

    assert d.mean == pytest.approx(1.0)
    assert d.half_width == pytest.approx(stats.t.ppf(0.975, dof) * math.sqrt(va + vb))


def test_steps_to_target_counts_the_first_evaluation_below_it(tmp_path):
    task = tiny_task(target_loss=10.0)  # reached at the first evaluation
    race = run_race(task, [OptimizerSpec("sgd")], seeds=2, epochs=1, workers=1, progress=False)
    summary = build_report(race).summaries["sgd"]
    assert summary.reached == 2 and summary.steps_to_target.mean == 0


def test_budget_rejects_non_positive_limits():
    with pytest.raises(ValueError, match="epochs"):
        Budget(epochs=0)
    with pytest.raises(ValueError, match="time_budget"):
        Budget(time_budget=-1.0)


def test_a_task_that_cannot_be_pickled_runs_in_process_with_a_warning():
    task = tiny_task()
    task.model = lambda: torch.nn.Linear(4, 3)  # lambdas cannot reach spawned workers
    with pytest.warns(UserWarning, match="cannot be sent to worker processes"):
        race = run_race(task, [parse_spec("sgd")], seeds=2, epochs=1, workers=2, progress=False)
    assert [r.status for r in race.runs] == ["finished", "finished"]


def test_a_spec_carries_its_optimizer_entry_when_pickled():
    import pickle

    from sgdlab.lab import specs

    spec = parse_spec("momentum:lr=0.01")
    clone = pickle.loads(pickle.dumps(spec))
    assert clone == spec and clone.entry == specs.OPTIMIZERS["momentum"]


def test_time_budget_stops_after_the_step_that_used_it_up():
    result = train_run(tiny_task(), parse_spec("sgd"), seed=0, time_budget=1e-9)
    assert result.status == "finished"
    assert result.final["step"] == 1 and result.final["epoch"] == pytest.approx(16 / 48, abs=1e-3)


def test_compact_state_specs_train_a_little_differently_from_float32():
    task = tiny_task(epochs=2)
    plain = train_run(task, parse_spec("adam:lr=0.01"), seed=0)
    for text in ("adam:lr=0.01,state=bf16", "adam:lr=0.01,state=8bit,min_8bit_size=0"):
        compact = train_run(task, parse_spec(text), seed=0)
        assert compact.status == "finished"
        assert compact.final["train_loss"] != plain.final["train_loss"]
        assert compact.final["train_loss"] == pytest.approx(plain.final["train_loss"], rel=0.05)


def test_lab_warnings_print_as_one_line_under_the_command_name(monkeypatch):
    import warnings

    from sgdlab.lab.runner import lab_warning_prefix, one_line_lab_warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    one_line_lab_warnings("sgdlab compare")
    assert lab_warning_prefix() == "sgdlab compare"
    assert warnings.formatwarning("checkpoint x moved", LabWarning, "runner.py", 1) == \
        "sgdlab compare: warning: checkpoint x moved\n"
    assert "runner.py:1: UserWarning" in warnings.formatwarning("other", UserWarning, "runner.py", 1)
    one_line_lab_warnings("sgdlab tune")  # a second command in the same process takes its own name
    assert warnings.formatwarning("m", LabWarning, "f", 1) == "sgdlab tune: warning: m\n"
