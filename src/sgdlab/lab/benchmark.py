"""``sgdlab benchmark``: AlgoPerf's protocol (Dahl et al. 2023, "Benchmarking Neural Network Training
Algorithms") on laptop-sized workloads.

A *workload* is a task with a validation target (a value of the task's metric on its validation
split) and a budget (epochs). An optimizer's *time to target* on a run is the optimizer steps (and
the training seconds) at the first evaluation whose validation metric reaches the target; infinite
when the run never does. Evaluations happen after every epoch, so times are epoch-resolved; as in
AlgoPerf, a run stops once it reaches the target (its schedule still spans the whole budget).

Two rulesets, as in AlgoPerf:

* **self-tuning**: no tuning; the spec as given (with the task's learning-rate hint when it gives
  none). Each of ``studies`` studies is one run with its own seed; the workload's time is the median
  over studies.
* **external tuning**: each study draws ``trials`` configurations from the optimizer's search space
  (:func:`sgdlab.lab.tune.space.default_space` without the batch size) by quasirandom (scrambled
  Sobol) search, seeded by the study's number, as AlgoPerf's harness does; a study's time is its
  fastest trial, the workload's time the median over studies. Trials train from seed 0 (common
  random numbers), so studies differ by the configurations they drew.

Scores: on each workload the performance ratio of an optimizer is ``r = t / t_best`` (``t_best``
the fastest optimizer's time there); the performance profile ``rho(tau)`` is the fraction of
workloads with ``r <= tau``, and the score is its normalized integral
``1 / (r_max - 1) * integral_1^r_max rho(tau) dtau`` with ``r_max = 4``: 1 for an optimizer that is
fastest everywhere, 0 for one that never reaches a target within 4x of the fastest. Steps are the
default measure (deterministic, machine-independent); seconds are reported beside them.

All runs go through :func:`sgdlab.lab.runner.run_race`, one race directory per workload and
ruleset under ``out``, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from sgdlab.lab.specs import OptimizerSpec, parse_specs
from sgdlab.lab.tasks import Task, get_task

R_MAX = 4.0
MEASURES = ("steps", "seconds")
RULESETS = ("self-tuning", "external")
DEFAULT_OPTIMIZERS = ("momentum", "adamw", "adamw:schedule=cosine,warmup=0.05,label=adamw-cosine",
                      "schedulefree_adamw")
QUICK_OPTIMIZERS = ("momentum", "adamw", "schedulefree_adamw")


class BenchmarkError(ValueError):
    """A workload a task cannot have (unknown task, unreachable target, empty budget)."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """A task (by registered name) with a validation target of its metric and an epoch budget."""

    task: str
    target: float
    epochs: int

    def check(self, task: Task) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise BenchmarkError(f"{self.task}: budget of {self.epochs!r} epochs (expected a positive integer)")
        if not math.isfinite(self.target):
            raise BenchmarkError(f"{self.task}: target {self.target!r} is not a finite number")
        if task.metric == "accuracy" and not 0 < self.target <= 1:
            raise BenchmarkError(f"{self.task}: a validation accuracy target must be in (0, 1], got {self.target:g}")
        if task.metric != "accuracy" and not task.higher_is_better and self.target < 0:
            raise BenchmarkError(f"{self.task}: a {task.metric} target below 0 cannot be reached")


# The default suite: the built-in tasks with their own targets (Task.val_target) and budgets
# (Task.epochs). The quick suite shortens the budgets of the two fastest tasks (targets read off
# one-seed runs of the defaults and a few random configurations: docs/lab/benchmark.md).
DEFAULT_SUITE = ("digits", "logistic", "mnist1d", "modular")
QUICK_SUITE = {"digits": (0.94, 6), "logistic": (0.815, 4)}


def workload(name: str, target: float | None = None, epochs: int | None = None, quick: bool = False) -> Workload:
    """The workload for task ``name``: its ``Task.val_target`` and ``Task.epochs`` (the quick
    suite's shorter ones with ``quick``) unless given."""
    task = get_task(name)
    default_target, default_epochs = (QUICK_SUITE if quick else {}).get(name, (task.val_target, task.epochs))
    target = default_target if target is None else target
    if target is None:
        raise BenchmarkError(f"task {name!r} has no validation target; give one with --target {name}=VALUE")
    chosen = Workload(name, float(target), default_epochs if epochs is None else epochs)
    chosen.check(task)
    return chosen


# --- time to target ------------------------------------------------------------------------------


def time_to_target(records: Sequence[dict[str, Any]], key: str, target: float, higher: bool) -> tuple[float, float]:
    """(steps, seconds) at the first record whose ``key`` reaches ``target``; (inf, inf) if none does."""
    for record in records:
        value = record.get(key)
        if value is not None and (value >= target if higher else value <= target):
            return float(record["step"]), float(record["time"])
    return math.inf, math.inf


def median(values: Sequence[float]) -> float:
    """The median, with infinities (misses) counted as the largest values."""
    return float(statistics.median(values)) if values else math.inf


def ratios(times: dict[str, float]) -> dict[str, float]:
    """Performance ratios ``t / t_best`` on one workload (inf for misses, and for all when all miss)."""
    best = min(times.values(), default=math.inf)
    return {k: (t / best if math.isfinite(t) and math.isfinite(best) and best > 0 else
                (1.0 if t == best == 0 else math.inf)) for k, t in times.items()}


def profile(ratio_lists: Sequence[float], taus: Sequence[float]) -> list[float]:
    """rho(tau): the fraction of workloads whose ratio is at most tau."""
    n = len(ratio_lists)
    return [sum(r <= tau for r in ratio_lists) / n if n else 0.0 for tau in taus]


def score(ratio_list: Sequence[float], r_max: float = R_MAX) -> float:
    """The normalized integral of the profile over [1, r_max] (exact: the profile is a step function)."""
    if not ratio_list:
        return 0.0
    return sum(max(0.0, r_max - max(r, 1.0)) for r in ratio_list) / ((r_max - 1.0) * len(ratio_list))


# --- the benchmark -------------------------------------------------------------------------------


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label).strip("_")[:40] or "opt"


def sample_configurations(spec: OptimizerSpec, task: Task, trials: int, study: int) -> list[OptimizerSpec]:
    """``trials`` configurations of ``spec`` drawn by quasirandom search from its space (batch size
    fixed), seeded by ``study``; labelled ``<label> s<study> t<trial>``."""
    import optuna

    from sgdlab.lab.tune.report import rounded_spec
    from sgdlab.lab.tune.space import SearchSpace, default_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dims = {name: dim for name, dim in default_space(spec, task).items() if name != "batch_size"}
    space = SearchSpace(spec, dims, None)
    if not space.searched():
        return [OptimizerSpec(spec.name, spec.hyperparameters, f"{spec.label} s{study} t0")]
    import warnings

    with warnings.catch_warnings():  # QMCSampler is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(seed=study, scramble=True, warn_independent_sampling=False,
                                             warn_asynchronous_seeding=False)
    search = optuna.create_study(sampler=sampler)
    configs = []
    for index in range(trials):
        trial = search.ask()
        values = space.suggest(trial)
        search.tell(trial, 0.0)
        tuned, _ = space.configuration(values, task)
        # Three significant digits: a configuration worth pasting, and the same for every machine.
        configs.append(rounded_spec(tuned, label=f"{spec.label} s{study} t{index}"))
    return configs


@dataclasses.dataclass
class WorkloadResult:
    workload: Workload
    description: str
    metric: str
    # times[ruleset][optimizer label] = {"steps": [per study], "seconds": [...], "trials": [...]}
    times: dict[str, dict[str, dict[str, list[Any]]]]
    best_val: dict[str, dict[str, float | None]]
    test_at_best: dict[str, dict[str, float | None]]
    runs: int
    failed: int

    def median_time(self, ruleset: str, label: str, measure: str) -> float:
        return median(self.times[ruleset][label][measure])


@dataclasses.dataclass
class BenchmarkResult:
    workloads: list[WorkloadResult]
    optimizers: list[str]
    specs: list[OptimizerSpec]
    studies: int
    trials: int
    elapsed: float
    references: dict[str, dict[str, float]]

    def ratios(self, ruleset: str, measure: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {label: [] for label in self.optimizers}
        for w in self.workloads:
            r = ratios({label: w.median_time(ruleset, label, measure) for label in self.optimizers})
            for label in self.optimizers:
                out[label].append(r[label])
        return out

    def scores(self, ruleset: str, measure: str = "steps") -> dict[str, float]:
        return {label: score(r) for label, r in self.ratios(ruleset, measure).items()}


def run_benchmark(
    workloads: Sequence[Workload], specs: Sequence[OptimizerSpec], *, studies: int = 3, trials: int = 5,
    out: str | Path, workers: int | None = None, progress: bool = True, console: Any = None,
    on_workload: Callable[[str], Any] | None = None,
) -> BenchmarkResult:
    """Run both rulesets on every workload; resumable through the races' checkpoints under ``out``."""
    import time

    from sgdlab.lab.runner import run_race

    if studies < 1 or trials < 1:
        raise BenchmarkError(f"studies and trials must be positive, got {studies} and {trials}")
    if not workloads or not specs:
        raise BenchmarkError("a benchmark needs at least one workload and one optimizer")
    out = Path(out)
    started = time.perf_counter()
    results = []
    references = {}
    for w in workloads:
        task = get_task(w.task).with_validation()
        w.check(task)
        if task.references:
            references[w.task] = dict(task.references)
        if on_workload is not None:
            on_workload(f"{w.task}: target validation {task.metric} {w.target:g} within {w.epochs} epochs")
        key, higher = f"val_{task.metric}", task.higher_is_better
        stop_at = (key, w.target, higher)  # as in AlgoPerf, a run ends when it reaches the target
        self_race = run_race(task, specs, seeds=list(range(studies)), epochs=w.epochs, workers=workers,
                             out=out / _slug(w.task) / "self-tuning", progress=progress, console=console,
                             stop_at=stop_at)
        drawn = {spec.label: [sample_configurations(spec, task, trials, s) for s in range(studies)] for spec in specs}
        trial_specs = [c for spec in specs for study in drawn[spec.label] for c in study]
        external = run_race(task, trial_specs, seeds=[0], epochs=w.epochs, workers=workers,
                            out=out / _slug(w.task) / "external", progress=progress, console=console,
                            stop_at=stop_at)
        by_label = {run.optimizer: run for run in self_race.runs + external.runs}
        times: dict[str, dict[str, dict[str, list[Any]]]] = {r: {} for r in RULESETS}
        best_val: dict[str, dict[str, float | None]] = {r: {} for r in RULESETS}
        test_at_best: dict[str, dict[str, float | None]] = {r: {} for r in RULESETS}
        pick = max if higher else min
        for spec in specs:
            runs = [r for r in self_race.runs if r.optimizer == spec.label]
            hits = [time_to_target(r.records, key, w.target, higher) for r in runs]
            times["self-tuning"][spec.label] = {"steps": [h[0] for h in hits], "seconds": [h[1] for h in hits],
                                                "trials": [spec.text] * len(runs)}
            _finals(runs, key, pick, best_val["self-tuning"], test_at_best["self-tuning"], spec.label, task.metric)
            per_study = {"steps": [], "seconds": [], "trials": []}
            all_trials = []
            for study in drawn[spec.label]:
                study_runs = [by_label[c.label] for c in study]
                all_trials += study_runs
                hits = [time_to_target(r.records, key, w.target, higher) for r in study_runs]
                fastest = min(range(len(hits)), key=lambda i: hits[i])
                per_study["steps"].append(hits[fastest][0])
                per_study["seconds"].append(hits[fastest][1])
                per_study["trials"].append(study[fastest].text if math.isfinite(hits[fastest][0]) else None)
            times["external"][spec.label] = per_study
            _finals(all_trials, key, pick, best_val["external"], test_at_best["external"], spec.label, task.metric)
        all_runs = self_race.runs + external.runs
        results.append(WorkloadResult(w, task.description, task.metric, times, best_val, test_at_best,
                                      len(all_runs), sum(r.status == "failed" for r in all_runs)))
    return BenchmarkResult(results, [s.label for s in specs], list(specs), studies, trials,
                           time.perf_counter() - started, references)


def _finals(runs, key, pick, best_val, test_at_best, label, metric) -> None:
    """The best final validation value among ``runs`` and the test value of that run."""
    finished = [r for r in runs if r.records and r.final.get(key) is not None]
    if not finished:
        best_val[label] = test_at_best[label] = None
        return
    best = pick(finished, key=lambda r: r.final[key])
    best_val[label] = best.final[key]
    test_at_best[label] = best.final.get(f"test_{metric}")


def load_specs(texts: Sequence[str] | None, quick: bool) -> list[OptimizerSpec]:
    return parse_specs(list(texts or (QUICK_OPTIMIZERS if quick else DEFAULT_OPTIMIZERS)))
