"""``sgdlab bench``: optimizer step time of sgdlab vs torch.optim on real model shapes."""

from __future__ import annotations

import argparse

from sgdlab.cli.checks import UsageError, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time optimizer steps: sgdlab vs torch.optim (for-loop, foreach, fused)",
        description=(
            "Time one optimizer step of sgdlab and of torch.optim's for-loop, foreach and fused "
            "paths on parameter lists shaped like real models, next to the machine's copy "
            "bandwidth measured in the same run. Contenders run in interleaved rounds; the "
            "median is reported. Uses CUDA when present."
        ),
    )
    parser.add_argument(
        "--case", action="append", metavar="NAME",
        help="resnet50, gpt2-small, 8x4M, gpt2-small-hidden (Muon's matrices), or module:factory "
             "(a function returning an nn.Module, tensors or shapes); repeatable (default: the "
             "built-in cases)",
    )
    parser.add_argument(
        "--optimizer", action="append", metavar="NAME",
        help="sgd-momentum, sgd-nesterov-wd, adam, adamw, muon (against torch.optim.Muon, on "
             "each case's 2-D tensors); repeatable (default: all but muon)",
    )
    parser.add_argument(
        "--contender", action="append", metavar="NAME",
        help="'sgdlab', 'sgdlab bf16 state', 'sgdlab 8-bit state', 'torch for-loop', 'torch foreach', 'torch fused'; "
             "repeatable (default: all)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="interleaved rounds (default: 7, with --quick 3)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="steps per round (default: 2, with --quick 1)")
    parser.add_argument("--threads", type=positive_int,
                        help="torch CPU threads for every contender (default: torch's default)")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes, 3 rounds of 1 step: a smoke run in seconds")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the results as a Markdown table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sgdlab import bench

    import sys

    # A pipe or a log file gets the full table width rather than 80 wrapped columns.
    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.json:
        from sgdlab.cli.checks import output_file

        output_file(args.json, "--json")
    try:
        result = bench.run(
            args.case, args.optimizer, args.contender, device=args.device, rounds=args.rounds,
            steps=args.steps, quick=args.quick, log=lambda line: console.print(line, highlight=False),
        )
    except ValueError as error:  # an unknown case, optimizer or contender
        raise UsageError(str(error)) from None
    bench.render(result, console)
    if args.markdown:
        print(bench.markdown(result))
    if args.json:
        with open(args.json, "w") as out:
            out.write(result.to_json())
        console.print(f"wrote {args.json}")
    return 0
