"""``sgdlab tune``: ``tune lr`` (learning-rate range test) and ``tune search`` (Optuna search, with a
report of what tuning bought over the optimizer's default configuration)."""

from __future__ import annotations

import argparse
import re
import sys

from sgdlab.cli.checks import int_at_least, positive_float, seed_value

LR_EXAMPLES = """\
examples:
  sgdlab tune lr --task digits --opt sgd:momentum=0.9
  sgdlab tune lr --task mnist1d --opt adamw --start-lr 1e-7 --end-lr 1 --steps 300
  sgdlab tune lr --task modular --opt adam --rule steepest --out runs/lr-modular

Writes lr_range.png (loss against learning rate) and lr_range.json into --out. In Python:
  from sgdlab.lab.tune import lr_range_test
"""

SEARCH_EXAMPLES = """\
examples:
  sgdlab tune search --task mnist1d --opt sgd --trials 40
  sgdlab tune search --task digits --opt adamw --timeout 600 --workers 2
  sgdlab tune search --task digits --opt sgd --space 'lr=1e-4:1,momentum=0.8:0.99,batch_size=32|64'
  sgdlab tune search --task digits --opt sgd --storage sqlite:///tune.db --study-name digits-sgd

--space NAME=LOW:HIGH[:log|linear|log1m], NAME=A|B|C (a choice), NAME=VALUE (fixed), NAME=default;
quote the whole --space value: the shell reads | as a pipe.
Rerunning the same command (same --out, or same --storage and --study-name) resumes the study;
raise --trials to add trials. Workers on other machines join with the same --storage/--study-name.
A search alone on its study draws the same configurations for the same --seed; a command (or worker)
that joins a study another live one is running draws from a seed of its own, so concurrent searches
do not try the same configurations twice.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune", help="learning-rate range test and hyperparameter search (Optuna)",
        description="Tune an optimizer on a task: `tune lr` runs a learning-rate range test, `tune search` "
        "an Optuna search whose best configuration is compared with the default one over fresh seeds.",
    )
    commands = parser.add_subparsers(dest="tune_command", metavar="COMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    lr = commands.add_parser(
        "lr", help="learning-rate range test (Smith, 2017): loss against an exponentially growing lr",
        description="Train for --steps steps while the learning rate grows exponentially from --start-lr "
        "to --end-lr; plot the smoothed loss against the learning rate and suggest one.",
        epilog=LR_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(lr, default_task="digits")
    lr.add_argument("--start-lr", type=positive_float, default=1e-6, help="first learning rate (default: 1e-6)")
    lr.add_argument("--end-lr", type=positive_float, default=10.0, help="last learning rate (default: 10)")
    lr.add_argument("--steps", type=int_at_least(2), default=200, help="steps of the sweep (default: 200)")
    lr.add_argument("--smoothing", type=float, default=0.9,
                    help="EMA coefficient of the smoothed loss, in [0, 1) (default: 0.9)")
    lr.add_argument("--rule", choices=("min/10", "steepest"), default="min/10",
                    help="how the suggestion is read off the curve (default: min/10)")
    lr.add_argument("--batch-size", type=int_at_least(1), default=None, help="mini-batch size (default: the task's)")
    lr.set_defaults(func=run_lr)

    search = commands.add_parser(
        "search", help="hyperparameter search with Optuna (TPE, pruning, resumable, parallel workers)",
        description="Search the optimizer's hyperparameters (lr, momentum/betas, weight decay, batch size) "
        "with Optuna's TPE sampler, pruning trials on their per-epoch validation metric; then re-run the "
        "best and the default configuration over fresh seeds and report the gain with its 95% CI.",
        epilog=SEARCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(search, default_task="mnist1d")
    search.add_argument("--trials", type=int_at_least(1), default=None,
                        help="trials in the study, all workers and resumed runs together (default: 20, "
                        "or unlimited with --timeout)")
    search.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                        help="stop starting trials after this many seconds (per invocation)")
    search.add_argument("--epochs", type=int_at_least(1), default=None,
                        help="epochs per trial and per confirmation run (default: the task's)")
    search.add_argument("--space", default=None, metavar="SPACE",
                        help="override or add dimensions, e.g. lr=1e-4:1,momentum=0.8:0.99 (see below)")
    search.add_argument("--metric", default=None,
                        help="validation metric to optimize: the task's metric (default) or loss")
    search.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                        help="stop unpromising trials early (default: median)")
    search.add_argument("--storage", default=None,
                        help="Optuna storage: a file (journal; *.db = SQLite) or URL sqlite:///, postgresql://, "
                        "mysql://, redis:// (default: OUT/study.journal)")
    search.add_argument("--study-name", default=None, help="study name (default: <task>-<opt>)")
    search.add_argument("--workers", type=int_at_least(1), default=1,
                        help="local worker processes sharing the study (default: 1)")
    search.add_argument("--val-fraction", type=float, default=None,
                        help="share of the training data held out for validation (default: the task's own "
                        "validation split; 0.2 for a task without one)")
    search.add_argument("--confirm-seeds", type=int_at_least(2), default=5,
                        help="seeds per configuration in the default-vs-tuned confirmation (default: 5)")
    search.add_argument("--no-population", action="store_true",
                        help="train one trial at a time (default: up to 8 trials at once as one vectorized "
                        "population, for optimizers that allow it)")
    search.add_argument("--no-report", action="store_true",
                        help="search only: no confirmation runs, no report")
    search.set_defaults(func=run_search)


def _common(parser: argparse.ArgumentParser, default_task: str) -> None:
    parser.add_argument("--task", default=default_task,
                        help=f"digits, mnist1d, modular, logistic or a registered task (default: {default_task})")
    parser.add_argument("--opt", default="sgd", metavar="SPEC",
                        help="optimizer spec NAME[:KEY=VALUE,...] (default: sgd); fixed values are not searched")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the model and data order (default: 0)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/tune-...)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _error(message: str) -> int:
    print(f"sgdlab tune: error: {message}", file=sys.stderr)
    return 2


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")[:60] or "opt"


def _task_and_spec(args: argparse.Namespace, default_out: str):
    """The task and the optimizer spec, and the output directory (``--out`` or ``default_out``, a
    format string of ``task`` and ``opt``) created; names and the directory are checked before the
    (possibly slow) data set is built."""
    from sgdlab.cli.checks import output_dir
    from sgdlab.lab import specs as specs_module
    from sgdlab.lab import tasks as tasks_module

    if args.task not in tasks_module.TASKS:
        raise ValueError(f"unknown task {args.task!r}; valid tasks: {', '.join(tasks_module.task_names())}")
    unchecked = specs_module.parse_spec(args.opt, check=False)
    out = output_dir(args.out or default_out.format(task=args.task, opt=_slug(unchecked.text)))
    task = tasks_module.get_task(args.task)
    return task, specs_module.parse_spec(args.opt, task=task), out


# --- tune lr ----------------------------------------------------------------------------------------


class _Batches:
    """Mini-batches of the training set in a new random order on every pass (seeded)."""

    def __init__(self, x, y, batch_size: int, seed: int) -> None:
        import torch

        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        import torch

        n = len(self.x)
        if self.batch_size >= n:
            yield self.x, self.y
            return
        order = torch.randperm(n, generator=self.generator)
        for first in range(0, n - self.batch_size + 1, self.batch_size):  # full batches only
            index = order[first:first + self.batch_size]
            yield self.x[index], self.y[index]


def run_lr(args: argparse.Namespace) -> int:
    if not 0 <= args.smoothing < 1:
        return _error(f"--smoothing must be in [0, 1), got {args.smoothing}")
    if not args.end_lr > args.start_lr:
        return _error(f"--end-lr ({args.end_lr:g}) must be larger than --start-lr ({args.start_lr:g})")
    try:
        task, spec, out = _task_and_spec(args, "runs/tune-lr-{task}-{opt}")
    except ValueError as error:
        return _error(str(error))
    if not spec.schedule(task).constant:
        return _error(f"{spec.label}: the range test sweeps the learning rate itself; drop schedule= and warmup=")

    import json

    import torch
    from rich.console import Console

    from sgdlab.lab.specs import OptimizerSpec
    from sgdlab.lab.tune.lr_finder import RULES, lr_range_test

    console = Console()
    torch.manual_seed(args.seed)
    model = task.model()
    optimizer = spec.build(model.parameters(), task)
    batch_size = task.n_train if spec.full_batch else (args.batch_size or task.batch_size)
    data = _Batches(task.x_train, task.y_train, batch_size, args.seed)
    console.print(f"[bold]sgdlab tune lr[/bold] {task.name}: {task.description}\n"
                  f"{spec.text}, batch size {batch_size}, lr {args.start_lr:g} -> {args.end_lr:g} "
                  f"in {args.steps} steps")

    progress = None
    if not args.no_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("[bold]range test"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)
        bar = progress.add_task("sweep", total=args.steps, status="")
        update = lambda step, lr, loss: progress.update(  # noqa: E731
            bar, completed=step, status=f"lr {lr:.2e}  loss {loss:.4g}")
    try:
        if progress is not None:
            with progress:
                result = lr_range_test(model, optimizer, task.loss, data, args.start_lr, args.end_lr, args.steps,
                                       args.smoothing, rule=args.rule, progress=update)
        else:
            result = lr_range_test(model, optimizer, task.loss, data, args.start_lr, args.end_lr, args.steps,
                                   args.smoothing, rule=args.rule)
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/yellow]")
        return 130
    result.plot(str(out / "lr_range.png"), title=f"Learning-rate range test: {task.name} / {spec.text}")
    info = result.to_dict() | {"task": task.name, "opt": spec.text, "batch_size": batch_size, "seed": args.seed}
    (out / "lr_range.json").write_text(json.dumps(info, indent=2) + "\n")

    console.print(f"{len(result.lrs)} steps; {result.stop_reason}")
    if result.min_loss_lr is not None:
        console.print(f"lowest smoothed loss at lr {result.min_loss_lr:.3g}; steepest descent at "
                      + (f"lr {result.steepest_lr:.3g}" if result.steepest_lr else "- (no clear descent)"))
    if result.suggested_lr is not None and not result.found_minimum:
        console.print(f"[yellow]the loss was still falling at --end-lr {args.end_lr:g}[/yellow]: the suggestion is "
                      "a lower bound; rerun with a larger --end-lr to find where it turns up")
    if result.suggested_lr is None:
        console.print("[yellow]no suggestion[/yellow]: the loss did not decrease over the sweep; "
                      "widen --start-lr/--end-lr or add --steps")
    else:
        lr = float(f"{result.suggested_lr:.2g}")
        console.print(f"[bold]suggested lr {lr:g}[/bold] ({args.rule}: {RULES[args.rule]})")
        suggested = OptimizerSpec(spec.name, {**spec.hyperparameters, "lr": lr})
        console.print(f"  --opt {suggested.text}", markup=False, highlight=False)
    console.print(f"plot: {out / 'lr_range.png'}  (data: lr_range.json)")
    return 0


# --- tune search ----------------------------------------------------------------------------------


def run_search(args: argparse.Namespace) -> int:
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        return _error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.storage and "://" not in args.storage:
        from sgdlab.cli.checks import output_file

        output_file(args.storage, "--storage")
    try:
        task, spec, out = _task_and_spec(args, "runs/tune-{task}-{opt}")
    except ValueError as error:
        return _error(str(error))

    from rich.console import Console

    from sgdlab.lab.tune.search import SearchSetup, open_storage, search, storage_description, write_search_json
    from sgdlab.lab.tune.space import SpaceError

    console = Console()
    n_trials = args.trials if args.trials is not None else (None if args.timeout else 20)
    try:
        setup = SearchSetup(
            task=task, spec=spec, space_text=args.space, study_name=args.study_name or f"{task.name}-{spec.text}",
            out=out, storage=args.storage, n_trials=n_trials, timeout=args.timeout, epochs=args.epochs,
            metric=args.metric, pruner=args.pruner, seed=args.seed, val_fraction=args.val_fraction,
            population=not args.no_population,
        )
        space = setup.space()
        open_storage(args.storage, out)  # an unreachable database fails here, not after the header
    except (SpaceError, ValueError) as error:
        return _error(str(error))

    budget = " and ".join(x for x in (f"{n_trials} trials" if n_trials else "", f"{args.timeout:g} s" if args.timeout
                                      else "") if x)
    console.print(f"[bold]sgdlab tune search[/bold] {task.name}: {task.description}\n"
                  f"{spec.text}: {budget}, {setup.trial_epochs} epochs per trial, {args.workers} "
                  f"worker{'s' if args.workers > 1 else ''}, study {setup.study_name!r} in "
                  f"{storage_description(args.storage, out)}")
    for line in space.describe():
        console.print(f"  {line}", highlight=False)
    try:
        result = search(setup, workers=args.workers, progress=not args.no_progress, console=console)
    except ValueError as error:  # StorageError, a study of another search
        return _error(str(error))
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/yellow]: rerun the same command to resume the study")
        return 130
    write_search_json(result, out / "search.json")
    c = result.counts
    if result.recovered:
        console.print(f"resumed: trials {result.recovered} of a stopped worker were re-queued")
    console.print(f"{c['done']} trials in the study ({c['complete']} complete, {c['pruned']} pruned, "
                  f"{c['diverged']} diverged, {c['failed']} failed); this run {result.elapsed:.1f} s")
    if c["complete"] == 0:
        return _error("no trial completed, so there is no best configuration; see search.json")
    best_spec, best_batch, best_trial = result.best()
    console.print(f"best trial {best_trial.number}: validation {setup.metric} {best_trial.value:.4g} with "
                  f"{best_spec.text}" + ("" if spec.full_batch else f", batch size {best_batch}"), highlight=False)
    if args.no_report:
        return 0

    from sgdlab.lab.tune.report import confirm, print_tune_report, write_tune_report

    console.print(f"confirmation: default vs tuned, {args.confirm_seeds} fresh seeds each, on the test set")
    try:
        report = confirm(result, seeds=args.confirm_seeds, workers=args.workers, progress=not args.no_progress,
                         console=console)
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/yellow]: rerun the same command to finish the confirmation runs")
        return 130
    print_tune_report(report, console)
    paths = write_tune_report(report, out)
    console.print(f"report: {paths['html']} (also report.md, tune.json, search.json, plots/)")
    return 0
