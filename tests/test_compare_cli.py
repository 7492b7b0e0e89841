"""`sgdlab compare` from the command line: errors exit 2 with one line, a tiny race writes its report."""

import json

import pytest

from sgdlab.cli import main


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--task", "cifar"], "valid tasks: digits"),
        (["--opt", "sgdd"], "did you mean 'sgd'"),
        (["--opt", "sgd:lrr=0.1"], "valid: lr, momentum"),
        (["--opt", "sgd:lr=-1"], "lr=-1"),
        (["--opt", "torch.Nope"], "torch.RMSprop"),
    ],
)
def test_bad_names_and_values_exit_2_with_one_line(argv, expected, capsys, tmp_path):
    code = main(["compare", "--task", "logistic", "--out", str(tmp_path / "race"), *argv]) if "--task" not in argv \
        else main(["compare", "--out", str(tmp_path / "race"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err and err.startswith("sgdlab compare: error:")
    assert not (tmp_path / "race").exists()  # rejected before anything ran


def test_non_positive_budget_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--epochs", "0"])
    assert exit_info.value.code == 2


def test_list_names_tasks_and_optimizers(capsys):
    assert main(["compare", "--list"]) == 0
    out = capsys.readouterr().out
    assert "mnist1d" in out and "adamw" in out and "torch.RMSprop" in out


def test_a_small_race_prints_tables_and_writes_the_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no line wrapping inside the phrases checked below
    out = tmp_path / "race"
    code = main(["compare", "--task", "logistic", "--opt", "gd", "--opt", "sgd", "--seeds", "2", "--epochs", "2",
                 "--workers", "1", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Verdict" in printed and "Full-batch GD vs mini-batch SGD" in printed
    for name in ("report.md", "report.html", "summary.json", "runs.jsonl", "race.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert [run["status"] for run in summary["runs"]] == ["finished"] * 4


def test_tune_gives_every_optimizer_the_same_trials_and_reports_tuned_beside_untuned(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "race"
    argv = ["compare", "--task", "logistic", "--opt", "sgd", "--opt", "adam", "--tune", "2", "--seeds", "2",
            "--epochs", "1", "--workers", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [t["trials"] for t in summary["tuning"]] == [2, 2]
    assert all(t["cpu_seconds"] > 0 for t in summary["tuning"])
    assert list(summary["optimizers"]) == ["sgd", "adam", "sgd tuned", "adam tuned"]
    assert {run["seed"] for run in summary["runs"]} == {0, 1}  # fresh seeds: the trials trained from seed 1000
    report = (out / "report.md").read_text()
    assert "## Tuning (equal budget)" in report and "What does tuning buy" in report
    assert "Tuned: SGD vs Adam" in capsys.readouterr().out
    log = (out / "runs.jsonl").read_text()
    assert main(argv) == 0  # resumed: the studies hold their 2 trials, the race its finished runs
    again = json.loads((out / "summary.json").read_text())
    assert [t["trials"] for t in again["tuning"]] == [2, 2] and (out / "runs.jsonl").read_text() == log
    assert [t["tuned_spec"] for t in again["tuning"]] == [t["tuned_spec"] for t in summary["tuning"]]


def test_a_schedule_with_only_a_time_budget_is_a_usage_error(capsys, tmp_path):
    code = main(["compare", "--task", "logistic", "--opt", "sgd:schedule=cosine", "--time-budget", "1",
                 "--out", str(tmp_path / "race")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs --epochs or --steps" in err and len(err.splitlines()) == 1
