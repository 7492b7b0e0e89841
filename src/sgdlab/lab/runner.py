"""Training runs and races.

:func:`train_run` trains one optimizer spec with one seed on a task and evaluates after every
epoch; :func:`run_race` runs optimizers x seeds in parallel worker processes, logs every
evaluation to ``runs.jsonl`` and writes the report directory. Both resume from checkpoints.

One evaluation is a *record*, a flat dict::

    {"run": "sgd-seed0-1a2b3c4d", "task": "digits", "optimizer": "sgd", "spec": "sgd", "seed": 0,
     "epoch": 3, "step": 135, "examples": 4314, "time": 0.41,          # training seconds so far
     "train_loss": 0.21, "val_loss": 0.24, "test_loss": 0.25, "train_accuracy": 0.95,
     "val_accuracy": 0.93, "test_accuracy": 0.93, "diverged": false}

(``val_*`` only for tasks with a validation split; every built-in task has one.)

Epoch 0 is the untrained model. Reusing it from Python, e.g. for a tuner that prunes::

    from sgdlab.lab.runner import train_run
    from sgdlab.lab.specs import parse_spec
    from sgdlab.lab.tasks import get_task

    def report(record):                      # called after each evaluation, in this process
        trial.report(record["test_accuracy"], record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned()       # propagates out of train_run

    result = train_run(get_task("digits"), parse_spec("sgd:lr=0.05"), seed=0, epochs=10, on_eval=report)
    result.status, result.final["test_accuracy"]

Same seed, same spec, same task and budget give the same numbers (the model is initialized and the
data shuffled from the seed; workers run single-threaded). A time budget is the exception: where it
stops depends on the machine.

Damage from a kill or a power cut is repaired on the next run, with a :class:`LabWarning` naming
the file: a checkpoint that cannot be read is renamed ``<name>.damaged-<time>`` and its run starts
over; a last line of ``runs.jsonl`` cut short is skipped (its record is still in the checkpoint and
is logged again) and the next record starts on a new line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from sgdlab.lab.schedules import run_steps
from sgdlab.lab.specs import OptimizerSpec
from sgdlab.lab.tasks import Task

FINISHED, DIVERGED, FAILED = "finished", "diverged", "failed"
_EVAL_CHUNK = 4096


class LabWarning(UserWarning):
    """Something the lab repaired or worked around on its own (a damaged file set aside, a torn log
    line skipped): worth one line to the user, not a failure."""


def _warn(message: str) -> None:
    warnings.warn(message, LabWarning, stacklevel=3)


def one_line_lab_warnings(prefix: str = "sgdlab") -> None:
    """Show :class:`LabWarning` as one line ``PREFIX: warning: MESSAGE`` (other warnings unchanged)."""
    default = getattr(warnings.formatwarning, "default", warnings.formatwarning)

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, LabWarning):
            return f"{prefix}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    format_warning.default = default  # type: ignore[attr-defined]
    format_warning.prefix = prefix  # type: ignore[attr-defined]
    warnings.formatwarning = format_warning


def lab_warning_prefix() -> str:
    """The prefix this process shows lab warnings with (for its worker processes to use too)."""
    return getattr(warnings.formatwarning, "prefix", "sgdlab")


@dataclasses.dataclass(frozen=True)
class Budget:
    """When a run stops: after ``epochs`` epochs, ``steps`` optimizer steps or ``time_budget``
    seconds of training, whichever comes first (unset limits do not apply; all unset means the
    task's default epochs). ``stop_at = (key, value, higher_is_better)`` also ends a run at the
    first evaluation whose ``record[key]`` reaches ``value`` (a benchmark's validation target)."""

    epochs: int | None = None
    steps: int | None = None
    time_budget: float | None = None
    stop_at: tuple[str, float, bool] | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "steps", "time_budget"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}={value!r} (expected a positive number)")

    def resolve(self, task: Task) -> "Budget":
        if self.epochs is None and self.steps is None and self.time_budget is None:
            return Budget(epochs=task.epochs, stop_at=self.stop_at)
        return self

    def reached(self, record: dict[str, Any]) -> bool:
        if self.stop_at is None:
            return False
        key, target, higher = self.stop_at
        value = record.get(key)
        return value is not None and (value >= target if higher else value <= target)

    def key(self) -> tuple[Any, ...]:
        """What identifies the budget in a run's id (``stop_at`` only when set, so ids without it
        stay what they were)."""
        limits = (self.epochs, self.steps, self.time_budget)
        return limits if self.stop_at is None else (*limits, *self.stop_at)

    def fraction(self, epoch: int, step: int, seconds: float) -> float:
        """How much of the budget has been used, in [0, 1]."""
        used = [0.0]
        if self.epochs:
            used.append(epoch / self.epochs)
        if self.steps:
            used.append(step / self.steps)
        if self.time_budget:
            used.append(seconds / self.time_budget)
        return min(1.0, max(used))

    def exhausted(self, epoch: int, step: int, seconds: float) -> bool:
        return (
            (self.epochs is not None and epoch >= self.epochs)
            or (self.steps is not None and step >= self.steps)
            or (self.time_budget is not None and seconds >= self.time_budget)
        )

    def describe(self) -> str:
        parts = []
        if self.epochs:
            parts.append(f"{self.epochs} epochs")
        if self.steps:
            parts.append(f"{self.steps} steps")
        if self.time_budget:
            parts.append(f"{self.time_budget:g} s")
        return " or ".join(parts) or "the task's default"


@dataclasses.dataclass
class RunResult:
    """The outcome of one run: its records (one per evaluation) and how it ended."""

    run_id: str
    optimizer: str
    seed: int
    status: str
    records: list[dict[str, Any]]
    error: str | None = None

    @property
    def final(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_id(task: Task, spec: OptimizerSpec, seed: int, budget: Budget, batch_size: int) -> str:
    """A stable name for a run: what it trains decides it, so a rerun finds its checkpoint."""
    key = json.dumps(
        [task.name, task.fingerprint(), spec.name, sorted((k, repr(v)) for k, v in spec.resolved(task).items()),
         spec.full_batch, seed, budget.key(), batch_size],
    )
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec.label).strip("_")[:40] or "opt"
    return f"{slug}-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@torch.no_grad()
def evaluate(task: Task, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Mean loss and the task's metrics over (x, y), in chunks, with the model in eval mode."""
    was_training = model.training
    model.eval()
    outputs = torch.cat([model(x[i : i + _EVAL_CHUNK]) for i in range(0, len(x), _EVAL_CHUNK)])
    model.train(was_training)
    loss = float(task.loss(outputs, y))
    return loss, {name: float(fn(outputs, y)) for name, fn in task.metrics.items()}


def _switch(optimizer: torch.optim.Optimizer, mode: str) -> None:
    # Schedule-free optimizers evaluate at a different point than they train at and expose
    # optimizer.train() / optimizer.eval() to switch; other optimizers have no such methods.
    method = getattr(optimizer, mode, None)
    if callable(method):
        method()


def train_run(
    task: Task,
    spec: OptimizerSpec,
    seed: int = 0,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    batch_size: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    on_eval: Callable[[dict[str, Any]], Any] | None = None,
    on_progress: Callable[[float], Any] | None = None,
    stop_at: tuple[str, float, bool] | None = None,
) -> RunResult:
    """Train ``spec`` on ``task`` from ``seed``; evaluate (train and test loss and metrics) at the
    start and after every epoch, calling ``on_eval(record)`` each time.

    ``gd``-like specs (full batch) take one step per epoch on the whole training set. A loss that
    becomes NaN or infinite ends the run with status ``"diverged"``. With ``checkpoint`` (a file
    path), the run saves its state after every evaluation and, when the file exists, continues
    from it (a finished run returns at once with its records); killing the process loses at most
    the epoch in progress. Exceptions raised by ``on_eval`` (e.g. a tuner's prune signal) propagate.
    """
    budget = Budget(epochs, steps, time_budget, stop_at).resolve(task)
    batch = task.n_train if spec.full_batch else int(batch_size or task.batch_size)
    if batch < 1:
        raise ValueError(f"batch_size={batch} (expected >= 1)")
    rid = run_id(task, spec, seed, budget, batch)
    path = Path(checkpoint) if checkpoint is not None else None

    schedule = spec.schedule(task)
    total_steps = run_steps(task.n_train, batch, budget.epochs, budget.steps)
    if not schedule.constant and total_steps is None:
        raise ValueError(f"{spec.label!r}: a learning-rate schedule needs an epoch or step budget "
                         "(a time budget alone does not say when the run ends)")

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Generator]:
        torch.manual_seed(seed)
        model = task.model()
        return model, spec.build(model.parameters(), task), torch.Generator().manual_seed(seed)

    model, optimizer, shuffle = fresh()
    scheduler = schedule.build(optimizer, total_steps) if total_steps is not None else None
    epoch, step, examples, seconds = 0, 0, 0, 0.0
    records: list[dict[str, Any]] = []
    status = None

    if path is not None and path.exists():
        try:
            saved = torch.load(path, weights_only=False)
            records = saved["records"]
            status = saved["status"]
            if status is not None:
                return RunResult(rid, spec.label, seed, status, records, saved.get("error"))
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(saved["scheduler"])
            shuffle.set_state(saved["shuffle"])
            epoch, step, examples, seconds = saved["epoch"], saved["step"], saved["examples"], saved["seconds"]
        except Exception as error:  # cut short (power cut, full disk), or not this run's state
            aside = set_aside(path)
            _warn(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); moved to {aside.name}, "
                  "the run starts over")
            model, optimizer, shuffle = fresh()  # a failed load may have changed them halfway
            scheduler = schedule.build(optimizer, total_steps) if total_steps is not None else None
            epoch, step, examples, seconds = 0, 0, 0, 0.0
            records, status = [], None

    def save() -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "records": records, "status": status, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "shuffle": shuffle.get_state(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch, "step": step, "examples": examples, "seconds": seconds,
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename, so a power cut cannot leave it empty
        os.replace(tmp, path)  # atomic: a kill leaves the previous checkpoint or the new one

    def record(diverged: bool, partial_epoch: float | None = None) -> dict[str, Any]:
        _switch(optimizer, "eval")
        train_loss, train_metrics = evaluate(task, model, task.x_train, task.y_train)
        test_loss, test_metrics = evaluate(task, model, task.x_test, task.y_test)
        val = evaluate(task, model, task.x_val, task.y_val) if task.has_validation else None
        _switch(optimizer, "train")
        diverged = diverged or not (math.isfinite(train_loss) and math.isfinite(test_loss))
        entry: dict[str, Any] = {
            "run": rid, "task": task.name, "optimizer": spec.label, "spec": spec.text, "seed": seed,
            "epoch": partial_epoch if partial_epoch is not None else epoch, "step": step,
            "examples": examples, "time": round(seconds, 6),
            "train_loss": _finite_or_none(train_loss), "test_loss": _finite_or_none(test_loss),
        }
        if val is not None:
            entry["val_loss"] = _finite_or_none(val[0])
            entry.update({f"val_{k}": v for k, v in val[1].items()})
        entry.update({f"train_{k}": v for k, v in train_metrics.items()})
        entry.update({f"test_{k}": v for k, v in test_metrics.items()})
        entry["diverged"] = diverged
        records.append(entry)
        return entry

    def publish(entry: dict[str, Any]) -> None:
        save()
        if on_progress is not None:
            on_progress(budget.fraction(epoch, step, seconds))
        if on_eval is not None:
            on_eval(entry)

    model.train()
    _switch(optimizer, "train")
    if not records:
        entry = record(False)
        if entry["diverged"]:
            status = DIVERGED
        elif budget.reached(entry):
            status = FINISHED
        publish(entry)

    x, y = task.x_train, task.y_train
    while status is None:
        order = torch.randperm(task.n_train, generator=shuffle) if batch < task.n_train else None
        diverged, stopped_early = False, False
        start = time.perf_counter()
        for first in range(0, task.n_train, batch):
            index = order[first : first + batch] if order is not None else slice(None)
            xb, yb = x[index], y[index]

            def closure() -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                loss = task.loss(model(xb), yb)
                loss.backward()
                return loss

            loss = optimizer.step(closure)
            if scheduler is not None:
                scheduler.step()
            step += 1
            examples += len(yb)
            if loss is not None and not math.isfinite(float(loss.detach() if torch.is_tensor(loss) else loss)):
                diverged = True
                break
            if budget.exhausted(epoch, step, seconds + time.perf_counter() - start):
                stopped_early = first + batch < task.n_train
                break
        seconds += time.perf_counter() - start
        partial = None
        if diverged or stopped_early:
            partial = round(examples / task.n_train, 4)  # epochs of data seen, a fraction
        else:
            epoch += 1
        entry = record(diverged, partial)
        if entry["diverged"]:
            status = DIVERGED
        elif partial is not None or budget.exhausted(epoch, step, seconds) or budget.reached(entry):
            status = FINISHED
        publish(entry)
    return RunResult(rid, spec.label, seed, status, records)


def set_aside(path: Path) -> Path:
    """Rename a damaged file to ``<name>.damaged-<time>`` (kept for inspection, out of the way)."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    os.replace(path, aside)
    return aside


# --- races -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class RaceResult:
    task: Task
    specs: list[OptimizerSpec]
    seeds: list[int]
    budget: Budget
    batch_size: int
    runs: list[RunResult]
    out: Path | None
    elapsed: float

    def records(self) -> list[dict[str, Any]]:
        return [r for run in self.runs for r in run.records]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_out(task_name: str) -> Path:
    return Path("runs") / f"compare-{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"


_WORKER: dict[str, Any] = {}


def watch_parent(parent: int, interval: float = 0.5) -> None:
    """End this (worker) process as soon as ``parent`` is no longer its parent. A worker whose parent
    was killed (kill -9, a closed terminal) must not keep training: a rerun would find two processes
    writing the same checkpoint, or a search would spend its trial budget with nobody waiting."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="sgdlab-parent-watch").start()


def _init_worker(task: Task, queue: Any, parent: int, prefix: str) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent handles it
    torch.set_num_threads(1)  # several processes share the cores: one thread each
    one_line_lab_warnings(prefix)
    _WORKER["task"], _WORKER["queue"] = task, queue
    watch_parent(parent)


def _guarded_run(task, spec, seed, budget, batch_size, checkpoint, on_eval, on_progress) -> RunResult:
    try:
        return train_run(
            task, spec, seed, epochs=budget.epochs, steps=budget.steps, time_budget=budget.time_budget,
            batch_size=batch_size, checkpoint=checkpoint, on_eval=on_eval, on_progress=on_progress,
            stop_at=budget.stop_at,
        )
    except Exception as error:  # a bug in one optimizer must not take the race down
        return RunResult("", spec.label, seed, FAILED, [], f"{type(error).__name__}: {error}")


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a ``runs.jsonl``. Lines that are not whole records (cut short by a kill or a
    power cut) are moved to ``runs.jsonl.damaged-<time>`` with a warning naming them; their records
    are still in the runs' checkpoints, from which the race logs them again."""
    if not path.exists():
        return []
    rows, good, bad = [], [], []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                _record_key(record)
            except (ValueError, TypeError, KeyError):  # UnicodeDecodeError is a ValueError too
                bad.append((number, raw))
                continue
            rows.append(record)
            good.append(raw if raw.endswith(b"\n") else raw + b"\n")
    if bad:
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        with open(aside, "ab") as handle:
            handle.writelines(raw if raw.endswith(b"\n") else raw + b"\n" for _, raw in bad)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.writelines(good)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        lines = ", ".join(str(number) for number, _ in bad)
        _warn(f"{path}: line{'s' if len(bad) > 1 else ''} {lines} {'are' if len(bad) > 1 else 'is'} not a whole "
              f"record (cut short by a kill or a power cut?); moved to {aside.name}, the records are "
              "logged again from the checkpoints")
    return rows


def _open_log(path: Path) -> Any:
    """``path`` opened for appending, so that the next record starts on a line of its own even when
    the last one was cut short."""
    handle = open(path, "a")
    if handle.tell() > 0:
        with open(path, "rb") as raw:
            raw.seek(-1, os.SEEK_END)
            if raw.read(1) != b"\n":
                handle.write("\n")
    return handle


def _record_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["run"], record["epoch"], record["step"])


def run_race(
    task: Task,
    specs: Sequence[OptimizerSpec],
    seeds: int | Iterable[int] = 3,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    console: Any = None,
    stop_at: tuple[str, float, bool] | None = None,
    population: bool = True,
    cluster: Any = None,
) -> RaceResult:
    """Run every spec with every seed (``seeds``: a count, 0..N-1, or explicit seeds).

    ``workers`` processes (default: the usable cores) run the runs in parallel, one torch thread
    each. With ``out``, every evaluation is appended to ``out/runs.jsonl`` and every run
    checkpoints to ``out/checkpoints/``: calling again with the same arguments and ``out`` skips
    finished runs and continues interrupted ones. Reports are written by
    :func:`sgdlab.lab.report.write_report`.

    With ``population`` (the default), the seeds of an optimizer, and specs that differ only in
    hyperparameters such as ``lr``, train as one vectorized population
    (:mod:`sgdlab.lab.population`): the same records and checkpoints, to float tolerance.
    With ``cluster`` (a Dask scheduler address or ``distributed.Client``), the runs are tasks on
    that cluster instead of local worker processes (:mod:`sgdlab.lab.cluster`).
    """
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    specs = list(specs)
    if not specs:
        raise ValueError("specs: expected at least one optimizer")
    budget = Budget(epochs, steps, time_budget, stop_at).resolve(task)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers={workers} (expected >= 1)")
    out_dir = Path(out) if out is not None else None
    jobs = [(spec, seed) for spec in specs for seed in seeds]
    if workers > 1 and len(jobs) > 1:
        try:  # worker processes receive the task and specs by pickling
            pickle.dumps((task, specs))
        except Exception as error:
            warnings.warn(
                f"the task or an optimizer cannot be sent to worker processes ({type(error).__name__}: {error}); "
                "running in this process. Define model factories and losses at module level "
                "(not lambdas) to run in parallel.",
                stacklevel=2,
            )
            workers = 1

    log_path = None
    logged: set[tuple[Any, ...]] = set()
    checkpoints: dict[tuple[str, int], str | None] = {}
    if out_dir is not None:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        log_path = out_dir / "runs.jsonl"
        logged = {_record_key(r) for r in _load_jsonl(log_path)}
    for spec, seed in jobs:
        batch = task.n_train if spec.full_batch else int(batch_size or task.batch_size)
        rid = run_id(task, spec, seed, budget, batch)
        checkpoints[(spec.label, seed)] = str(out_dir / "checkpoints" / f"{rid}.pt") if out_dir else None
    if out_dir is not None:
        _write_race_json(out_dir, task, specs, seeds, budget, batch_size)

    from sgdlab.lab import population as population_module

    units, notes = population_module.plan(task, jobs, workers=workers, enabled=population, batch_size=batch_size)
    for note in notes:  # once per reason, before anything trains
        _warn(note)
    log_handle = _open_log(log_path) if log_path is not None else None

    def log(record: dict[str, Any]) -> None:
        key = _record_key(record)
        if log_handle is not None and key not in logged:
            log_handle.write(json.dumps(record) + "\n")
            log_handle.flush()
            logged.add(key)

    started = time.perf_counter()
    bars = _Progress(jobs, enabled=progress, console=console)
    results: dict[tuple[str, int], RunResult] = {}
    try:
        with bars:
            if cluster is not None:
                from sgdlab.lab.cluster import run_units

                results = run_units(cluster, task, units, budget, batch_size, checkpoints, log, bars)
            elif workers == 1 or len(jobs) == 1:
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # the same numbers as in worker processes
                try:
                    for unit in units:
                        unit_results = population_module.run_unit(
                            task, unit, budget, batch_size, [checkpoints[(s.label, seed)] for s, seed in unit],
                            on_eval=log, on_progress=bars.update,
                        )
                        for result in unit_results:
                            results[(result.optimizer, result.seed)] = result
                            bars.finish((result.optimizer, result.seed), result)
                finally:
                    torch.set_num_threads(threads)
            else:
                results = _run_parallel(task, units, budget, batch_size, checkpoints, workers, log, bars)
    finally:
        if log_handle is not None:
            log_handle.close()

    runs = [results[(spec.label, seed)] for spec, seed in jobs]
    if log_path is not None:  # records saved in checkpoints but cut from the log by a kill
        with _open_log(log_path) as handle:
            for run in runs:
                for record in run.records:
                    if _record_key(record) not in logged:
                        handle.write(json.dumps(record) + "\n")
                        logged.add(_record_key(record))
    return RaceResult(task, specs, seeds, budget, int(batch_size or task.batch_size), runs, out_dir,
                      time.perf_counter() - started)


def _run_parallel(task, units, budget, batch_size, checkpoints, workers, log, bars) -> dict:
    import multiprocessing
    import queue as queue_module
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
    messages = context.Queue()
    results: dict[tuple[str, int], RunResult] = {}
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(units)), mp_context=context, initializer=_init_worker,
        initargs=(task, messages, os.getpid(), lab_warning_prefix()),
    )

    def drain(timeout: float) -> None:
        try:
            while True:
                message = messages.get(timeout=timeout)
                timeout = 0.0
                if message[0] == "eval":
                    log(message[1])
                elif message[0] == "progress":
                    bars.update(message[1], message[2])
        except queue_module.Empty:
            pass

    try:
        from sgdlab.lab.population import worker_unit_job

        futures = {
            executor.submit(worker_unit_job, unit, budget, batch_size,
                            [checkpoints[(spec.label, seed)] for spec, seed in unit]): unit
            for unit in units
        }
        pending = set(futures)
        while pending:
            drain(0.1)
            done, pending = wait(pending, timeout=0.0, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    unit_results = future.result()
                except Exception as error:  # a worker process that died (killed, out of memory)
                    unit_results = [RunResult("", spec.label, seed, FAILED, [], f"{type(error).__name__}: {error}")
                                    for spec, seed in futures[future]]
                for result in unit_results:
                    results[(result.optimizer, result.seed)] = result
                    bars.finish((result.optimizer, result.seed), result)
        drain(0.2)
    except BaseException:  # Ctrl-C (workers ignore it) or an error here: stop the workers now
        # Without this, interpreter exit would wait for the jobs in flight and the ones queued
        # behind them. A worker killed mid-save leaves its previous checkpoint intact (atomic
        # replace), so the interrupted runs resume from their last finished epoch.
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
    return results


def _write_race_json(out_dir, task, specs, seeds, budget, batch_size) -> None:
    from sgdlab import __version__

    race = {
        "task": task.name, "description": task.description, "fingerprint": task.fingerprint(),
        "optimizers": [s.to_dict() | {"resolved": {k: repr(v) for k, v in s.resolved(task).items()},
                                      "full_batch": s.full_batch} for s in specs],
        "seeds": seeds, "budget": dataclasses.asdict(budget), "batch_size": batch_size or task.batch_size,
        "sgdlab": __version__, "torch": torch.__version__,
    }
    (out_dir / "race.json").write_text(json.dumps(race, indent=2) + "\n")


class _Progress:
    """One rich progress bar per optimizer (its seeds' runs together) and one for the race."""

    def __init__(self, jobs, enabled: bool, console: Any = None) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
        )
        labels = list(dict.fromkeys(spec.label for spec, _ in jobs))
        width = max(len(label) for label in labels + ["all runs"])
        self.rows = {
            label: self.progress.add_task(label.ljust(width), total=sum(1 for s, _ in jobs if s.label == label),
                                          status="")
            for label in labels
        }
        self.done: dict[tuple[str, int], float] = {(spec.label, seed): 0.0 for spec, seed in jobs}
        self.counts: dict[str, dict[str, int]] = {label: {} for label in labels}
        self.overall = self.progress.add_task("all runs".ljust(width), total=len(jobs), status="")

    def __enter__(self) -> "_Progress":
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)

    def start(self, key) -> None:
        pass

    def update(self, key, fraction: float) -> None:
        if self.enabled:
            self.done[tuple(key)] = fraction
            self._refresh(key[0])

    def _refresh(self, label: str) -> None:
        completed = sum(f for (l, _), f in self.done.items() if l == label)
        status = ", ".join(f"[red]{n} {what}" for what, n in self.counts[label].items())
        self.progress.update(self.rows[label], completed=completed, status=status)
        self.progress.update(self.overall, completed=sum(self.done.values()))

    def finish(self, key, result: RunResult) -> None:
        if self.enabled:
            self.done[tuple(key)] = 1.0
            if result.status != FINISHED:
                counts = self.counts[key[0]]
                counts[result.status] = counts.get(result.status, 0) + 1
            self._refresh(key[0])
