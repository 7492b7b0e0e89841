"""A search's trials trained as vectorized populations (:mod:`sgdlab.lab.population`).

Instead of one trial at a time (``study.optimize``), a worker asks the study for up to ``size``
trials at once (Optuna's ask-and-tell; TPE's ``constant_liar`` keeps them apart), trains those of
one batch size as one population and tells the study each trial's value. Every trial is what it
would be alone: the same validation records, the same pruning (a trial the pruner stops leaves the
population; the others go on), the same score for a diverged run, the same stale-trial recovery
(each trial carries its worker's owner mark).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable

from sgdlab.lab.population import STOPPED, Member, model_problem, train_population, why_not
from sgdlab.lab.runner import DIVERGED
from sgdlab.lab.tasks import Task

# Trials asked at once. Larger batches step faster per trial on an accelerator, but give the
# sampler fewer finished trials to learn from per batch; 8 is where CPU throughput levels off.
SIZE = 8


def vectorizable(setup: Any, val_task: Task) -> bool:
    """Whether the search's trials can train as populations (its optimizer and model can)."""
    return model_problem(val_task) is None and why_not(setup.spec, val_task) is None


def optimize(study: Any, setup: Any, space: Any, val_task: Task, *, remaining: int | None,
             timeout: float | None, callbacks: list[Callable[..., None]] = (), size: int = SIZE) -> None:
    """Run trials of ``study`` in populations of up to ``size`` until ``remaining`` trials (None:
    no limit) have been asked, the study's budget is spent, or ``timeout`` seconds have passed."""
    import optuna

    from sgdlab.lab.tune.search import _OWNER, _owner, count_trials

    key, epochs = setup.record_key, setup.trial_epochs
    started = time.monotonic()
    asked = 0
    while remaining is None or asked < remaining:
        if timeout is not None and time.monotonic() - started >= timeout:
            return
        room = size if remaining is None else min(size, remaining - asked)
        if setup.n_trials is not None and setup.local_workers > 1:  # every local worker its share
            counts = count_trials(study)
            left = setup.n_trials - counts["done"] - counts["running"]
            room = min(room, max(1, -(-left // setup.local_workers)))
        trials, configurations = [], []
        for _ in range(room):
            # Counting and asking under one lock: the local workers of a search, asking several
            # trials each in a row, would otherwise see the same count and overshoot the budget.
            with _lock(setup.out / ".ask.lock"):
                if setup.n_trials is not None:  # the study's budget, other workers' trials included
                    counts = count_trials(study)
                    if counts["done"] + counts["running"] >= setup.n_trials:
                        break
                trial = study.ask()
                trial.set_user_attr(_OWNER, _owner())
            spec, batch_size = space.configuration(space.suggest(trial), val_task)
            trial.set_user_attr("opt", spec.text)
            trial.set_user_attr("batch_size", batch_size or val_task.batch_size)
            trials.append(trial)
            configurations.append((spec, batch_size))
        if not trials:
            return
        asked += len(trials)
        by_batch: dict[Any, list[int]] = {}
        for index, (spec, batch_size) in enumerate(configurations):
            by_batch.setdefault(batch_size, []).append(index)
        for batch_size, indices in by_batch.items():
            _train(study, setup, val_task, [trials[i] for i in indices], [configurations[i][0] for i in indices],
                   batch_size, key, epochs, optuna)
        for callback in callbacks:
            callback(study, None)


@contextlib.contextmanager
def _lock(path: Any):
    """An exclusive lock on ``path`` between the processes of this machine (a no-op where
    ``fcntl`` is missing: Windows, whose workers then count as before)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train(study, setup, val_task, trials, specs, batch_size, key, epochs, optuna) -> None:
    """Train ``trials`` (one batch size) as one population and tell the study their values."""
    started = time.perf_counter()
    # Members are told apart by their spec's label: two trials may propose the same values.
    members = [Member(dataclasses.replace(spec, label=f"trial{trial.number}"), setup.seed)
               for trial, spec in zip(trials, specs)]
    by_label = {member.spec.label: trial for member, trial in zip(members, trials)}

    def on_eval(record: dict[str, Any]) -> None:
        trial = by_label[record["optimizer"]]
        epoch, value = record["epoch"], record.get(key)
        # Whole epochs only (a diverged run's last record is a fractional epoch), finite values only.
        if not isinstance(epoch, int) or epoch < 1 or value is None:
            return
        trial.report(float(value), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"{setup.metric} {value:.4g} at epoch {epoch} is below the median")

    cpu = time.process_time()
    try:
        results = train_population(val_task, members, epochs=epochs, batch_size=batch_size, on_eval=on_eval,
                                   stop_on=(optuna.TrialPruned,))
    except BaseException:  # as study.optimize does with a trial that raised
        for trial in trials:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    seconds = round(time.perf_counter() - started, 3)
    cpu_share = round((time.process_time() - cpu) / len(trials), 3)  # the population's CPU, shared
    for trial, result in zip(trials, results):
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("cpu_seconds", cpu_share)
        if result.status == STOPPED:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_user_attr("status", result.status)
        final = result.final.get(key)
        if result.status == DIVERGED or final is None:
            # As one trial alone: no better than not training at all, the untrained model's metric.
            untrained = result.records[0].get(key) if result.records else None
            if untrained is None:
                untrained = 0.0 if setup.higher_is_better else float("inf")
            study.tell(trial, float(untrained))
        else:
            study.tell(trial, float(final))
