"""``sgdlab landscape``: watch optimizers move on 2-D test functions, or slice real networks' losses.

    sgdlab landscape                                   # Rosenbrock, four optimizers, PNG + GIF
    sgdlab landscape rosenbrock --opt sgd:lr=1e-3 --opt momentum:lr=1e-3 --opt adam:lr=0.05 \\
        --steps 500 --start -1.5,2
    sgdlab landscape "x**2 + 10*y**2" --opt sgd:lr=0.05 --noise 2
    sgdlab landscape least-squares --opt gd:lr=0.3 --opt sgd:lr=0.3 --batch-size 4
    sgdlab landscape --task digits --opt sgd --opt adam  # 1-D lines, 2-D slices, sharpness
"""

from __future__ import annotations

import argparse
import re
import sys

from sgdlab.cli.checks import seed_value

DEFAULT_OPTIMIZERS_2D = ["sgd:lr=1e-3", "momentum:lr=1e-3", "nesterov:lr=1e-3", "adam:lr=0.05"]
DEFAULT_OPTIMIZERS_NET = ["sgd", "adam"]

# Accept "-1.5,2" as a value (argparse would otherwise take it for an option).
_NUMBERS = re.compile(r"^-[\d.]+(e[-+]?\d+)?(,\s*-?[\d.]+(e[-+]?\d+)?)*$", re.IGNORECASE)


def _pair(text: str) -> tuple[float, float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers 'a,b', got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "landscape",
        help="optimizer paths on 2-D functions; loss slices and sharpness of networks",
        description=(
            "Run optimizers (the real sgdlab / torch.optim classes) on a 2-D test function and draw "
            "their paths over a log-scaled contour map with a loss-per-step panel (PNG + animated "
            "GIF), or with --task train a network with each optimizer and draw 1-D interpolations, "
            "2-D filter-normalized slices around each solution and its sharpness (top Hessian "
            "eigenvalue)."
        ),
        epilog="Functions: quadratic, ill-quadratic, ravine, rosenbrock, himmelblau, beale, "
        "rastrigin, saddle, monkey-saddle, least-squares, or an expression in x and y "
        "('x**2 + 10*y**2'; functions sin cos exp log sqrt abs tanh ...). Use --list for details.",
    )
    parser._negative_number_matcher = _NUMBERS  # noqa: SLF001 - see _NUMBERS
    parser.add_argument("function", nargs="?", default=None,
                        help="test function name or expression in x and y (default: rosenbrock)")
    parser.add_argument("--opt", action="append", metavar="SPEC", default=None,
                        help="optimizer spec, repeatable, e.g. sgd:lr=1e-3,momentum=0.9 or "
                        "torch.RMSprop:lr=0.01 (default: " + " ".join(DEFAULT_OPTIMIZERS_2D) + "; "
                        "with --task: sgd adam at the task's learning rates)")
    parser.add_argument("--list", action="store_true", help="list the functions and optimizers and exit")
    parser.add_argument("--out", default="runs/landscape", help="output folder (default: runs/landscape)")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed for noise, batches, init (default: 0)")

    two = parser.add_argument_group("2-D test functions")
    two.add_argument("--steps", type=int, default=500, help="optimizer steps (default: 500)")
    two.add_argument("--start", type=_pair, default=None, metavar="X,Y",
                     help="start point (default: the function's own)")
    two.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                     help="add SIGMA * N(0, I) to every gradient; the exact-gradient path is drawn "
                     "dashed for comparison (default: 0)")
    two.add_argument("--batch-size", type=int, default=None, metavar="B",
                     help="mini-batch size for the finite-sum function least-squares (64 points)")
    two.add_argument("--xlim", type=_pair, default=None, metavar="A,B", help="x range of the map")
    two.add_argument("--ylim", type=_pair, default=None, metavar="A,B", help="y range of the map")
    two.add_argument("--no-animation", action="store_true", help="write the PNG only")
    two.add_argument("--mp4", action="store_true", help="also write an MP4 (needs ffmpeg)")
    two.add_argument("--frames", type=int, default=100, help="animation frames (default: 100)")

    net = parser.add_argument_group("real networks (--task)")
    net.add_argument("--task", default=None, help="a compare-lab task, e.g. digits, mnist1d, logistic")
    net.add_argument("--epochs", type=int, default=None, help="training epochs (default: the task's)")
    net.add_argument("--resolution", type=int, default=21,
                     help="points per axis of each 2-D slice (default: 21)")
    net.add_argument("--span", type=float, default=1.0,
                     help="slice half-width in filter-normalized units (default: 1.0)")
    net.add_argument("--hessian-iters", type=int, default=50,
                     help="power-iteration steps for the top Hessian eigenvalue (default: 50)")
    parser.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"sgdlab landscape: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from sgdlab.cli.checks import output_dir
    from sgdlab.lab.specs import SpecError

    if args.list:
        return _list()
    if args.task is not None and args.function is not None:
        return _fail("give either a function or --task, not both")
    out = output_dir(args.out)
    try:
        if args.task is not None:
            from sgdlab.lab.tasks import UnknownTaskError

            try:
                return _run_network(args, out)
            except (UnknownTaskError, ValueError) as error:  # bad task name or settings
                return _fail(str(error))
        return _run_2d(args, out)
    except SpecError as error:
        return _fail(str(error))


def _list() -> int:
    from rich.console import Console
    from rich.table import Table

    from sgdlab.lab.landscape import FUNCTIONS
    from sgdlab.lab.specs import OPTIMIZERS
    from sgdlab.lab.tasks import task_names

    console = Console()
    table = Table(title="2-D functions")
    for column in ("name", "what (plotting window)", "start", "known minima"):
        table.add_column(column, no_wrap=not column.startswith("what"))
    for fn in FUNCTIONS.values():
        table.add_row(
            fn.name,
            f"{fn.description}\n[{fn.xlim[0]:g}, {fn.xlim[1]:g}] × [{fn.ylim[0]:g}, {fn.ylim[1]:g}]",
            f"({fn.start[0]:g}, {fn.start[1]:g})",
            "\n".join(f"({x:.4g}, {y:.4g})" for x, y in fn.minima) or "-",
        )
    table.add_row("least-squares", "finite sum over 64 points; --batch-size B for mini-batches",
                  "", "the LS solution")
    table.add_row("'x**2 + y**2'", "any expression in x and y\n[-3, 3] × [-3, 3]", "(-2.5, 2.5)", "-")
    console.print(table)
    optimizers = Table(title="optimizers (--opt NAME:key=value,...)")
    optimizers.add_column("name")
    optimizers.add_column("what")
    for entry in OPTIMIZERS.values():
        optimizers.add_row(entry.name, entry.description)
    optimizers.add_row("torch.<Class>", "any torch.optim class, e.g. torch.RMSprop")
    console.print(optimizers)
    console.print(f"tasks (--task): {', '.join(task_names())}")
    return 0


def _run_2d(args: argparse.Namespace, out) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from sgdlab.lab.landscape import UnknownFunctionError, explore
    from sgdlab.lab.landscape.plots import animate_paths
    from sgdlab.lab.specs import parse_specs

    console = Console()
    if args.steps < 1:
        return _fail(f"--steps must be >= 1, got {args.steps}")
    if args.frames < 2:
        return _fail(f"--frames must be >= 2, got {args.frames}")
    specs = parse_specs(args.opt or DEFAULT_OPTIMIZERS_2D)
    try:
        result = explore(
            args.function or "rosenbrock", specs, steps=args.steps, start=args.start,
            noise=args.noise, batch_size=args.batch_size, seed=args.seed,
            xlim=args.xlim, ylim=args.ylim,
        )
    except UnknownFunctionError as error:
        return _fail(str(error))
    except ValueError as error:  # a bad expression, start, noise or batch size
        return _fail(str(error))

    out.mkdir(parents=True, exist_ok=True)
    stem = _slug(result.function.name)
    png = out / f"{stem}.png"
    result.plot(png)
    written = [png]
    result.save(out / f"{stem}.npz")
    written.append(out / f"{stem}.npz")
    if not args.no_animation:
        targets = [out / f"{stem}.gif"] + ([out / f"{stem}.mp4"] if args.mp4 else [])
        for target in targets:
            if target.suffix == ".mp4":
                import shutil

                if shutil.which("ffmpeg") is None:
                    console.print("[yellow]ffmpeg not found: no MP4 written[/yellow]")
                    continue
            with Progress(console=console, transient=True) as progress:
                job = progress.add_task(f"animating {target.name}", total=None)
                animate_paths(result.function, result.trajectories, target, grid=None,
                              frames=args.frames,
                              progress=lambda done, total: progress.update(job, completed=done, total=total))
            written.append(target)

    fn = result.function
    x0, y0 = result.trajectories[0].path[0]
    table = Table(title=f"{fn.name}: {args.steps} steps from ({x0:g}, {y0:g})")
    for column in ("optimizer", "final (x, y)", "f(final)", "distance to nearest minimum", "status"):
        table.add_column(column, justify="right" if column.startswith(("f(", "dist")) else "left")
    for t in result.trajectories:
        distance = result.distance_to_minimum(t)
        table.add_row(
            t.label,
            f"({t.final[0]:.4g}, {t.final[1]:.4g})",
            f"{t.losses[-1]:.4g}",
            "-" if distance is None else f"{distance:.3g}",
            t.status,
        )
    console.print(table)
    for path in written:
        console.print(f"wrote {path}")
    return 0


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")
    return slug[:60] or "function"


def _run_network(args: argparse.Namespace, out) -> int:
    from sgdlab.lab.landscape.network import run_network_cli

    return run_network_cli(args, out, DEFAULT_OPTIMIZERS_NET)
