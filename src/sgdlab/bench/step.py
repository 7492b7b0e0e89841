"""Optimizer step time: sgdlab against torch.optim's three execution paths, on real model shapes.

An optimizer step reads and writes every parameter, gradient and state element once, so its
floor is memory bandwidth. Each case therefore also measures the machine's bandwidth in the same
run, two ways: a copy (``dst.copy_(src)``, one read and one write counted) and an in-place update
(``a.add_(b)``, two reads and one write: the access pattern of an optimizer step, which updates
in place). A copy also reads its destination before writing it (write-allocate), traffic it does
not count, so it understates what the memory system delivers; the roofline is the better of the
two, and every contender is reported as GB/s and as a percentage of it:

    roofline time = bytes an ideal step must move / max(copy, in-place bandwidth)

with, per parameter, SGD + momentum moving 5 words (read parameter, gradient, buffer; write
parameter, buffer) and Adam/AdamW 7 (plus the two moments' reads and writes). Compact state moves
fewer bytes, which is the only way to beat that floor.

Fairness on a noisy machine: all contenders share the same parameters and gradients, run in
interleaved rounds (a different order each round), and the reported time is the median over
rounds. The ratio to torch fused is paired: each round's time over torch fused's time in the same
round, then the median of those ratios, with their middle half (quartiles) as its spread, since
the memory's speed drifts between rounds more than it does within one. The first step (which
includes compiling, for sgdlab's compiled path) is reported apart.

A busy machine makes the per-round ratios scatter. When their middle half spans more than
:data:`NOISE_LIMIT` of their median (and there are at least three rounds to tell), the row is marked
``noisy`` and shown as "noisy (IQR a-b)" instead of a ratio: such a number says more about the
other processes than about the optimizers.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch

from sgdlab.bench import shapes as shape_lists
from sgdlab.optim.quantized import BLOCK

# name -> (description, shapes factory)
CASES: dict[str, tuple[str, Callable[[], list[tuple[int, ...]]]]] = {
    "resnet50": ("ResNet-50: 161 tensors, 25.6M parameters", shape_lists.resnet50_shapes),
    "gpt2-small": ("GPT-2 small: 148 tensors, 124.4M parameters", shape_lists.gpt2_small_shapes),
    "8x4M": ("8 tensors of 4M parameters", shape_lists.uniform_shapes),
    "gpt2-small-hidden": ("GPT-2 small's hidden matrices (Muon's): 48 tensors of 4 shapes, 84.9M "
                          "parameters", shape_lists.gpt2_small_hidden_shapes),
}
# Small versions for --quick (seconds, no compilation: every group stays below the compile size).
QUICK_CASES: dict[str, tuple[str, Callable[[], list[tuple[int, ...]]]]] = {
    "resnet50/64": (
        "ResNet-50 shapes, 1/64 of the channels' width product",
        lambda: [tuple(max(1, s // 8) if i < 2 else s for i, s in enumerate(shape))
                 for shape in shape_lists.resnet50_shapes(num_classes=16)],
    ),
    "8x16k": ("8 tensors of 16k parameters", lambda: shape_lists.uniform_shapes(8, 16384)),
    "gpt2-hidden/4": ("GPT-2 small's hidden matrices at 1/4 of the width (192)",
                      lambda: shape_lists.gpt2_small_hidden_shapes(width=192)),
}

# name -> (torch.optim class name, hyperparameters, words moved per parameter by an ideal step
# with float32 state, state words per parameter)
OPTIMIZERS: dict[str, tuple[str, dict[str, Any], int]] = {
    "sgd-momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}, 5),
    "sgd-nesterov-wd": (
        "SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, 5
    ),
    "adam": ("Adam", {"lr": 1e-3}, 7),
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 0.01}, 7),
    # Compute-bound (Newton-Schulz: 5 x 3 matrix products per matrix), so its "roofline" is only
    # the memory floor; torch.optim.Muon has one path (a for-loop), the reference of its ratio.
    "muon": ("Muon", {"lr": 0.02}, 5),
}
# Run when none are named (Muon is asked for by name: its steps cost seconds on a CPU).
DEFAULT_OPTIMIZERS = ("sgd-momentum", "sgd-nesterov-wd", "adam", "adamw")
# Optimizers that take only some contenders, and only 2-D parameters (each case's matrices).
ONLY_CONTENDERS = {"muon": ("sgdlab", "torch for-loop")}
MATRICES_ONLY = ("muon",)

# The widest spread of the per-round ratios, (third quartile - first quartile) / median, at which a
# ratio is still shown: beyond it, the middle half of the rounds cannot tell 1x from 1.5x. On a shared
# 2-core machine at load average 10-13, full-size runs (8x4M, 7 rounds) spread 0.05-0.52 (median
# 0.19, 1 ratio in 20 above 0.5), --quick runs (3 rounds of tiny steps) 0.01 to over 1000 (median
# 0.6-8.7 per run, 60-85% of the ratios above 0.5).
NOISE_LIMIT = 0.5
MIN_ROUNDS_FOR_NOISE = 3

CONTENDERS = (
    "sgdlab",
    "sgdlab bf16 state",
    "sgdlab 8-bit state",
    "torch for-loop",
    "torch foreach",
    "torch fused",
)


@dataclass
class Row:
    case: str
    optimizer: str
    contender: str
    ms_per_step: float
    first_step_s: float
    gb_per_s: float
    roofline_pct: float
    state_bytes_per_param: float
    # Median over rounds of (this contender's time / torch fused's time in the same round), and
    # the quartiles of those per-round ratios (torch's only path where it has no fused one:
    # ``reference``).
    ratio_to_torch_fused: float | None = None
    ratio_quartiles: tuple[float, float] | None = None
    # True when the per-round ratios scatter too much to trust their median (see NOISE_LIMIT).
    noisy: bool = False
    copy_gb_per_s: float = 0.0  # median of the case's copies so far
    update_gb_per_s: float = 0.0  # median of the case's in-place updates (a += b) so far
    roofline_gb_per_s: float = 0.0  # the better of the two
    samples_ms: list[float] = field(default_factory=list)
    reference: str = "torch fused"


@dataclass
class CaseInfo:
    case: str
    description: str
    tensors: int
    parameters: int
    copy_gb_per_s: float
    update_gb_per_s: float = 0.0
    roofline_gb_per_s: float = 0.0


@dataclass
class BenchResult:
    machine: dict[str, Any]
    settings: dict[str, Any]
    cases: list[CaseInfo]
    rows: list[Row]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def rows_for(self, case: str, optimizer: str) -> dict[str, Row]:
        return {r.contender: r for r in self.rows if r.case == case and r.optimizer == optimizer}


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                for line in cpuinfo:
                    if line.startswith("model name"):
                        info["cpu"] = line.split(":", 1)[1].strip()
                        break
        except OSError:
            info["cpu"] = platform.processor()
        info["logical_cpus"] = __import__("os").cpu_count()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, numel: int, repeats: int = 7) -> float:
    """Median GB/s of ``dst.copy_(src)`` (one read and one write of ``numel`` float32)."""
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times) / 1e9


def make_optimizer(contender: str, optimizer: str, params: list[torch.Tensor]):
    import sgdlab

    class_name, hyperparameters, _ = OPTIMIZERS[optimizer]
    if contender == "sgdlab":
        return getattr(sgdlab, class_name)(params, **hyperparameters)
    compact = {"sgdlab bf16 state": torch.bfloat16, "sgdlab 8-bit state": torch.uint8}
    if contender in compact:
        group = {"params": params, "state_dtype": compact[contender]}
        return getattr(sgdlab, class_name)([group], **hyperparameters)
    path = {"torch for-loop": {"foreach": False}, "torch foreach": {"foreach": True},
            "torch fused": {"fused": True}}[contender]
    if optimizer in ONLY_CONTENDERS:
        path = {}  # torch.optim.Muon takes no foreach/fused flags
    return getattr(torch.optim, class_name)(params, **hyperparameters, **path)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.nbytes
    return total


def ideal_bytes(optimizer: str, contender: str, params: list[torch.Tensor]) -> int:
    """Bytes an ideal step must move: parameter read + write, gradient read, state read + write."""
    _, _, words = OPTIMIZERS[optimizer]
    numel = sum(p.numel() for p in params)
    state_words = words - 3
    # 8-bit state: one byte per element plus a float32 scale per block.
    state_width = 2 if "bf16" in contender else 1 + 4 / BLOCK if "8-bit" in contender else 4
    return int(numel * (3 * 4 + state_words * state_width))


def run(
    cases: Iterable[str] | None = None,
    optimizers: Iterable[str] | None = None,
    contenders: Iterable[str] | None = None,
    *,
    device: str | torch.device | None = None,
    rounds: int | None = None,
    steps: int | None = None,
    quick: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time every contender on every (case, optimizer); see the module docstring.

    ``cases`` are names from :data:`CASES` (or :data:`QUICK_CASES`) or ``module:factory`` specs;
    ``device`` defaults to CUDA when present. Each of ``rounds`` rounds (default 7, with ``quick``
    3) times ``steps`` steps (default 2, with ``quick`` 1) of each contender, in a rotated order;
    the median per-step time is reported.
    """
    device = _device(device)
    table = QUICK_CASES if quick else CASES
    cases = list(cases or table)
    optimizers = list(optimizers or DEFAULT_OPTIMIZERS)
    contenders = list(contenders or CONTENDERS)
    rounds = rounds if rounds is not None else 3 if quick else 7
    steps = steps if steps is not None else 1 if quick else 2
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise ValueError(f"Invalid optimizer: {name!r} (choose from {', '.join(OPTIMIZERS)})")
    for name in contenders:
        if name not in CONTENDERS:
            raise ValueError(f"Invalid contender: {name!r} (choose from {', '.join(CONTENDERS)})")
    if rounds < 1 or steps < 1:
        raise ValueError(f"Invalid rounds/steps: rounds={rounds}, steps={steps} (expected >= 1)")
    resolved = []
    for case in cases:
        if case in CASES or case in QUICK_CASES:
            description, factory = {**CASES, **QUICK_CASES}[case]
            resolved.append((case, description, factory()))
        elif ":" in case:
            resolved.append((case, f"parameters of {case}", shape_lists.factory_shapes(case)))
        else:
            known = ", ".join([*CASES, *QUICK_CASES])
            raise ValueError(f"Invalid case: {case!r} (choose from {known}, or module:factory)")

    say = log or (lambda message: None)
    infos: list[CaseInfo] = []
    rows: list[Row] = []
    for case, description, shapes in resolved:
        generator = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=generator).to(device) for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(device) * 1e-3
        numel = sum(p.numel() for p in params)
        # Copy bandwidth is measured in every round too, between the contenders, so that the
        # roofline sees the same machine load as they do.
        copy_src = torch.rand(min(max(numel, 1 << 22), 1 << 25), device=device)
        copy_dst = torch.empty_like(copy_src)
        copy_samples: list[float] = [copy_bandwidth(device, copy_src.numel())]
        update_samples: list[float] = []
        say(f"{case}: {len(params)} tensors, {numel:,} parameters")
        all_params = params
        for optimizer in optimizers:
            params = all_params
            if optimizer in MATRICES_ONLY:
                params = [p for p in all_params if p.dim() == 2]
                if not params:
                    raise ValueError(f"Invalid case for {optimizer}: {case!r} has no 2-D tensors")
                if len(params) < len(all_params):
                    say(f"  {optimizer}: its {len(params)} 2-D tensors only")
            chosen = [c for c in contenders if c in ONLY_CONTENDERS.get(optimizer, contenders)]
            reference = "torch fused" if optimizer not in ONLY_CONTENDERS else "torch for-loop"
            if not chosen:
                say(f"  {optimizer}: none of the contenders asked for applies "
                    f"(it runs {', '.join(ONLY_CONTENDERS[optimizer])})")
                continue
            instances = {}
            first_step = {}
            for contender in chosen:
                instances[contender] = make_optimizer(contender, optimizer, params)
                _sync(device)
                start = time.perf_counter()
                with torch.no_grad():
                    instances[contender].step()
                _sync(device)
                first_step[contender] = time.perf_counter() - start
                with torch.no_grad():
                    instances[contender].step()  # warm: second-use compilation, caches
            samples: dict[str, list[float]] = {c: [] for c in chosen}
            for r in range(rounds):
                order = chosen[r % len(chosen):] + chosen[: r % len(chosen)]
                for contender in order:
                    opt = instances[contender]
                    _sync(device)
                    start = time.perf_counter()
                    with torch.no_grad():
                        for _ in range(steps):
                            opt.step()
                    _sync(device)
                    samples[contender].append((time.perf_counter() - start) / steps)
                _sync(device)
                start = time.perf_counter()
                copy_dst.copy_(copy_src)
                _sync(device)
                copy_samples.append(2 * copy_src.nbytes / (time.perf_counter() - start) / 1e9)
                start = time.perf_counter()
                copy_dst.add_(copy_src)
                _sync(device)
                update_samples.append(3 * copy_src.nbytes / (time.perf_counter() - start) / 1e9)
            copy_gb = statistics.median(copy_samples)
            update_gb = statistics.median(update_samples)
            bandwidth = max(copy_gb, update_gb)
            fused = samples.get(reference)
            for contender in chosen:
                seconds = statistics.median(samples[contender])
                ratios = [a / b for a, b in zip(samples[contender], fused)] if fused else None
                noisy = bool(ratios) and contender != reference and too_noisy(ratios)
                moved = ideal_bytes(optimizer, contender, params)
                roofline = moved / (bandwidth * 1e9)
                rows.append(Row(
                    case=case,
                    optimizer=optimizer,
                    contender=contender,
                    ms_per_step=seconds * 1e3,
                    first_step_s=first_step[contender],
                    gb_per_s=moved / seconds / 1e9,
                    roofline_pct=100 * roofline / seconds,
                    state_bytes_per_param=state_bytes(instances[contender]) / numel,
                    ratio_to_torch_fused=statistics.median(ratios) if ratios else None,
                    ratio_quartiles=quartiles(ratios) if ratios else None,
                    noisy=noisy,
                    copy_gb_per_s=copy_gb,
                    update_gb_per_s=update_gb,
                    roofline_gb_per_s=bandwidth,
                    samples_ms=[s * 1e3 for s in samples[contender]],
                    reference=reference,
                ))
                say(f"  {optimizer:16s} {contender:18s} {seconds * 1e3:9.2f} ms/step"
                    + (f"  {_ratio_text(rows[-1])} of {reference}" if ratios else ""))
            del instances
        copy_gb = statistics.median(copy_samples)
        update_gb = statistics.median(update_samples) if update_samples else 0.0
        infos.append(CaseInfo(case, description, len(params), numel, copy_gb, update_gb,
                              max(copy_gb, update_gb)))
        say(f"{case}: copy {copy_gb:.1f} GB/s, in-place update {update_gb:.1f} GB/s (medians "
            f"of {len(copy_samples)} and {len(update_samples)})")
    settings = {"rounds": rounds, "steps_per_round": steps, "quick": quick, "noise_limit": NOISE_LIMIT,
                "contenders": contenders, "optimizers": {k: OPTIMIZERS[k][:2] for k in optimizers}}
    return BenchResult(machine_info(device), settings, infos, rows)


def _device(name: str | torch.device | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"Invalid device: {str(name)!r} (expected cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Invalid device: {str(name)!r} (CUDA is not available here)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Invalid device: {str(name)!r} (expected cpu or cuda)")
    return device


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the values themselves when there are fewer than two)."""
    if len(values) < 2:
        return (values[0], values[0])
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return (low, high)


def relative_spread(values: list[float]) -> float:
    """(third quartile - first quartile) / median: how widely the middle half scatters."""
    low, high = quartiles(values)
    middle = statistics.median(values)
    return (high - low) / middle if middle > 0 else float("inf")


def too_noisy(ratios: list[float]) -> bool:
    """Whether per-round ratios scatter too much to trust their median (needs a few rounds to tell)."""
    return len(ratios) >= MIN_ROUNDS_FOR_NOISE and relative_spread(ratios) > NOISE_LIMIT


def noise_note(result: BenchResult) -> str | None:
    """One line explaining the rows marked noisy, or None when there are none."""
    noisy = [row for row in result.rows if row.noisy]
    if not noisy:
        return None
    compared = sum(1 for row in result.rows
                   if row.ratio_to_torch_fused is not None and row.contender != row.reference)
    limit = result.settings.get("noise_limit", NOISE_LIMIT)
    return (f"noisy: {len(noisy)} of {compared} ratios are not shown: their per-round values' middle half "
            f"(IQR) spans more than {limit:.0%} of the median, so the machine was too busy to compare; "
            "rerun on a quieter machine or with more --rounds")


def _ratio_text(row: Row) -> str:
    if row.ratio_to_torch_fused is None:
        return ""
    if row.noisy and row.ratio_quartiles is not None:
        low, high = row.ratio_quartiles
        return f"noisy (IQR {low:.2f}-{high:.2f})"
    text = f"{row.ratio_to_torch_fused:.3f}x"
    if row.ratio_quartiles is not None and row.contender != row.reference:
        low, high = row.ratio_quartiles
        text += f" ({low:.2f}-{high:.2f})"
    return text


def render(result: BenchResult, console: Any = None) -> None:
    """Print the results as rich tables, one per case."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]machine[/]: {result.machine.get('cpu') or result.machine.get('gpu')}, "
                  f"torch {result.machine['torch']}, {result.machine['threads']} threads")
    for info in result.cases:
        table = Table(title=f"{info.case}: {info.description} — roofline "
                            f"{info.roofline_gb_per_s:.1f} GB/s (copy {info.copy_gb_per_s:.1f}, "
                            f"in-place update {info.update_gb_per_s:.1f})")
        for column in ("optimizer", "contender", "ms/step", "GB/s", "% roofline",
                       "state B/param", "vs torch (middle half)", "first step s"):
            table.add_column(column, justify="left" if column in ("optimizer", "contender")
                             else "right")
        for row in (r for r in result.rows if r.case == info.case):
            ratio = row.ratio_to_torch_fused
            ratio_text = _ratio_text(row)
            if row.noisy:
                ratio_text = f"[yellow]{ratio_text}[/]"
            elif row.reference != "torch fused" and row.contender == row.reference:
                ratio_text += " (ref)"
            elif ratio is not None and row.contender.startswith("sgdlab"):
                good = ratio <= 1.05 if row.contender == "sgdlab" else ratio < 1.0
                ratio_text = f"[{'green' if good else 'red'}]{ratio_text}[/]"
            table.add_row(row.optimizer, row.contender, f"{row.ms_per_step:.2f}",
                          f"{row.gb_per_s:.1f}", f"{row.roofline_pct:.0f}%",
                          f"{row.state_bytes_per_param:.2f}", ratio_text,
                          f"{row.first_step_s:.2f}")
        console.print(table)
    if any(row.reference != "torch fused" for row in result.rows):
        console.print("muon: ratios to torch for-loop, torch.optim.Muon's only path", highlight=False)
    note = noise_note(result)
    if note is not None:
        console.print(f"[yellow]{note}[/]", highlight=False)


def markdown(result: BenchResult) -> str:
    """The results as a Markdown table (for the README)."""
    lines = ["| case | optimizer | contender | ms/step | GB/s | % roofline | state B/param "
             "| vs torch fused (middle half) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in result.rows:
        ratio = _ratio_text(row)
        if row.reference != "torch fused" and ratio:
            ratio += f" of {row.reference}"
        lines.append(f"| {row.case} | {row.optimizer} | {row.contender} | {row.ms_per_step:.1f} "
                     f"| {row.gb_per_s:.1f} | {row.roofline_pct:.0f}% "
                     f"| {row.state_bytes_per_param:.2f} | {ratio} |")
    note = noise_note(result)
    if note is not None:
        lines += ["", note]
    return "\n".join(lines)
