"""Equal-budget races (``sgdlab compare --tune N``): every optimizer gets the same number of tuning
trials over its own documented search space, then races with its best configuration on fresh seeds.

A comparison of optimizers each at one hand-picked learning rate says as much about the picking as
about the optimizers. Here each optimizer's space is :func:`sgdlab.lab.tune.space.default_space`:
the learning rate and its schedule always, momentum, betas and weight decay where the optimizer has
them (the batch size stays the task's, so the race compares optimizers, not batch sizes). Every
trial trains on the task's training set with one seed (:data:`TUNING_SEED`, common random numbers)
and is judged on the validation split; the race that follows uses the race's own seeds, none of
which the search saw, and reports the test set. The tuning cost (trials, CPU-seconds) is kept
beside the result, because an optimizer that needs a large search is worse than one that does not.

    tuned = tune_each(task, specs, n_trials=10, out="runs/race/tuning")
    race = run_race(task, specs + [t.spec for t in tuned], seeds=3, out="runs/race")
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

from sgdlab.lab.specs import OptimizerSpec
from sgdlab.lab.stats import Finding, OptimizerSummary, _better_metric, verdict
from sgdlab.lab.tasks import Task

TUNING_SEED = 1000  # trials train from this seed; races use 0..N-1, so the race's seeds are fresh
TUNED_SUFFIX = " tuned"


@dataclasses.dataclass
class Tuned:
    """One optimizer's search: its best configuration (labelled ``<label> tuned``) and what it cost."""

    label: str
    spec: OptimizerSpec
    trials: int
    complete: int
    cpu_seconds: float
    seconds: float
    best_value: float | None
    metric: str
    space: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.label, "tuned": self.spec.label, "tuned_spec": self.spec.text,
                "trials": self.trials, "complete_trials": self.complete, "cpu_seconds": round(self.cpu_seconds, 2),
                "seconds": round(self.seconds, 2), "best_validation": self.best_value,
                "validation_metric": self.metric, "space": self.space}


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label).strip("_")[:40] or "opt"


def tune_each(
    task: Task, specs: Sequence[OptimizerSpec], n_trials: int, out: str | Path, *, epochs: int | None = None,
    workers: int = 1, progress: bool = True, console: Any = None,
) -> list[Tuned]:
    """Search ``n_trials`` configurations for each spec (Optuna TPE, no pruning: every trial trains
    the full budget, so equal trials are equal training). Resumable: the studies live in
    ``out/<optimizer>/study.journal`` and a rerun only runs the trials still missing."""
    from sgdlab.lab.tune.report import rounded_spec
    from sgdlab.lab.tune.search import SearchSetup, search

    if n_trials < 1:
        raise ValueError(f"--tune needs at least one trial per optimizer, got {n_trials}")
    task = task.with_validation()
    results = []
    for spec in specs:
        setup = SearchSetup(
            task=task, spec=spec, space_text=None if spec.full_batch else "batch_size=default",
            study_name=f"equal-budget-{spec.text}", out=Path(out) / _slug(spec.label), n_trials=n_trials,
            epochs=epochs, pruner="none", seed=TUNING_SEED,
        )
        if console is not None:
            console.print(f"tuning {spec.label}: {n_trials} trials over " + "; ".join(setup.space().describe()),
                          highlight=False)
        result = search(setup, workers=workers, progress=progress, console=console)
        trials = [t for t in result.study.get_trials(deepcopy=False) if t.state.is_finished()]
        cpu = sum(float(t.user_attrs.get("cpu_seconds", t.user_attrs.get("seconds", 0.0)) or 0.0) for t in trials)
        wall = sum(float(t.user_attrs.get("seconds", 0.0) or 0.0) for t in trials)
        if result.counts["complete"]:
            best, _, trial = result.best()
            tuned = rounded_spec(best, label=spec.label + TUNED_SUFFIX)
            value = trial.value
        else:  # every trial failed: race the default under the tuned label, and say so in the table
            tuned, value = OptimizerSpec(spec.name, spec.hyperparameters, spec.label + TUNED_SUFFIX), None
        results.append(Tuned(spec.label, tuned, result.counts["done"], result.counts["complete"], cpu, wall, value,
                             f"validation {setup.metric}", setup.space().describe()))
    return results


def tuning_rows(tuned: Sequence[Tuned], percent: bool) -> tuple[list[str], list[list[str]]]:
    header = ["optimizer", "trials", "CPU-seconds", "best validation", "tuned configuration"]
    rows = []
    for t in tuned:
        best = "-" if t.best_value is None else (f"{t.best_value * 100:.1f}%" if percent else f"{t.best_value:.4g}")
        rows.append([t.label, str(t.trials), f"{t.cpu_seconds:.1f}", best, t.spec.text])
    return header, rows


def tuning_findings(summaries: dict[str, OptimizerSummary], tuned: Sequence[Tuned], metric: str,
                    higher_is_better: bool, target: float | None) -> list[Finding]:
    """What tuning bought each optimizer (tuned vs untuned on the race's seeds), then the verdict's
    questions asked again of the tuned optimizers only."""
    findings = []
    gains = []
    for t in tuned:
        before, after = summaries.get(t.label), summaries.get(t.spec.label)
        if before is None or after is None or not (before.final_metric.n and after.final_metric.n):
            continue
        gains.append(f"{t.label}: " + _better_metric(after, before, metric, higher_is_better))
    if gains:
        cost = sum(t.cpu_seconds for t in tuned)
        findings.append(Finding(
            f"What does tuning buy over the defaults ({tuned[0].trials} trials each)?",
            f"tuned vs untuned on the same fresh seeds; tuning cost {cost:.1f} CPU-seconds in all",
            "; ".join(gains),
        ))
    tuned_only = {t.spec.label: summaries[t.spec.label] for t in tuned if t.spec.label in summaries}
    for finding in verdict(tuned_only, metric, higher_is_better, target):
        findings.append(Finding("Tuned: " + finding.question, finding.evidence, finding.answer))
    return findings
