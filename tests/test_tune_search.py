"""The Optuna search: objective, storages, resuming a killed search, shared studies, the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sgdlab.cli import main
from sgdlab.lab.specs import parse_spec
from sgdlab.lab.tasks import get_task
from sgdlab.lab.tune.search import (
    SearchSetup, StorageError, count_trials, make_objective, open_storage, search, validation_task,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def digits():
    return get_task("digits")


def _setup(task, out, opt="sgd", **options):
    options.setdefault("n_trials", 3)
    options.setdefault("epochs", 1)
    return SearchSetup(task=task, spec=parse_spec(opt, task=task), space_text=options.pop("space", None),
                       study_name=options.pop("study_name", "test"), out=out, **options)


def _load(setup):
    return optuna.load_study(study_name=setup.study_name, storage=open_storage(setup.storage, setup.out))


def test_the_search_uses_the_tasks_own_validation_split(digits):
    assert validation_task(digits) is digits and digits.has_validation


def test_a_new_validation_fraction_resplits_training_and_validation_data_never_the_test_set(digits):
    split = validation_task(digits, 0.25, seed=0)
    assert len(split.x_train) + len(split.x_val) == digits.n_train + digits.n_val
    assert len(split.x_val) == round(0.25 * (digits.n_train + digits.n_val))
    assert torch.equal(split.x_test, digits.x_test)
    seen = {tuple(r) for r in torch.cat([digits.x_train, digits.x_val]).tolist()}
    assert all(tuple(r) in seen for r in split.x_val[:50].tolist())


def test_objective_reports_every_epoch_and_scores_a_diverged_run_as_untrained(digits, tmp_path):
    setup = _setup(digits, tmp_path, epochs=1, space="lr=1e3:1e4,batch_size=64")
    space = setup.space()
    objective = make_objective(setup, space, validation_task(digits, 0.2, 0))
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.user_attrs["status"] == "diverged"
    assert trial.value < 0.3  # the untrained model's accuracy, about chance on 10 classes

    good = _setup(digits, tmp_path, epochs=2, space="lr=0.05:0.1,batch_size=32")
    study = optuna.create_study(direction="maximize")
    study.optimize(make_objective(good, good.space(), validation_task(digits, 0.2, 0)), n_trials=1)
    assert sorted(study.trials[0].intermediate_values) == [1, 2]
    assert study.trials[0].value == study.trials[0].intermediate_values[2] > 0.7


def test_tiny_search_writes_its_report_with_the_measured_gain(tmp_path):
    out = tmp_path / "run"
    code = main(["tune", "search", "--task", "digits", "--opt", "sgd", "--trials", "3", "--epochs", "1",
                 "--confirm-seeds", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    for name in ("report.md", "report.html", "tune.json", "search.json", "study.journal", "plots/history.png",
                 "plots/confirm_curves.png", "plots/confirm_final.png"):
        assert (out / name).exists(), name
    summary = json.loads((out / "tune.json").read_text())
    assert summary["trials"]["done"] == 3
    default, tuned = summary["default"]["test"], summary["tuned"]["test"]
    assert default["runs"] == tuned["runs"] == 2
    expected = tuned["final_metric"]["mean"] - default["final_metric"]["mean"]
    assert summary["gain"]["mean"] == pytest.approx(expected)
    assert summary["gain"]["ci95"] is not None
    parse_spec(summary["tuned"]["opt"])  # the printed --opt string is a valid spec
    report = (out / "report.md").read_text()
    assert "Tuning gain" in report or "Tuning loss" in report
    assert f"--opt {summary['tuned']['opt']}" in report and "optimizer = sgdlab.SGD(model.parameters()" in report


def test_a_killed_search_resumes_the_same_study_and_redoes_the_interrupted_trial(digits, tmp_path):
    out = tmp_path / "killed"
    args = ["tune", "search", "--task", "digits", "--opt", "sgd", "--trials", "1", "--epochs", "8",
            "--space", "batch_size=8", "--out", str(out), "--no-progress", "--no-report"]
    process = subprocess.Popen([sys.executable, "-c", f"from sgdlab.cli import main; main({args!r})"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    setup = _setup(digits, out, n_trials=1, epochs=8, space="batch_size=8", study_name="digits-sgd")
    running = None
    try:
        deadline = time.monotonic() + 120
        while running is None and time.monotonic() < deadline:
            time.sleep(0.3)
            if process.poll() is not None:
                pytest.fail("the search finished before it could be killed")
            try:
                trials = _load(setup).get_trials(deepcopy=False)
            except (KeyError, ValueError):
                continue
            running = next((t for t in trials if t.state == TrialState.RUNNING and t.params
                            and "sgdlab_worker" in t.user_attrs), None)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert running is not None, "no trial started within the deadline"
    killed = _load(setup).trials[running.number]  # as the kill left it
    assert killed.state == TrialState.RUNNING

    result = search(setup, progress=False)  # the same command again, in-process

    assert result.recovered == [running.number]
    trials = result.study.get_trials(deepcopy=False)
    assert trials[running.number].state == TrialState.FAIL
    retried = [t for t in trials if t.user_attrs.get("sgdlab_retry_of") == running.number]
    # The retry takes every hyperparameter the killed trial had stored (the kill may land between
    # two suggestions: the rest are then drawn afresh).
    assert len(retried) == 1 and killed.params and killed.params.items() <= retried[0].params.items()
    assert retried[0].state == TrialState.COMPLETE
    assert result.counts["done"] == 1  # the budget counts the study's trials across both runs


def test_two_local_workers_share_one_study(digits, tmp_path):
    setup = _setup(digits, tmp_path, n_trials=4, epochs=3, space="batch_size=8")  # trials outlast start-up skew
    result = search(setup, workers=2, progress=False)
    study = _load(setup)
    joined = {int(k.rsplit(":", 1)[1]) for k in study.user_attrs if k.startswith("worker:")}
    assert len(joined) == 2 and os.getpid() not in joined  # two processes opened the one study
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert {t.user_attrs["sgdlab_worker"]["pid"] for t in trials} == joined  # and both ran trials in it
    assert result.counts["done"] == 4


def test_rerunning_a_finished_study_adds_only_the_missing_trials(digits, tmp_path):
    setup = _setup(digits, tmp_path, n_trials=2)
    search(setup, progress=False)
    setup.n_trials = 3
    result = search(setup, progress=False)
    assert len(result.study.trials) == 3 and count_trials(result.study)["done"] == 3


def test_resuming_with_different_arguments_is_refused(digits, tmp_path):
    search(_setup(digits, tmp_path, n_trials=1), progress=False)
    with pytest.raises(StorageError, match="belongs to another search .*epochs: study has 1, this command 2"):
        search(_setup(digits, tmp_path, n_trials=1, epochs=2), progress=False)


def test_sqlite_storage_file_and_bad_storages(digits, tmp_path):
    setup = _setup(digits, tmp_path, n_trials=1, storage=str(tmp_path / "tune.db"))
    search(setup, progress=False)
    assert (tmp_path / "tune.db").exists() and len(_load(setup).trials) == 1
    with pytest.raises(StorageError, match="unknown scheme 'ftp'"):
        open_storage("ftp://example/db", tmp_path)
    with pytest.raises(StorageError, match="is a directory"):
        open_storage(str(tmp_path), tmp_path)


def test_cli_reports_bad_arguments_without_a_traceback(tmp_path, capsys):
    assert main(["tune", "search", "--task", "digits", "--space", "lr=1:0.1", "--out", str(tmp_path)]) == 2
    assert "lr: the lower bound must be below the upper bound" in capsys.readouterr().err
    assert main(["tune", "search", "--task", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["tune", "search", "--task", "digits", "--metric", "f1", "--out", str(tmp_path)]) == 2
    assert "metric 'f1' is not measured" in capsys.readouterr().err


def test_lr_command_writes_plot_and_suggestion(tmp_path, capsys):
    code = main(["tune", "lr", "--task", "digits", "--opt", "sgd:momentum=0.9", "--steps", "60", "--end-lr", "5",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    info = json.loads((tmp_path / "lr_range.json").read_text())
    assert (tmp_path / "lr_range.png").exists() and info["opt"] == "sgd:momentum=0.9"
    assert info["suggested_lr"] is not None and "--opt sgd:lr=" in capsys.readouterr().out


def test_the_search_starts_from_the_default_configuration_when_it_is_in_the_space(digits, tmp_path):
    result = search(_setup(digits, tmp_path / "adamw", opt="adamw", n_trials=1), progress=False)
    first = result.study.trials[0]
    assert first.user_attrs.get("sgdlab_default_configuration") is True
    spec, batch_size = result.space.configuration(result.space.values_from_params(first.params), digits)
    default = parse_spec("adamw", task=digits).resolved(digits)
    assert spec.hyperparameters["lr"] == pytest.approx(default["lr"])
    assert spec.hyperparameters["betas"] == pytest.approx((0.9, 0.999))
    assert spec.hyperparameters["weight_decay"] == pytest.approx(default["weight_decay"])
    assert batch_size == digits.batch_size
    # Plain SGD has momentum 0, outside the momentum range: not a trial, and the study says so.
    sgd = search(_setup(digits, tmp_path / "sgd", n_trials=1), progress=False)
    assert sgd.study.user_attrs["default_enqueued"] is False
    assert not sgd.study.trials[0].user_attrs.get("sgdlab_default_configuration")


# --- concurrent searches and killed parents ---------------------------------------------------------


def _register(study, host, pid, joined, start=None):
    study.set_user_attr(f"worker:{host}:{pid}", {"joined": joined, "worker": 0, "start": start})


def test_a_worker_alone_on_the_study_seeds_its_sampler_from_the_search_seed(digits, tmp_path):
    from sgdlab.lab.tune.search import _owner, _process_start, create_or_load_study, sampler_seed

    setup = _setup(digits, tmp_path, seed=7)
    study = create_or_load_study(setup, open_storage(None, tmp_path))
    me = _owner()
    _register(study, me["host"], me["pid"], time.time(), me["start"])
    assert sampler_seed(setup, study, 0, 3, me) == 7 + 3
    # A worker of an earlier, finished search on this machine (its process is gone) changes nothing.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _register(study, me["host"], int(finished.stdout), time.time() - 60, "1")
    assert sampler_seed(setup, study, 0, 3, me) == 7 + 3
    # A live worker that joined after this one changes nothing either: it is the one that moves.
    parent = os.getppid()
    _register(study, me["host"], parent, time.time() + 60, _process_start(parent))
    assert sampler_seed(setup, study, 0, 3, me) == 7 + 3


def test_a_worker_joining_a_live_search_draws_its_own_sampler_seed(digits, tmp_path):
    from sgdlab.lab.tune.search import _owner, _process_start, create_or_load_study, sampler_seed

    setup = _setup(digits, tmp_path, seed=7)
    study = create_or_load_study(setup, open_storage(None, tmp_path))
    me = _owner()
    parent = os.getppid()  # stands for the other search's worker: alive, on this machine, earlier
    _register(study, me["host"], parent, time.time() - 5, _process_start(parent))
    _register(study, me["host"], me["pid"], time.time(), me["start"])
    seeds = {sampler_seed(setup, study, 0, 3, me) for _ in range(3)}
    assert 7 + 3 not in seeds and len(seeds) == 3
    assert all(0 <= seed < 2**32 for seed in seeds)


@pytest.mark.slow
def test_two_searches_on_one_storage_do_not_try_the_same_configurations(tmp_path):
    storage = tmp_path / "shared.journal"
    args = ["tune", "search", "--task", "logistic", "--opt", "sgd", "--trials", "12", "--epochs", "1",
            "--pruner", "none", "--storage", str(storage), "--study-name", "shared", "--no-progress", "--no-report"]
    processes = [subprocess.Popen([sys.executable, "-c", f"from sgdlab.cli import main; main({args + ['--out', str(tmp_path / name)]!r})"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for name in ("a", "b")]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=open_storage(str(storage), tmp_path))
    drawn = [tuple(sorted(t.params.items())) for t in study.trials
             if t.state == TrialState.COMPLETE and not t.user_attrs.get("sgdlab_default_configuration")]
    assert len(drawn) >= 8
    assert len(set(drawn)) == len(drawn)  # no configuration tried twice


def _children(pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def _command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
def test_workers_of_a_search_killed_with_sigkill_stop_instead_of_spending_the_budget(tmp_path):
    args = ["tune", "search", "--task", "logistic", "--opt", "sgd", "--trials", "10000", "--epochs", "5",
            "--workers", "2", "--out", str(tmp_path), "--no-progress", "--no-report"]
    process = subprocess.Popen([sys.executable, "-c", f"from sgdlab.cli import main; main({args!r})"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.monotonic() + 300
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
            workers = [pid for pid in _children(process.pid) if b"spawn_main" in _command_line(pid)]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(workers) == 2, "the search did not start its two workers"
    deadline = time.monotonic() + 60
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in workers)
