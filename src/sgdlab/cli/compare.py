"""``sgdlab compare``: race optimizers on a task over several seeds; print the results and a verdict,
write a report directory. With no arguments, the default race (see ``DEFAULT_TASK``)."""

from __future__ import annotations

import argparse
import os
import sys

from sgdlab.cli.checks import positive_float, positive_int

DEFAULT_TASK = "mnist1d"
DEFAULT_EPOCHS = None  # the task's own default budget

EXAMPLES = """\
examples:
  sgdlab compare                                  the default race (6 optimizers x 3 seeds on mnist1d)
  sgdlab compare --task digits --seeds 5
  sgdlab compare --task modular --opt adam --opt adamw:weight_decay=1.0 --epochs 100
  sgdlab compare --opt sgd:lr=0.1 --opt momentum:lr=0.01,label=heavy-ball --opt torch.RMSprop:lr=1e-3
  sgdlab compare --opt adamw --opt adamw:state=8bit,label=adamw-8bit   compact (8-bit) optimizer state
  sgdlab compare --opt sgd:lr=0.1,momentum=0.9,schedule=cosine,warmup=0.05   a cosine schedule with warmup
  sgdlab compare --task digits --opt momentum --opt adamw --tune 10    equal budget: 10 tuning trials each
  sgdlab compare --list                           tasks and optimizer names
  sgdlab compare --opt sgd:lr=0.05 --opt sgd:lr=0.1 --opt sgd:lr=0.2 --seeds 1   an lr sweep, one population

A rerun with the same --out skips finished runs and continues interrupted ones.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="race optimizers on a task (seeds, confidence intervals, plots, report)",
        description="Race optimizers on a built-in task over several seeds: learning curves, final "
        "metrics with 95% confidence intervals, a verdict and a report directory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", default=DEFAULT_TASK, metavar="NAME",
                        help=f"digits, mnist1d, modular, logistic or a registered task (default: {DEFAULT_TASK})")
    parser.add_argument("--opt", action="append", metavar="SPEC", default=None,
                        help="optimizer spec NAME[:KEY=VALUE,...], repeatable, e.g. sgd:lr=0.1,momentum=0.9 or "
                        "torch.RMSprop:lr=1e-3 (default: gd, sgd, momentum, nesterov, adam, adamw)")
    parser.add_argument("--seeds", type=positive_int, default=3, metavar="N", help="seeds per optimizer (default: 3)")
    parser.add_argument("--epochs", type=positive_int, default=None, metavar="N", help="epochs per run (default: the task's)")
    parser.add_argument("--steps", type=positive_int, default=None, metavar="N", help="stop each run after this many steps")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="stop each run after this many seconds of training")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N", help="mini-batch size (default: the task's)")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="parallel worker processes (default: the number of usable cores)")
    parser.add_argument("--no-population", action="store_true",
                        help="train every run on its own (default: the seeds of an optimizer, and specs that differ "
                        "only in lr, train as one vectorized population)")
    parser.add_argument("--cluster", default=None, metavar="ADDRESS",
                        help="run on a Dask distributed cluster (tcp://host:8786; local:N starts N local workers); "
                        "--out must be on storage every worker sees")
    parser.add_argument("--target-loss", type=float, default=None, metavar="X",
                        help="train loss whose epochs/time to reach are reported (default: the task's)")
    parser.add_argument("--tune", type=positive_int, default=None, metavar="N",
                        help="equal budget: first tune every optimizer with N Optuna trials over its own search "
                        "space (lr and schedule; momentum, betas, weight decay where it has them), judged on the "
                        "validation split; then race each tuned beside its untuned self on fresh seeds")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="report directory (default: runs/compare-<task>-<timestamp>); reuse it to resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="list tasks and optimizers, then exit")
    parser.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"sgdlab compare: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from sgdlab.lab import specs as specs_module
    from sgdlab.lab import tasks as tasks_module

    if args.list:
        return _list(specs_module, tasks_module)
    if args.task not in tasks_module.TASKS:
        return _error(f"unknown task {args.task!r}; valid tasks: {', '.join(tasks_module.task_names())}")
    try:  # names and values first, before the (possibly slow) data set is built
        specs_module.parse_specs(args.opt or [])
    except specs_module.SpecError as error:
        return _error(str(error))
    from sgdlab.cli.checks import output_dir
    from sgdlab.lab.runner import default_out

    out = str(output_dir(args.out or default_out(args.task)))

    import threading

    from rich.console import Console

    from sgdlab.lab.runner import default_workers, run_race

    # The report's imports (SciPy's statistics, matplotlib: seconds) load while the race trains,
    # in this process that mostly waits for its workers, instead of before it.
    preload = threading.Thread(target=__import__, args=("sgdlab.lab.report",), daemon=True)
    preload.start()

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)  # a log file or pipe: room for the tables
    task = tasks_module.get_task(args.task)
    try:
        chosen = (specs_module.parse_specs(args.opt, task=task) if args.opt else specs_module.default_specs())
        for spec in chosen:
            spec.check(task)
    except specs_module.SpecError as error:
        return _error(str(error))

    scheduled = [spec.label for spec in chosen if not spec.schedule(task).constant]
    if scheduled and args.time_budget is not None and args.epochs is None and args.steps is None:
        return _error(f"{scheduled[0]} has a learning-rate schedule, which needs --epochs or --steps "
                      "(a time budget alone does not say when a run ends)")
    if args.tune is not None and (args.steps is not None or args.time_budget is not None):
        return _error("--tune trains every trial for --epochs (default: the task's); drop --steps/--time-budget")

    workers = args.workers or default_workers()
    tuning = None
    if args.tune is not None:
        from pathlib import Path

        from sgdlab.lab.equal_budget import tune_each

        task = task.with_validation()
        console.print(f"[bold]sgdlab compare --tune {args.tune}[/bold]: {args.tune} trials per optimizer, "
                      f"judged on validation {task.metric} ({task.n_val} examples)")
        try:
            tuning = tune_each(task, chosen, args.tune, Path(out) / "tuning", epochs=args.epochs, workers=1,
                               progress=not args.no_progress, console=console)
        except KeyboardInterrupt:
            console.print(f"\n[yellow]interrupted[/yellow]: rerun with --out {out} to continue where it stopped")
            return 130
        chosen = chosen + [t.spec for t in tuning]
    cluster = None
    if args.cluster:
        from sgdlab.lab.cluster import connect

        try:
            cluster = connect(args.cluster)
        except (ImportError, OSError, ValueError) as error:
            return _error(f"--cluster {args.cluster}: {error}")
    console.print(
        f"[bold]sgdlab compare[/bold] {task.name}: {task.description}\n"
        f"{len(chosen)} optimizers x {args.seeds} seeds, "
        f"{f'cluster {args.cluster}' if cluster else f'{workers} worker' + ('s' if workers > 1 else '')}, "
        f"report in {out}"
    )
    try:
        result = run_race(
            task, chosen, seeds=args.seeds, epochs=args.epochs, steps=args.steps, time_budget=args.time_budget,
            batch_size=args.batch_size, workers=workers, out=out, progress=not args.no_progress, console=console,
            population=not args.no_population, cluster=cluster,
        )
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/yellow]: rerun with --out {out} to continue where it stopped")
        return 130
    finally:
        if cluster is not None:
            local = getattr(cluster, "cluster", None) if args.cluster.startswith("local:") else None
            cluster.close()
            if local is not None:
                local.close()
    preload.join()
    from sgdlab.lab.report import build_report, print_report, write_report

    report = build_report(result, args.target_loss, tuning=tuning)
    print_report(report, console)
    paths = write_report(report, out)
    console.print(f"{len(result.runs)} runs in {result.elapsed:.1f} s; report: {paths['html']} "
                  f"(also report.md, summary.json, runs.jsonl)")
    return 1 if all(run.status == "failed" for run in result.runs) else 0


def _list(specs_module, tasks_module) -> int:
    print("tasks:")
    for name in tasks_module.task_names():
        print(f"  {name}")
    print("optimizers (--opt NAME[:KEY=VALUE,...]):")
    for name, entry in specs_module.OPTIMIZERS.items():
        mark = "*" if name in specs_module.DEFAULT_RACE else " "
        print(f"  {mark} {name:12s} {entry.description}")
    print("  * in the default race; also torch.<Class> for any torch.optim class:")
    print("    " + ", ".join(specs_module.torch_optimizer_names()))
    return 0
