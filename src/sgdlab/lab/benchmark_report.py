"""What ``sgdlab benchmark`` leaves behind, in ``compare``'s style: terminal tables, ``benchmark.json``,
``report.md``, a self-contained ``report.html`` and ``plots/performance_profiles.png``."""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sgdlab.lab import plots
from sgdlab.lab.benchmark import MEASURES, R_MAX, RULESETS, BenchmarkResult, profile
from sgdlab.lab.report import _CSS, _html_table, _md_table, _png_img


def _time(value: float, measure: str) -> str:
    if not math.isfinite(value):
        return "inf"
    return f"{value:.0f}" if measure == "steps" else f"{value:.2f}"


def scores_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    header = ["optimizer"] + [f"{ruleset} score ({measure})" for ruleset in RULESETS for measure in MEASURES]
    scores = {(r, m): result.scores(r, m) for r in RULESETS for m in MEASURES}
    rows = [[label] + [f"{scores[(r, m)][label]:.3f}" for r in RULESETS for m in MEASURES]
            for label in result.optimizers]
    return header, rows


def workload_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    """Per workload and optimizer: median steps / seconds to the target under each ruleset, and how
    many studies reached it."""
    header = ["workload", "target", "optimizer", "self-tuning: steps", "seconds", "studies reaching",
              "external: steps", "seconds", "studies reaching"]
    rows = []
    for w in result.workloads:
        target = f"val {w.metric} {w.workload.target:g} in {w.workload.epochs} epochs"
        for label in result.optimizers:
            cells = [w.workload.task, target, label]
            for ruleset in RULESETS:
                times = w.times[ruleset][label]
                reached = sum(math.isfinite(t) for t in times["steps"])
                cells += [_time(w.median_time(ruleset, label, "steps"), "steps"),
                          _time(w.median_time(ruleset, label, "seconds"), "seconds"), f"{reached}/{len(times['steps'])}"]
            rows.append(cells)
    return header, rows


def trials_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    header = ["workload", "optimizer", "study", "fastest trial (external tuning)", "steps"]
    rows = []
    for w in result.workloads:
        for label in result.optimizers:
            times = w.times["external"][label]
            for study, (spec, steps) in enumerate(zip(times["trials"], times["steps"])):
                rows.append([w.workload.task, label, str(study), spec or "(no trial reached the target)",
                             _time(steps, "steps")])
    return header, rows


def references_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]] | None:
    if not result.references:
        return None
    header = ["task", "model", "test accuracy"]
    rows = []
    for task, refs in result.references.items():
        rows += [[task, f"{name} (Greydanus 2020)", f"{value * 100:.0f}%"] for name, value in refs.items()]
    return header, rows


def profile_plot(result: BenchmarkResult) -> bytes:
    """Performance profiles rho(tau) on [1, r_max], one panel per ruleset and measure."""
    figure = Figure(figsize=(11, 7.5))
    axes = figure.subplots(len(MEASURES), len(RULESETS), squeeze=False)
    taus = np.linspace(1.0, R_MAX, 301)
    palette = plots.colors(result.optimizers)
    for j, ruleset in enumerate(RULESETS):
        for i, measure in enumerate(MEASURES):
            ax = axes[i][j]
            ratios = result.ratios(ruleset, measure)
            scores = result.scores(ruleset, measure)
            for label in result.optimizers:
                ax.step(taus, profile(ratios[label], taus), where="post", color=palette[label], lw=2,
                        label=f"{label} (score {scores[label]:.2f})")
            ax.set_xlim(1.0, R_MAX)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel(f"tau (ratio to the fastest, in {measure})")
            ax.set_ylabel("fraction of workloads within tau")
            ax.set_title(f"{ruleset}, time in {measure}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"Performance profiles over {len(result.workloads)} workloads (AlgoPerf-style; score = "
                    f"normalized area up to r_max = {R_MAX:g})")
    figure.tight_layout()
    return plots._png(figure)


def _caption(result: BenchmarkResult) -> str:
    return (f"{len(result.workloads)} workloads x {len(result.optimizers)} optimizers; self-tuning: defaults, "
            f"{result.studies} studies (seeds); external tuning: {result.trials} quasirandom trials per study, "
            f"{result.studies} studies; a workload's time is the median over studies (inf: the target was "
            f"missed); scores are the normalized area under the performance profile up to r_max = {R_MAX:g} "
            f"(1 = fastest on every workload). Times are epoch-resolved; seconds are training seconds, one "
            f"thread per run. Ran in {result.elapsed:.0f} s.")


def summary_dict(result: BenchmarkResult) -> dict[str, Any]:
    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return {
        "r_max": R_MAX, "studies": result.studies, "trials": result.trials, "elapsed_seconds": round(result.elapsed, 2),
        "optimizers": [s.to_dict() for s in result.specs],
        "scores": {ruleset: {measure: result.scores(ruleset, measure) for measure in MEASURES} for ruleset in RULESETS},
        "workloads": [{
            "task": w.workload.task, "description": w.description, "metric": w.metric,
            "validation_target": w.workload.target, "epochs": w.workload.epochs, "runs": w.runs, "failed_runs": w.failed,
            "median_time": {ruleset: {label: {m: finite(w.median_time(ruleset, label, m)) for m in MEASURES}
                                      for label in result.optimizers} for ruleset in RULESETS},
            "per_study": {ruleset: {label: {m: [finite(x) for x in w.times[ruleset][label][m]] for m in MEASURES}
                                    | {"trial": w.times[ruleset][label]["trials"]} for label in result.optimizers}
                          for ruleset in RULESETS},
            "best_validation": w.best_val, "test_of_best_validation": w.test_at_best,
        } for w in result.workloads],
        "references": result.references or None,
    }


def print_report(result: BenchmarkResult, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for title, (header, rows), caption in (
        ("sgdlab benchmark: scores", scores_rows(result), _caption(result)),
        ("Time to target (median over studies)", workload_rows(result), None),
    ):
        table = Table(title=title, caption=caption, caption_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i < 3 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def write_report(result: BenchmarkResult, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    png = profile_plot(result)
    (out / "plots" / "performance_profiles.png").write_bytes(png)
    (out / "benchmark.json").write_text(json.dumps(summary_dict(result), indent=2, default=repr) + "\n")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sections = [("Scores", scores_rows(result)), ("Time to target", workload_rows(result)),
                ("Fastest trial of each study", trials_rows(result))]
    refs = references_rows(result)
    if refs is not None:  # runs stop at the target: the lab's full-budget numbers are compare's
        sections.append(("Published numbers (runs here stop at the target; `sgdlab compare` on the task shows "
                         "the lab's full-budget test accuracy beside them)", refs))
    md = ["# sgdlab benchmark", "", f"_{stamp}_", "", _caption(result), ""]
    body = ""
    for i, (title, (header, rows)) in enumerate(sections):
        md += [f"## {title}", "", _md_table(header, rows), ""]
        body += f"<h2>{html.escape(title)}</h2>{_html_table(header, rows)}\n"
        if i == 0:
            md += ["![performance profiles](plots/performance_profiles.png)", ""]
            body += _png_img(png, "performance profiles") + "\n"
    md += ["Every evaluation of every run is in `<workload>/<ruleset>/runs.jsonl`; the numbers above are in "
           "`benchmark.json`.", ""]
    (out / "report.md").write_text("\n".join(md))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sgdlab benchmark</title><style>{_CSS}</style></head><body>
<h1>sgdlab benchmark</h1>
<p class="caption">{html.escape(stamp)} · {html.escape(_caption(result))}</p>
{body}<p class="caption">Every evaluation of every run is in <code>&lt;workload&gt;/&lt;ruleset&gt;/runs.jsonl</code>;
the numbers above are in <code>benchmark.json</code>.</p>
</body></html>
"""
    (out / "report.html").write_text(page)
    return {"json": out / "benchmark.json", "markdown": out / "report.md", "html": out / "report.html",
            "plot": out / "plots" / "performance_profiles.png"}
