"""A search's trials trained as populations: the values single runs would give, pruning per trial."""

import optuna
import pytest
from optuna.trial import TrialState

from sgdlab.lab.runner import train_run
from sgdlab.lab.specs import parse_spec
from sgdlab.lab.tasks import get_task
from sgdlab.lab.tune import populations
from sgdlab.lab.tune.search import SearchSetup, search, validation_task

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def digits():
    return get_task("digits")


def _setup(task, out, **options):
    return SearchSetup(task=task, spec=parse_spec(options.pop("opt", "sgd"), task=task), study_name="test", out=out,
                       space_text=options.pop("space", "batch_size=32"), **options)


def _spy(monkeypatch):
    sizes = []
    original = populations.train_population

    def spy(task, members, **kwargs):
        sizes.append(len(members))
        return original(task, members, **kwargs)

    monkeypatch.setattr(populations, "train_population", spy)
    return sizes


def test_trials_train_as_one_population_with_the_values_single_runs_give(digits, tmp_path, monkeypatch):
    sizes = _spy(monkeypatch)
    setup = _setup(digits, tmp_path, n_trials=4, epochs=2, pruner="none")
    result = search(setup, progress=False)
    assert sizes == [4]
    trials = result.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    val_task = validation_task(digits, setup.val_fraction, setup.seed)
    for trial in trials:
        spec, batch_size = result.space.configuration(result.space.values_from_params(trial.params), val_task)
        alone = train_run(val_task, spec, seed=setup.seed, epochs=2, batch_size=batch_size)
        assert trial.value == pytest.approx(alone.final[setup.record_key], abs=1e-4)


def test_trials_are_asked_in_populations_of_eight_until_the_budget_is_spent(digits, tmp_path, monkeypatch):
    sizes = _spy(monkeypatch)
    setup = _setup(digits, tmp_path, n_trials=10, epochs=3, pruner="median")
    result = search(setup, progress=False)
    states = [t.state for t in result.study.get_trials(deepcopy=False)]
    assert sizes == [8, 2]
    assert len(states) == 10 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}


def test_no_population_runs_one_trial_at_a_time(digits, tmp_path, monkeypatch):
    sizes = _spy(monkeypatch)
    result = search(_setup(digits, tmp_path, n_trials=2, epochs=1, population=False), progress=False)
    assert sizes == [] and len(result.study.get_trials(deepcopy=False)) == 2
