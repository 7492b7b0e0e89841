"""What a race leaves behind: terminal tables, ``summary.json``, ``report.md`` and a self-contained
``report.html`` (its PNG figures embedded as base64, so the one file can be mailed or archived).

    result = run_race(task, specs, seeds=3, out="runs/my-race")
    report = build_report(result)          # summaries + verdict
    print_report(report)                   # rich tables in the terminal
    write_report(report, "runs/my-race")   # summary.json, report.md, report.html, plots/*.png
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import time
from pathlib import Path
from typing import Any

from sgdlab.lab import plots
from sgdlab.lab.stats import Estimate, Finding, OptimizerSummary, summarize, verdict


@dataclasses.dataclass
class Report:
    result: Any  # RaceResult
    summaries: dict[str, OptimizerSummary]
    findings: list[Finding]
    target_loss: float | None
    tuning: list[Any] | None = None  # sgdlab.lab.equal_budget.Tuned, for compare --tune

    @property
    def task(self) -> Any:
        return self.result.task


def build_report(result: Any, target_loss: float | None = None, tuning: list[Any] | None = None) -> Report:
    """Summaries and verdict; with ``tuning`` (``compare --tune``), the verdict is asked of the
    untuned optimizers, then of the tuned ones, with what tuning bought each."""
    target = result.task.target_loss if target_loss is None else target_loss
    summaries = summarize(result, target)
    metric, higher = result.task.metric, result.task.higher_is_better
    if not tuning:
        return Report(result, summaries, verdict(summaries, metric, higher, target), target)
    from sgdlab.lab.equal_budget import tuning_findings

    tuned_labels = {t.spec.label for t in tuning}
    untuned = {label: s for label, s in summaries.items() if label not in tuned_labels}
    findings = verdict(untuned, metric, higher, target) + tuning_findings(summaries, tuning, metric, higher, target)
    return Report(result, summaries, findings, target, tuning)


def tuning_section(report: Report) -> tuple[str, list[str], list[list[str]]] | None:
    """The equal-budget tuning table (``compare --tune``): caption, header, rows."""
    if not report.tuning:
        return None
    from sgdlab.lab.equal_budget import TUNING_SEED, tuning_rows

    header, rows = tuning_rows(report.tuning, _metric_is_fraction(report))
    cost = sum(t.cpu_seconds for t in report.tuning)
    caption = (f"Equal budget: {report.tuning[0].trials} trials per optimizer (Optuna TPE, no pruning, seed "
               f"{TUNING_SEED}) over each optimizer's own search space (learning rate and schedule; momentum, "
               f"betas, weight decay where it has them), judged on the validation split; the tuned "
               f"configurations then race on the seeds above, on the test set. Tuning cost: {cost:.1f} "
               f"CPU-seconds in all (trials run one after another in this process).")
    return caption, header, rows


def references_section(report: Report) -> tuple[str, list[str], list[list[str]]] | None:
    """Published test values of the task's metric beside the best of this race (e.g. MNIST-1D)."""
    refs = report.task.references
    if not refs:
        return None
    pct = _metric_is_fraction(report)
    show = (lambda v: f"{v * 100:.0f}%") if pct else (lambda v: f"{v:.4g}")  # noqa: E731
    best = max((s for s in report.summaries.values() if s.final_metric.n),
               key=lambda s: s.final_metric.mean * (1 if report.task.higher_is_better else -1), default=None)
    rows = [[f"{name} (published)", show(value)] for name, value in refs.items()]
    if best is not None:
        rows.append([f"this race, best: {best.label}", best.final_metric.format(3, pct)])
    caption = ("Published test values for comparable models, beside this race's best. For MNIST-1D: Greydanus "
               "(2020), Table 1, 4000 training examples; the lab trains its 1-D CNN on 80% of them (the rest is "
               "the validation split), so its row compares with the CNN's.")
    return caption, ["model", f"test {report.task.metric}"], rows


# --- tables (shared by terminal, Markdown and HTML) -------------------------------------------------


def _metric_is_fraction(report: Report) -> bool:
    return report.task.metric in ("accuracy",)


def results_rows(report: Report, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """The results table; ``compact`` (the terminal) leaves out the best metric and the step count."""
    metric = report.task.metric.replace("accuracy", "acc" if compact else "accuracy")
    pct = _metric_is_fraction(report)
    target = report.target_loss
    reach = f"{target:.3g}" if target is not None else "target"
    header = ["optimizer", f"test {metric}", f"best test {metric}", "train loss", "test loss", "gap",
              f"epochs to {reach}", f"seconds to {reach}", "steps", "diverged"]
    rows = []
    for s in report.summaries.values():
        note = ""
        if target is not None and s.reached < s.runs:
            note = f" ({s.reached}/{s.runs} seeds)" if s.reached else "never"
        rows.append([
            s.label,
            s.final_metric.format(3, pct),
            s.best_metric.format(3, pct),
            s.final_train_loss.format(3),
            s.final_test_loss.format(3),
            s.gap.format(2),
            (s.epochs_to_target.format(3) + note) if s.reached else (note or "-"),
            s.time_to_target.format(2) if s.reached else "-",
            f"{s.steps.mean:.0f}" if s.steps.n else "-",
            f"{s.diverged + s.failed}/{s.runs}",
        ])
    if compact:
        keep = [0, 1, 3, 4, 5, 6, 7, 9]
        header = [header[i] for i in keep]
        header[-1] = "div."
        rows = [[row[i] for i in keep] for row in rows]
    return header, rows


def runs_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    metric = report.task.metric
    header = ["run", "optimizer", "seed", "status", "epochs", "steps", "time (s)", "train loss",
              f"test {metric}"]
    rows = []
    for run in report.result.runs:
        final = run.final
        rows.append([
            run.run_id or "-", run.optimizer, str(run.seed), run.status + (f": {run.error}" if run.error else ""),
            _num(final.get("epoch")), _num(final.get("step")), _num(final.get("time"), 3),
            _num(final.get("train_loss"), 4), _num(final.get(f"test_{metric}"), 4),
        ])
    return header, rows


def _num(value: Any, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _caption(report: Report) -> str:
    r = report.result
    seeds = len(r.seeds)
    return (f"{r.task.name}: {r.task.description}. Budget {r.budget.describe()}, batch size {r.batch_size} "
            f"(gd: the whole training set), {seeds} seed{'s' if seeds != 1 else ''} per optimizer; "
            f"mean ± 95% confidence interval (Student t) over seeds.")


# --- terminal -------------------------------------------------------------------------------------


def print_report(report: Report, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    header, rows = results_rows(report, compact=True)
    table = Table(title=f"sgdlab compare — {report.task.name}", caption=_caption(report), caption_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if report.findings:
        findings = Table(title="Verdict", show_lines=True)
        findings.add_column("question", style="bold", ratio=2)
        findings.add_column("evidence", ratio=4)
        findings.add_column("answer", ratio=3)
        for f in report.findings:
            findings.add_row(f.question, f.evidence, f.answer)
        console.print(findings)
    for section, title in ((tuning_section(report), "Tuning (equal budget)"),
                           (references_section(report), "Published numbers")):
        if section is not None:
            caption, head, body = section
            extra = Table(title=title, caption=caption, caption_justify="left")
            for i, name in enumerate(head):
                extra.add_column(name, justify="left" if i in (0, len(head) - 1) else "right")
            for row in body:
                extra.add_row(*row)
            console.print(extra)
    failed = [run for run in report.result.runs if run.status == "failed"]
    for run in failed:
        console.print(f"[red]run {run.optimizer} seed {run.seed} failed: {run.error}")


# --- files -----------------------------------------------------------------------------------------


def summary_dict(report: Report) -> dict[str, Any]:
    r = report.result
    return {
        "task": r.task.name,
        "description": r.task.description,
        "metric": r.task.metric,
        "higher_is_better": r.task.higher_is_better,
        "target_train_loss": report.target_loss,
        "optimum_train_loss": r.task.optimum_loss,
        "budget": dataclasses.asdict(r.budget),
        "batch_size": r.batch_size,
        "seeds": r.seeds,
        "elapsed_seconds": round(r.elapsed, 3),
        "optimizers": {label: s.to_dict() | {"spec": spec.to_dict(), "resolved": _jsonable(spec.resolved(r.task))}
                       for (label, s), spec in zip(report.summaries.items(), r.specs)},
        "verdict": [f.to_dict() for f in report.findings],
        "tuning": [t.to_dict() for t in report.tuning] if report.tuning else None,
        "references": r.task.references or None,
        "runs": [{"run": run.run_id, "optimizer": run.optimizer, "seed": run.seed, "status": run.status,
                  "error": run.error, "final": run.final} for run in r.runs],
    }


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)) for k, v in values.items()}


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    escape = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
table.verdict td{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.caption{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}
"""


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    """Write summary.json, report.md, report.html and plots/*.png into ``out``; return their paths."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    r = report.result
    figures = {
        "learning_curves.png": plots.learning_curves(r, report.target_loss),
        "final_metrics.png": plots.final_metrics(r, report.summaries),
    }
    for name, png in figures.items():
        (out / "plots" / name).write_bytes(png)

    summary = summary_dict(report)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")

    header, rows = results_rows(report)
    run_header, run_rows = runs_rows(report)
    verdict_rows = [[f.question, f.evidence, f.answer] for f in report.findings]
    specs = [[s.label, s.text, ", ".join(f"{k}={v!r}" for k, v in s.resolved(r.task).items()) or "-",
              "yes" if s.full_batch else "no"] for s in r.specs]
    spec_header = ["optimizer", "spec", "hyperparameters used", "full batch"]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    extra_md: list[str] = []
    extra_html = ""
    for section, title in ((tuning_section(report), "Tuning (equal budget)"),
                           (references_section(report), "Published numbers")):
        if section is not None:
            caption, head, body = section
            extra_md += [f"## {title}", "", caption, "", _md_table(head, body), ""]
            extra_html += (f"<h2>{html.escape(title)}</h2><p class=\"caption\">{html.escape(caption)}</p>"
                           f"{_html_table(head, body)}\n")

    md = [f"# sgdlab compare: {r.task.name}", "", f"_{stamp}_", "", _caption(report), "",
          "## Results", "", _md_table(header, rows), "",
          "## Verdict", "", _md_table(["question", "evidence", "answer"], verdict_rows) if verdict_rows else "-", "",
          *extra_md,
          "## Learning curves", "", "![learning curves](plots/learning_curves.png)", "",
          "## Final metrics", "", "![final metrics](plots/final_metrics.png)", "",
          "## Optimizers", "", _md_table(spec_header, specs), "",
          "## Runs", "", _md_table(run_header, run_rows), "",
          "Every evaluation is in `runs.jsonl`; the numbers above are in `summary.json`.", ""]
    (out / "report.md").write_text("\n".join(md))

    def img(name: str, alt: str) -> str:
        return _png_img(figures[name], alt)

    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sgdlab compare: {html.escape(r.task.name)}</title>
<style>{_CSS}</style></head><body>
<h1>sgdlab compare: {html.escape(r.task.name)}</h1>
<p class="caption">{html.escape(stamp)} · {html.escape(_caption(report))}</p>
<h2>Results</h2>{_html_table(header, rows)}
<h2>Verdict</h2>{_html_table(["question", "evidence", "answer"], verdict_rows).replace("<table>", '<table class="verdict">')}
{extra_html}<h2>Learning curves</h2>{img("learning_curves.png", "learning curves")}
<h2>Final metrics</h2>{img("final_metrics.png", "final metrics")}
<h2>Optimizers</h2>{_html_table(spec_header, specs)}
<h2>Runs</h2>{_html_table(run_header, run_rows)}
<p class="caption">Every evaluation is in <code>runs.jsonl</code>; the numbers above are in
<code>summary.json</code>.</p>
</body></html>
"""
    (out / "report.html").write_text(page)
    return {"summary": out / "summary.json", "markdown": out / "report.md", "html": out / "report.html",
            "plots": out / "plots"}


def _png_img(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded, so report.html is one self-contained file."""
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _json_default(value: Any) -> Any:
    """json.dumps fallback: estimates as dicts, NaN/inf as null, anything else as its repr."""
    if isinstance(value, Estimate):
        return value.to_dict()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return repr(value)
