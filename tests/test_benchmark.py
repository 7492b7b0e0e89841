"""`sgdlab benchmark`: AlgoPerf's time-to-target scoring, its profiles, and the command's errors and report."""

import json
import math

import pytest

from sgdlab.cli import main
from sgdlab.lab.benchmark import profile, ratios, sample_configurations, score, time_to_target
from sgdlab.lab.specs import parse_spec
from sgdlab.lab.tasks import get_task

INF = math.inf


def test_time_to_target_is_the_first_evaluation_reaching_it_and_infinite_on_a_miss():
    records = [{"step": 0, "time": 0.0, "val_accuracy": 0.1}, {"step": 10, "time": 1.5, "val_accuracy": 0.8},
               {"step": 20, "time": 3.0, "val_accuracy": 0.9}]
    assert time_to_target(records, "val_accuracy", 0.75, True) == (10.0, 1.5)
    assert time_to_target(records, "val_accuracy", 0.95, True) == (INF, INF)
    assert time_to_target(records, "val_accuracy", 0.5, False) == (0.0, 0.0)  # lower is better


def test_ratios_are_relative_to_the_fastest_and_a_miss_stays_infinite():
    assert ratios({"a": 10.0, "b": 25.0, "c": INF}) == {"a": 1.0, "b": 2.5, "c": INF}
    assert ratios({"a": INF, "b": INF}) == {"a": INF, "b": INF}


def test_score_is_the_normalized_area_under_the_profile_up_to_r_max():
    assert score([1.0, 1.0]) == 1.0  # fastest everywhere
    assert score([INF, 4.0, 5.0]) == 0.0  # never within 4x of the fastest
    assert score([2.5, INF]) == pytest.approx(0.25)  # (4 - 2.5) / 3 on one of two workloads
    taus = [1 + 3 * i / 30000 for i in range(30001)]  # the exact formula is the profile's area
    area = sum(profile([1.0, 2.5, INF], taus)[:-1]) * 3 / 30000 / 3
    assert score([1.0, 2.5, INF]) == pytest.approx(area, abs=1e-3)


def test_external_tuning_draws_reproducible_configurations_that_differ_between_studies():
    task = get_task("logistic")
    spec = parse_spec("sgd")
    first, again = sample_configurations(spec, task, 3, 0), sample_configurations(spec, task, 3, 0)
    other = sample_configurations(spec, task, 3, 1)
    assert [c.text for c in first] == [c.text for c in again]
    assert [c.text for c in first] != [c.text for c in other]
    assert all("batch_size" not in c.hyperparameters and "schedule" in c.hyperparameters for c in first)


@pytest.mark.parametrize("argv, expected", [
    (["--task", "cifar"], "unknown task 'cifar'"),
    (["--task", "logistic", "--target", "logistic=1.5"], "must be in (0, 1]"),
    (["--task", "logistic", "--target", "digits=0.9"], "not a workload"),
    (["--task", "logistic", "--epochs", "0"], "zero budget"),
    (["--task", "logistic", "--studies", "0"], "--studies 0"),
    (["--task", "logistic", "--opt", "sgd:schedule=exp"], "valid: constant, step, linear, cosine"),
])
def test_bad_input_exits_2_with_one_line(argv, expected, capsys, tmp_path):
    code = main(["benchmark", "--out", str(tmp_path / "b"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err and err.startswith("sgdlab benchmark: error:")
    assert not (tmp_path / "b").exists()


def test_a_tiny_benchmark_writes_scores_profiles_and_a_report_and_resumes_without_rerunning(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "--task", "logistic", "--epochs", "1", "--studies", "2", "--trials", "1", "--opt", "sgd",
            "--opt", "adam", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "benchmark.json").read_text())
    for name in ("report.md", "report.html", "plots/performance_profiles.png"):
        assert (out / name).is_file(), name
    scores = summary["scores"]["external"]["steps"]
    assert set(scores) == {"sgd", "adam"} and all(0.0 <= s <= 1.0 for s in scores.values())
    per_study = summary["workloads"][0]["per_study"]["self-tuning"]["sgd"]["steps"]
    assert len(per_study) == 2
    log = out / "logistic" / "external" / "runs.jsonl"
    lines = log.read_text()
    assert main(argv) == 0  # resumed: every run is finished, nothing is trained or logged again
    assert log.read_text() == lines
    assert json.loads((out / "benchmark.json").read_text())["scores"] == summary["scores"]
    assert "sgdlab benchmark: scores" in capsys.readouterr().out


def test_a_run_with_a_target_stops_at_the_first_evaluation_reaching_it():
    from sgdlab.lab.runner import train_run

    task = get_task("logistic")
    result = train_run(task, parse_spec("sgd"), epochs=6, stop_at=("val_accuracy", 0.7, True))
    values = [r["val_accuracy"] for r in result.records]
    assert result.status == "finished" and values[-1] >= 0.7 and all(v < 0.7 for v in values[:-1])
    assert result.final["epoch"] < 6
