"""``sgdlab benchmark``: AlgoPerf's protocol on the lab's tasks: time to a validation target under
self-tuning and external tuning, performance profiles and scores, a report directory."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  sgdlab benchmark --quick                          digits and logistic, 3 optimizers: a few minutes
  sgdlab benchmark                                  the full suite: digits, logistic, mnist1d, modular
  sgdlab benchmark --task digits --task mnist1d --target mnist1d=0.9 --epochs mnist1d=30
  sgdlab benchmark --opt momentum --opt torch.NAdam:decoupled_weight_decay=True,schedule=cosine,warmup=0.05,label=nadamw

--target NAME=VALUE: a validation value of the task's metric (accuracy for the built-in tasks).
--epochs N (every workload) or NAME=N (one workload): the budget. A rerun with the same --out
skips finished runs and continues interrupted ones.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="AlgoPerf-style benchmark: time to a validation target, performance profiles and scores",
        description="Time each optimizer to a validation target on a suite of tasks under two rulesets "
        "(self-tuning: defaults; external tuning: quasirandom trials per study, median over studies), "
        "then draw performance profiles and score each optimizer by the profile's normalized area.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", action="append", default=None, metavar="NAME",
                        help="a workload's task, repeatable (default: digits, logistic, mnist1d, modular; "
                        "with --quick: digits, logistic)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=VALUE",
                        help="validation target of a task's metric (default: the suite's)")
    parser.add_argument("--epochs", action="append", default=[], metavar="N|NAME=N",
                        help="epoch budget, for every workload or for one (default: the suite's)")
    parser.add_argument("--opt", action="append", default=None, metavar="SPEC",
                        help="optimizer spec, repeatable (default: momentum, adamw, adamw with cosine schedule, "
                        "schedulefree_adamw; with --quick: momentum, adamw, schedulefree_adamw)")
    parser.add_argument("--studies", default=None, metavar="N",
                        help="studies per ruleset; the median of an odd number is one study's time (default: 3)")
    parser.add_argument("--trials", default=None, metavar="K",
                        help="external tuning: trials per study (default: 5; --quick 3)")
    parser.add_argument("--workers", default=None, metavar="N", help="parallel worker processes (default: 1)")
    parser.add_argument("--quick", action="store_true", help="a small suite that finishes in a few minutes")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="report directory (default: runs/benchmark-<timestamp>); reuse it to resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"sgdlab benchmark: error: {message}", file=sys.stderr)
    return 2


def _positive(text: str | None, option: str, default: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected a positive integer") from None
    if value < 1:
        raise ValueError(f"{option} {value}: expected a positive integer (a zero budget cannot reach a target)")
    return value


def _per_task(items: list[str], option: str, tasks: list[str], convert) -> tuple[dict[str, object], object]:
    """``NAME=VALUE`` entries by task, and a bare ``VALUE`` for every task (None if absent)."""
    by_task: dict[str, object] = {}
    every = None
    for item in items:
        name, equals, value = item.rpartition("=")
        if not equals:
            every = convert(item, option)
            continue
        if name not in tasks:
            raise ValueError(f"{option} {item!r}: {name!r} is not a workload of this benchmark "
                             f"({', '.join(tasks)})")
        by_task[name] = convert(value, f"{option} {name}=")
    return by_task, every


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected a number") from None


def run(args: argparse.Namespace) -> int:
    from sgdlab.lab import benchmark as bench
    from sgdlab.lab.specs import SpecError
    from sgdlab.lab.tasks import TASKS, task_names

    suite = bench.QUICK_SUITE if args.quick else bench.DEFAULT_SUITE
    tasks = list(dict.fromkeys(args.task or suite))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        return _error(f"unknown task {unknown[0]!r}; valid tasks: {', '.join(task_names())}")
    try:
        studies = _positive(args.studies, "--studies", 3)
        trials = _positive(args.trials, "--trials", 3 if args.quick else 5)
        workers = _positive(args.workers, "--workers", 1)
        targets, every_target = _per_task(args.target, "--target", tasks, _number)
        epochs, every_epochs = _per_task(args.epochs, "--epochs", tasks, lambda v, o: _positive(v, o, 0))
        if every_target is not None:
            raise ValueError("--target needs NAME=VALUE (targets differ between tasks)")
        specs = bench.load_specs(args.opt, args.quick)
        workloads = [bench.workload(t, targets.get(t), epochs.get(t, every_epochs), quick=args.quick) for t in tasks]
    except (ValueError, SpecError) as error:
        return _error(str(error))

    from sgdlab.cli.checks import output_dir

    import time
    from pathlib import Path

    out = output_dir(args.out or Path("runs") / f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}")

    from rich.console import Console

    from sgdlab.lab.benchmark_report import print_report, write_report

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(f"[bold]sgdlab benchmark[/bold]: {len(workloads)} workloads x {len(specs)} optimizers, "
                  f"{studies} studies, {trials} trials per external-tuning study; report in {out}")
    try:
        result = bench.run_benchmark(workloads, specs, studies=studies, trials=trials, out=out, workers=workers,
                                     progress=not args.no_progress, console=console,
                                     on_workload=lambda line: console.print(line, highlight=False))
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/yellow]: rerun with --out {out} to continue where it stopped")
        return 130
    print_report(result, console)
    paths = write_report(result, out)
    console.print(f"report: {paths['html']} (also report.md, benchmark.json, plots/performance_profiles.png)")
    return 0
