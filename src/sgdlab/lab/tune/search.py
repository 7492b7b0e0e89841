"""Hyperparameter search with Optuna: one study per (task, optimizer), shared by any number of workers.

A trial samples a configuration from the :class:`~sgdlab.lab.tune.space.SearchSpace`, trains it
with :func:`sgdlab.lab.runner.train_run` on the task's training set, judges it on the task's
validation split (:meth:`~sgdlab.lab.tasks.Task.with_validation`), reports the validation metric after every epoch (the pruner stops trials that are clearly
worse than the others at the same epoch) and returns the final validation metric. The test set is
never seen during the search; it is only used by the report's confirmation runs. Every trial
starts from the same seed (common random numbers), so trials differ by their hyperparameters, not by
their initialization; the confirmation runs use other seeds, which measures how much of the best
trial's score was luck.

From Python::

    setup = SearchSetup(task=get_task("digits"), spec=parse_spec("sgd"), space_text="lr=1e-3:1",
                        study_name="digits-sgd", out="runs/tune-digits", n_trials=40)
    result = search(setup, workers=2)
    spec, batch_size, trial = result.best()

Sampling is TPE (Bergstra et al., 2011; ``constant_liar`` so parallel workers do not propose the
same point), pruning is the median rule (or Hyperband, or none). A worker that is alone on the study
seeds its sampler from the search's seed, so a one-worker search repeats itself; a worker that finds
another live worker already on the study (a second command on the same storage, or a sibling
process) mixes a unique id into its seed, so concurrent workers do not draw the same
configurations. A trial that diverges returns the
untrained model's metric: it is recorded as a real, bad outcome the sampler learns from, not as a
failure it would ignore.

The study lives in an Optuna storage: by default the journal file ``OUT/study.journal`` (append-only,
safe for several processes), or any URL given with ``--storage`` (``sqlite:///tune.db``,
``postgresql://...``, ``redis://...``) so workers on several machines share one study. Running the
same command again resumes the study: trials left RUNNING by a killed worker on this machine are
marked failed and re-queued with the same parameters (on SQL storages a heartbeat does the same for
workers on other machines).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sgdlab.lab.runner import DIVERGED, lab_warning_prefix, one_line_lab_warnings, train_run, watch_parent
from sgdlab.lab.specs import OptimizerSpec
from sgdlab.lab.tasks import Task
from sgdlab.lab.tune.space import SearchSpace

PRUNERS = ("median", "hyperband", "none")
_OWNER = "sgdlab_worker"
_STALE = "sgdlab_stale"


class StorageError(ValueError):
    """An Optuna storage that cannot be opened, or a study that belongs to another search."""


# --- the validation split -------------------------------------------------------------------------


def validation_task(task: Task, fraction: float | None = None, seed: int = 0) -> Task:
    """``task`` with its validation split (:meth:`Task.with_validation`, the one mechanism every lab
    command uses): the task's own when it has one and ``fraction`` is None, else ``fraction`` of
    the training data held out. The search judges trials on it; the test set stays unseen."""
    return task.with_validation(fraction, seed)


# --- storages -------------------------------------------------------------------------------------


def storage_description(storage: str | None, out: Path) -> str:
    return storage if storage else str(out / "study.journal")


def open_storage(storage: str | None, out: Path) -> Any:
    """An Optuna storage from ``--storage``: None (the journal file in ``out``), a URL
    (``sqlite:///``, ``postgresql://``, ``mysql://``, ``redis://``) or a file path (``*.db`` /
    ``*.sqlite`` as SQLite, anything else as a journal file)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    target = storage or str(out / "study.journal")
    try:
        if "://" in target:
            scheme = target.split("://", 1)[0].split("+", 1)[0].lower()
            if scheme == "redis":
                from optuna.storages.journal import JournalRedisBackend

                return JournalStorage(JournalRedisBackend(target))
            if scheme in ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql"):
                # A heartbeat lets any worker fail (and re-queue) trials whose worker died, also on
                # other machines.
                return _rdb_storage(target)
            raise StorageError(
                f"--storage {target!r}: unknown scheme {scheme!r}; use a file path (journal file, or "
                f"*.db for SQLite) or a URL: sqlite:///path.db, postgresql://user:password@host/db, "
                f"mysql://..., redis://host:port"
            )
        path = Path(target)
        if path.exists() and path.is_dir():
            raise StorageError(f"--storage {target!r} is a directory; give a file path or a URL")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return _rdb_storage(f"sqlite:///{path.resolve()}")
        return JournalStorage(JournalFileBackend(str(path)))
    except StorageError:
        raise
    except ImportError as error:
        raise StorageError(f"--storage {target!r} needs a driver that is not installed: {error}") from None
    except (OSError, optuna.exceptions.OptunaError) as error:
        raise StorageError(f"--storage {target!r} cannot be opened: {_first_line(error)}") from None
    except Exception as error:  # SQLAlchemy's errors (bad URL, unreachable server) have no common base here
        raise StorageError(
            f"--storage {target!r} cannot be opened: {type(error).__name__}: {_first_line(error)}"
        ) from None


def _first_line(error: BaseException) -> str:
    """The gist of a driver's error (SQLAlchemy appends the SQL and a link on further lines)."""
    return (str(error).strip().splitlines() or [""])[0]


def _rdb_storage(url: str) -> Any:
    """An SQL storage with a heartbeat: any worker fails, and re-queues, the trials of a worker that
    stopped beating (killed, machine lost), also on other machines."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna 4.x-5.x
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:  # Optuna >= 4.9
            from optuna.storages import RetryHeartbeatStaleTrialCallback

            retry = {"heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=2)}
        except ImportError:
            from optuna.storages import RetryFailedTrialCallback

            retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=2)}
        return RDBStorage(url, heartbeat_interval=30, grace_period=120, **retry)


# --- what one search is -------------------------------------------------------------------------


@dataclasses.dataclass
class SearchSetup:
    """Everything a worker process needs to join a study (picklable)."""

    task: Task
    spec: OptimizerSpec
    space_text: str | None
    study_name: str
    out: Path
    storage: str | None = None
    n_trials: int | None = 20
    timeout: float | None = None
    epochs: int | None = None
    metric: str | None = None
    pruner: str = "median"
    seed: int = 0
    val_fraction: float | None = None  # None: the task's own validation split (20% when it has none)
    # Trials of a vectorizable optimizer train as populations (sgdlab.lab.tune.populations).
    population: bool = True
    # Local worker processes sharing the study (set by search()): a population takes its share.
    local_workers: int = 1

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.n_trials is not None and self.n_trials < 1:
            raise ValueError(f"trials must be a positive integer, got {self.n_trials!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.n_trials is None and self.timeout is None:
            raise ValueError("give a budget: trials, timeout or both")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        metric = self.metric or self.task.metric
        if metric != "loss" and metric not in self.task.metrics:
            raise ValueError(
                f"metric {metric!r} is not measured on task {self.task.name!r}; "
                f"valid: loss, {', '.join(self.task.metrics)}"
            )
        self.metric = metric

    @property
    def higher_is_better(self) -> bool:
        return self.metric != "loss" and self.task.higher_is_better

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def record_key(self) -> str:
        """The runner's record field holding the validation metric."""
        return f"val_{self.metric}"

    @property
    def trial_epochs(self) -> int:
        return int(self.epochs or self.task.epochs)

    def space(self) -> SearchSpace:
        from sgdlab.lab.tune.space import parse_space

        return parse_space(self.space_text, self.spec, self.task)

    def identity(self) -> dict[str, Any]:
        """What makes two invocations the same search (checked when a study is resumed)."""
        return {
            "task": self.task.name, "task_fingerprint": self.task.fingerprint(), "opt": self.spec.text,
            "space": self.space().text(), "epochs": self.trial_epochs, "metric": self.metric,
            "val_fraction": self.val_fraction, "seed": self.seed,
        }


def make_pruner(name: str, epochs: int) -> Any:
    import optuna

    if name == "median":
        # Compare from the second epoch on, and only once five trials have finished: before that the
        # median is too noisy to kill anything.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_sampler(seed: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def create_or_load_study(setup: SearchSetup, storage: Any, *, worker: int = 0) -> Any:
    """Create the study, or load it and check it is the same search (task, optimizer, space,
    epochs, metric) so a resumed study never mixes trials of two different questions."""
    import optuna

    existing = None
    try:
        existing = optuna.load_study(study_name=setup.study_name, storage=storage)
    except KeyError:
        pass
    identity = setup.identity()
    n_before = len(existing.trials) if existing is not None else 0
    sampler = make_sampler(base_sampler_seed(setup, worker, n_before))
    pruner = make_pruner(setup.pruner, setup.trial_epochs)
    if existing is not None:
        saved = existing.user_attrs.get("sgdlab")
        if saved is not None:
            differences = [
                f"{key}: study has {saved.get(key)!r}, this command {value!r}"
                for key, value in identity.items() if saved.get(key) != value
            ]
            if differences:
                raise StorageError(
                    f"study {setup.study_name!r} in {storage_description(setup.storage, setup.out)} belongs to "
                    f"another search ({'; '.join(differences)}); use the same arguments to resume it, or "
                    f"another --study-name / --out for a new search"
                )
        return optuna.load_study(study_name=setup.study_name, storage=storage, sampler=sampler, pruner=pruner)
    study = optuna.create_study(
        storage=storage, study_name=setup.study_name, direction=setup.direction, sampler=sampler,
        pruner=pruner, load_if_exists=True,
    )
    if "sgdlab" not in study.user_attrs:
        study.set_user_attr("sgdlab", identity)
        params = default_params(setup)
        if params is not None:
            # The search starts from what the user would run without tuning: its validation score is
            # the bar every other trial has to clear, and the sampler learns from it first.
            study.enqueue_trial(params, user_attrs={DEFAULT_TRIAL: True}, skip_if_exists=True)
        study.set_user_attr("default_enqueued", params is not None)
    return study


DEFAULT_TRIAL = "sgdlab_default_configuration"


def default_params(setup: SearchSetup) -> dict[str, Any] | None:
    """The default configuration (the ``--opt`` spec as given, the task's batch size) as Optuna
    parameters of the search space, or None when it lies outside the space (e.g. plain SGD has
    momentum 0, the momentum range starts at 0.5). A weight decay of 0 is entered as the log range's
    lower end."""
    from sgdlab.lab.tune.space import _signature_default

    space = setup.space()
    factory = setup.spec.entry.resolve()
    resolved = setup.spec.resolved(setup.task)
    betas = resolved.get("betas", _signature_default(factory, "betas"))
    params: dict[str, Any] = {}
    for name, dim in space.dimensions.items():
        if not dim.searched:
            continue
        if name == "batch_size":
            value = setup.task.batch_size
        elif name == "schedule":
            value = resolved.get("schedule") or "constant"
        elif name == "warmup":
            value = resolved.get("warmup") or 0.0
        elif name in ("beta1", "beta2"):
            value = None if betas is None else betas[("beta1", "beta2").index(name)]
        else:
            value = resolved.get(name, _signature_default(factory, name))
        if value is None or isinstance(value, torch.Tensor):
            return None
        if name == "weight_decay" and value == 0 and dim.kind == "float" and dim.scale == "log":
            value = dim.low  # no decay: the log range's lower end (1e-6 as L2, 1e-4 decoupled) is as good as none
        if dim.kind == "choice":
            if value not in dim.choices:
                return None
        elif not dim.low <= value <= dim.high:
            return None
        params[dim.optuna_name] = 1.0 - value if dim.optuna_name != name else value
    return params


def base_sampler_seed(setup: SearchSetup, worker: int, n_before: int) -> int:
    """The sampler seed of a worker alone on the study: from the search's seed, the local worker's
    index and the trials already there (a resumed study does not replay its first draws)."""
    return (setup.seed + 1009 * worker + n_before) % 2**32


def sampler_seed(setup: SearchSetup, study: Any, worker: int, n_before: int, me: dict[str, Any]) -> int:
    """The sampler seed of worker ``me`` (registered on ``study``): :func:`base_sampler_seed` when no
    other live worker joined the study before it, else that seed mixed with this process's identity
    and the time, so two searches on one storage (started with the same --seed) draw different
    configurations instead of the same ones."""
    import hashlib

    base = base_sampler_seed(setup, worker, n_before)
    key = f"worker:{me['host']}:{me['pid']}"
    mine = study.user_attrs.get(key, {})
    for name, info in study.user_attrs.items():
        if not name.startswith("worker:") or name == key or not isinstance(info, dict):
            continue
        host, _, pid = name[len("worker:"):].rpartition(":")
        other = {"host": host, "pid": pid, "start": info.get("start")}
        live = host != me["host"] or _alive(other)  # on another machine: assume it still runs
        earlier = (info.get("joined", 0), name) < (mine.get("joined", 0), key)
        if live and earlier:
            text = f"{base}:{me['host']}:{me['pid']}:{me.get('start')}:{time.time_ns()}"
            return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return base


# --- workers, stale trials and the trial budget ------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live worker from a reused process id)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _alive(owner: dict[str, Any]) -> bool:
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    start = owner.get("start")
    return start is None or _process_start(pid) in (None, start)


def _is_stale(trial: Any) -> bool:
    owner = trial.user_attrs.get(_OWNER)
    return bool(owner) and owner.get("host") == socket.gethostname() and not _alive(owner)


def recover_stale_trials(study: Any, storage: Any) -> list[int]:
    """Fail the RUNNING trials whose worker (on this machine) is gone and queue their parameters
    again, so a killed search redoes exactly the interrupted trials. Returns their numbers."""
    from optuna.trial import TrialState

    recovered = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(trial):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, _STALE, True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except Exception:  # another worker recovered it first
            continue
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"sgdlab_retry_of": trial.number})
        recovered.append(trial.number)
    return recovered


def count_trials(study: Any) -> dict[str, int]:
    """Trials by outcome; ``done`` (complete, pruned or failed, not counting trials recovered from
    dead workers) is what the ``--trials`` budget counts; ``running`` only counts live ones."""
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "diverged": 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
            counts["diverged"] += trial.user_attrs.get("status") == DIVERGED
        elif trial.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif trial.state == TrialState.FAIL and not trial.user_attrs.get(_STALE):
            counts["failed"] += 1
        elif trial.state == TrialState.RUNNING and trial.user_attrs.get(_OWNER) and not _is_stale(trial):
            counts["running"] += 1
    counts["done"] = counts["complete"] + counts["pruned"] + counts["failed"]
    return counts


class _Budget:
    """Stops a worker once the study holds ``n_trials`` finished or running trials (all workers
    together, resumed runs included)."""

    def __init__(self, n_trials: int | None) -> None:
        self.n_trials = n_trials

    def __call__(self, study: Any, trial: Any) -> None:
        if self.n_trials is None:
            return
        counts = count_trials(study)
        if counts["done"] + counts["running"] >= self.n_trials:
            study.stop()


# --- the objective --------------------------------------------------------------------------------


def make_objective(setup: SearchSetup, space: SearchSpace, val_task: Task) -> Callable[[Any], float]:
    import optuna

    key, epochs = setup.record_key, setup.trial_epochs

    def objective(trial: Any) -> float:
        trial.set_user_attr(_OWNER, _owner())
        values = space.suggest(trial)
        spec, batch_size = space.configuration(values, val_task)
        trial.set_user_attr("opt", spec.text)
        trial.set_user_attr("batch_size", batch_size or val_task.batch_size)
        started = time.perf_counter()

        def on_eval(record: dict[str, Any]) -> None:
            epoch, value = record["epoch"], record.get(key)
            # Whole epochs only (a diverged run's last record is a fractional epoch), finite values only.
            if not isinstance(epoch, int) or epoch < 1 or value is None:
                return
            trial.report(float(value), epoch)
            if trial.should_prune():
                trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
                raise optuna.TrialPruned(f"{setup.metric} {value:.4g} at epoch {epoch} is below the median")

        cpu = time.process_time()
        result = train_run(val_task, spec, seed=setup.seed, epochs=epochs, batch_size=batch_size, on_eval=on_eval)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        trial.set_user_attr("cpu_seconds", round(time.process_time() - cpu, 3))
        trial.set_user_attr("status", result.status)
        final = result.final.get(key)
        if result.status == DIVERGED or final is None:
            # No better than not training at all: the untrained model's metric.
            untrained = result.records[0].get(key) if result.records else None
            if untrained is None:
                untrained = 0.0 if setup.higher_is_better else float("inf")
            return float(untrained)
        return float(final)

    return objective


def run_worker(
    setup: SearchSetup, worker: int = 0, callbacks: list[Callable[..., None]] | None = None, start: Any = None
) -> None:
    """One worker: join the study and run trials until the budget (all workers together) is spent
    or this worker's ``timeout`` has passed. ``start``, a barrier shared by local workers, makes
    them begin together, so a process that is slow to start still gets its share of trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(setup.storage, setup.out)
    study = create_or_load_study(setup, storage, worker=worker)
    n_before = len(study.get_trials(deepcopy=False))
    owner = _owner()
    study.set_user_attr(f"worker:{owner['host']}:{owner['pid']}",
                        {"joined": time.time(), "worker": worker, "start": owner["start"]})
    study.sampler = make_sampler(sampler_seed(setup, study, worker, n_before, owner))
    space = setup.space()
    val_task = validation_task(setup.task, setup.val_fraction, setup.seed)
    if start is not None:
        try:
            start.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass  # a sibling never arrived (it failed to start): go on without it
    counts = count_trials(study)
    remaining = None
    if setup.n_trials is not None:
        remaining = setup.n_trials - counts["done"] - counts["running"]
        if remaining <= 0:
            return
    from sgdlab.lab.tune import populations

    if setup.population and populations.vectorizable(setup, val_task):
        populations.optimize(study, setup, space, val_task, remaining=remaining, timeout=setup.timeout,
                             callbacks=callbacks or [])
        return
    study.optimize(
        make_objective(setup, space, val_task), n_trials=remaining, timeout=setup.timeout,
        callbacks=[_Budget(setup.n_trials), *(callbacks or [])], gc_after_trial=False,
    )


def _worker_process(setup: SearchSetup, worker: int, start: Any, parent: int, prefix: str) -> None:
    watch_parent(parent)  # a search killed with SIGKILL must not leave its workers spending the budget
    one_line_lab_warnings(prefix)
    torch.set_num_threads(1)  # N workers share the cores: one thread each
    run_worker(setup, worker, start=start)


# --- the search, as the CLI runs it ---------------------------------------------------------------


@dataclasses.dataclass
class SearchResult:
    study: Any
    setup: SearchSetup
    space: SearchSpace
    counts: dict[str, int]
    recovered: list[int]
    elapsed: float

    def best(self) -> tuple[OptimizerSpec, int, Any]:
        """The best configuration: ``(spec, batch_size, frozen_trial)``."""
        trial = self.study.best_trial
        spec, batch_size = self.space.configuration(self.space.values_from_params(trial.params), self.setup.task)
        return spec, batch_size or self.setup.task.batch_size, trial


def search(setup: SearchSetup, *, workers: int = 1, progress: bool = True, console: Any = None) -> SearchResult:
    """Run (or resume) the study with ``workers`` local processes; returns when the budget is spent."""
    import optuna

    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup.out.mkdir(parents=True, exist_ok=True)
    space = setup.space()  # errors in --space surface before anything starts
    storage = open_storage(setup.storage, setup.out)
    study = create_or_load_study(setup, storage)
    recovered = recover_stale_trials(study, storage)
    started = time.perf_counter()
    bar = _SearchProgress(setup, study, enabled=progress, console=console)
    with bar:
        if workers == 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the same numbers as in worker processes
            try:
                run_worker(setup, 0, callbacks=[lambda s, t: bar.refresh()])
            finally:
                torch.set_num_threads(threads)
        else:
            _run_processes(setup, workers, bar)
    counts = count_trials(study)
    return SearchResult(study, setup, space, counts, recovered, time.perf_counter() - started)


def _run_processes(setup: SearchSetup, workers: int, bar: "_SearchProgress") -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
    start = context.Barrier(workers)
    prefix = lab_warning_prefix()
    processes = [
        context.Process(target=_worker_process, args=(dataclasses.replace(setup, local_workers=workers), i, start,
                                                      os.getpid(), prefix), daemon=False)
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            for process in processes:
                process.join(timeout=0.5 / len(processes))
            bar.refresh()
    finally:
        for process in processes:  # on Ctrl-C: stop our workers; their trials are recovered next time
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()
    failed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    if failed and not any(p.exitcode == 0 for p in processes):
        raise RuntimeError(f"all {workers} search workers failed (exit codes {failed}); see their errors above")


class _SearchProgress:
    """A rich progress bar over the study's trials (all workers), with the best value so far."""

    def __init__(self, setup: SearchSetup, study: Any, enabled: bool, console: Any = None) -> None:
        self.setup, self.study, self.enabled = setup, study, enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), console=console,
        )
        self.task_id = self.progress.add_task("trials", total=setup.n_trials, status="")
        self._started = time.monotonic()

    def __enter__(self) -> "_SearchProgress":
        if self.enabled:
            self.progress.__enter__()
            self.refresh()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.refresh()
            self.progress.__exit__(*exc)

    def refresh(self) -> None:
        if not self.enabled:
            return
        counts = count_trials(self.study)
        status = f"{counts['pruned']} pruned"
        if counts["diverged"]:
            status += f", {counts['diverged']} diverged"
        if counts["failed"]:
            status += f", [red]{counts['failed']} failed[/red]"
        if counts["running"]:
            status += f", {counts['running']} running"
        if counts["complete"]:
            try:
                status += f", best {self.setup.metric} {self.study.best_value:.4g}"
            except ValueError:
                pass
        total = self.setup.n_trials
        if total is None:  # a time budget only: the bar shows the time spent
            total = max(counts["done"] + counts["running"], 1)
        self.progress.update(self.task_id, completed=counts["done"], total=total, status=status)


def trials_table(study: Any, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs reached, seconds and the configuration."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(_STALE):
            continue
        try:
            values = space.values_from_params(trial.params)
        except KeyError:
            values = {}
        rows.append({
            "number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
            "status": trial.user_attrs.get("status"),
            "epochs": max(trial.intermediate_values) if trial.intermediate_values else 0,
            "seconds": trial.user_attrs.get("seconds"), "default": bool(trial.user_attrs.get(DEFAULT_TRIAL)), **values,
        })
    return rows


def write_search_json(result: SearchResult, path: Path) -> None:
    rows = trials_table(result.study, result.space)
    info = {
        "study": result.study.study_name, "storage": storage_description(result.setup.storage, result.setup.out),
        "direction": result.setup.direction, "metric": result.setup.metric, "identity": result.setup.identity(),
        "space": result.space.describe(), "counts": result.counts, "recovered_trials": result.recovered,
        "workers_joined": sorted(k.split(":", 1)[1] for k in result.study.user_attrs if k.startswith("worker:")),
        "trials": rows,
    }
    path.write_text(json.dumps(info, indent=2, default=repr) + "\n")
