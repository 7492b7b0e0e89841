"""What tuning bought: the best configuration against the optimizer's default one, both re-run from
fresh seeds on the task's training set and scored on the test set (never seen by the search), with the
gain and its 95% confidence interval; plus the search's history, hyperparameter importances and
report.md / report.html in the compare lab's format.

    result = search(setup)                         # sgdlab.lab.tune.search
    report = confirm(result, seeds=5)              # default vs tuned, 5 seeds each
    print_tune_report(report)
    write_tune_report(report, setup.out)           # report.md, report.html, tune.json, plots/*.png
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sgdlab.lab import plots
from sgdlab.lab.report import _CSS, _html_table, _json_default, _md_table, _png_img
from sgdlab.lab.runner import RaceResult, run_race
from sgdlab.lab.specs import OptimizerSpec
from sgdlab.lab.stats import Estimate, OptimizerSummary, difference_ci, summarize_optimizer
from sgdlab.lab.tune.search import DEFAULT_TRIAL, SearchResult, storage_description, trials_table

DEFAULT_LABEL, TUNED_LABEL = "default", "tuned"


# --- the best configuration, ready to paste ---------------------------------------------------------


def _round(value: Any) -> Any:
    """Three significant digits; for values in (0.5, 1) -- momentum, betas -- three significant
    digits of ``1 - value``, so 0.99937 stays 0.99937 and does not become 0.999."""
    if isinstance(value, bool) or not isinstance(value, float):
        if isinstance(value, tuple):
            return tuple(_round(v) for v in value)
        return value
    if 0.5 < value < 1.0:
        return float(f"{1.0 - float(f'{1.0 - value:.3g}'):.12g}")
    return float(f"{value:.3g}")


def rounded_spec(spec: OptimizerSpec, label: str = "") -> OptimizerSpec:
    return OptimizerSpec(spec.name, {k: _round(v) for k, v in spec.hyperparameters.items()}, label)


def opt_string(spec: OptimizerSpec) -> str:
    """The ``--opt`` text (without a label)."""
    return OptimizerSpec(spec.name, spec.hyperparameters).text


def python_snippet(spec: OptimizerSpec, task: Any, batch_size: int | None) -> str:
    """Code that builds the same optimizer without sgdlab's lab."""
    factory = spec.entry.factory
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        module = "sgdlab" if module == "sgdlab.optim" else module
        head, call = f"import {module.split('.')[0]}\n", f"{module}.{attribute}"
    elif inspect.isclass(factory) and factory.__module__.startswith("torch.optim"):
        head, call = "import torch\n", f"torch.optim.{factory.__name__}"
    else:
        head, call = f"from {factory.__module__} import {factory.__qualname__}\n", factory.__qualname__
    resolved = spec.resolved(task)
    ordered = sorted(resolved, key=lambda k: (k != "lr", list(resolved).index(k)))  # lr first, as in torch.optim
    arguments = ", ".join(f"{k}={resolved[k]!r}" for k in ordered)
    lines = head + f"optimizer = {call}(model.parameters(), {arguments})"
    if batch_size is not None and not spec.full_batch:
        lines += f"\n# mini-batches of {batch_size} examples"
    return lines


# --- confirmation runs ------------------------------------------------------------------------------


@dataclasses.dataclass
class TuneReport:
    search: SearchResult
    race: RaceResult  # default and tuned runs together (for the compare lab's plots)
    default_spec: OptimizerSpec
    tuned_spec: OptimizerSpec
    default_batch: int
    tuned_batch: int
    summaries: dict[str, OptimizerSummary]
    gain: Estimate
    best_trial: Any

    @property
    def task(self) -> Any:
        return self.search.setup.task

    @property
    def metric(self) -> str:
        return self.search.setup.metric

    @property
    def significant(self) -> bool:
        return math.isfinite(self.gain.half_width) and abs(self.gain.mean) > self.gain.half_width


def confirm(
    result: SearchResult, seeds: int = 5, *, workers: int = 1, progress: bool = True, console: Any = None
) -> TuneReport:
    """Re-run the default and the best configuration over ``seeds`` fresh seeds (not the search's)
    on the full training set, with the same epochs per run as a trial; checkpointed under
    ``OUT/confirm`` so an interrupted report resumes."""
    setup = result.setup
    task = setup.task
    best_spec, best_batch, best_trial = result.best()
    tuned = rounded_spec(best_spec, TUNED_LABEL)  # exactly what the report tells the user to paste
    default = OptimizerSpec(setup.spec.name, setup.spec.hyperparameters, DEFAULT_LABEL)
    default_batch = task.batch_size
    seed_list = [setup.seed + 1000 + i for i in range(seeds)]
    started = time.perf_counter()
    races = []
    for spec, batch in ((default, default_batch), (tuned, best_batch)):
        races.append(run_race(
            task, [spec], seed_list, epochs=setup.trial_epochs, batch_size=batch, workers=workers,
            out=setup.out / "confirm" / spec.label, progress=progress, console=console,
        ))
    combined = RaceResult(
        task, [default, tuned], seed_list, races[0].budget, default_batch, races[0].runs + races[1].runs,
        setup.out / "confirm", time.perf_counter() - started,
    )
    summaries = {
        spec.label: summarize_optimizer(spec.label, spec.name, spec.family, race.runs, setup.metric,
                                        setup.higher_is_better, task.target_loss)
        for spec, race in zip((default, tuned), races)
    }
    gain = difference_ci(summaries[TUNED_LABEL].finals["final_metric"], summaries[DEFAULT_LABEL].finals["final_metric"])
    if not setup.higher_is_better:
        gain = Estimate(-gain.mean, gain.half_width, gain.n)  # a gain is an improvement: lower loss is better
    return TuneReport(result, combined, default, tuned, default_batch, best_batch, summaries, gain, best_trial)


# --- figures --------------------------------------------------------------------------------------


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def history_figure(result: SearchResult) -> bytes:
    """Left: every trial's validation metric and the best so far. Right: the metric against the
    learning rate (log scale), the dimension that matters most almost everywhere."""
    from optuna.trial import TrialState

    setup = result.setup
    rows = trials_table(result.study, result.space)
    metric = f"validation {setup.metric}"
    figure = Figure(figsize=(13, 4.6))
    left, right = figure.subplots(1, 2)
    done = [r for r in rows if r["state"] == TrialState.COMPLETE.name.lower()]
    diverged = [r for r in done if r.get("status") == "diverged"]
    finished = [r for r in done if r.get("status") != "diverged"]
    pruned = [r for r in rows if r["state"] == TrialState.PRUNED.name.lower()]
    last_value = {}
    for trial in result.study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        if trial.intermediate_values:
            last_value[trial.number] = trial.intermediate_values[max(trial.intermediate_values)]
    pick = max if setup.higher_is_better else min

    p = [(r["number"], last_value[r["number"]]) for r in pruned if r["number"] in last_value]
    # Keep the informative range in view; trials far outside it (diverged, hopeless) are drawn at the edge.
    values = [r["value"] for r in finished] + [v for _, v in p]
    ylim, clipped = None, False
    if len(values) > 3:
        if setup.higher_is_better:
            low, high = float(np.percentile(values, 10)), max(values)
            ylim = (low - 0.25 * (high - low), high + 0.08 * (high - low)) if high > low else None
        else:
            low, high = min(values), float(np.percentile(values, 90))
            ylim = (low - 0.08 * (high - low), high + 0.25 * (high - low)) if high > low else None

    def shown(value: float) -> float:
        nonlocal clipped
        if ylim is None:
            return value
        margin = 0.015 * (ylim[1] - ylim[0])
        inside = min(max(value, ylim[0] + margin), ylim[1] - margin)
        clipped = clipped or inside != value
        return inside

    left.scatter([r["number"] for r in finished], [shown(r["value"]) for r in finished], s=28, color="#1f4e8c",
                 label=f"complete ({len(finished)})", zorder=3)
    if p:
        left.scatter([n for n, _ in p], [shown(v) for _, v in p], s=22, marker="x", color="#9aa7b8",
                     label=f"pruned ({len(pruned)}), last value", zorder=2)
    if diverged:
        left.scatter([r["number"] for r in diverged], [shown(r["value"]) for r in diverged], s=30, marker="v",
                     color="#c0392b", label=f"diverged ({len(diverged)}), scored as untrained", zorder=3)
    if done:
        ordered = sorted(done, key=lambda r: r["number"])
        best, xs, ys = None, [], []
        for r in ordered:
            best = r["value"] if best is None else pick(best, r["value"])
            xs.append(r["number"])
            ys.append(best)
        left.step(xs, ys, where="post", color="#e67e22", lw=2, label="best so far")
    left.set_xlabel("trial")
    left.set_ylabel(metric)
    left.set_title("Optimization history")
    if ylim is not None:
        left.set_ylim(*ylim)
    left.legend(fontsize=8, frameon=False, loc="lower right" if setup.higher_is_better else "upper right")

    if "lr" in result.space.dimensions and result.space.dimensions["lr"].searched:
        for group, style in ((finished, dict(s=28, color="#1f4e8c", label="complete")),
                             (diverged, dict(s=30, marker="v", color="#c0392b", label="diverged"))):
            if group:
                right.scatter([r["lr"] for r in group], [shown(r["value"]) for r in group], **style, zorder=3)
        pr = [(r["lr"], shown(last_value[r["number"]])) for r in pruned if r["number"] in last_value and "lr" in r]
        if pr:
            right.scatter(*zip(*pr), s=22, marker="x", color="#9aa7b8", label="pruned (last value)", zorder=2)
        try:
            best_lr = result.space.values_from_params(result.study.best_trial.params)["lr"]
            right.axvline(best_lr, color="#e67e22", ls="--", lw=1.5, label=f"best lr {best_lr:.3g}")
        except ValueError:
            pass
        right.set_xscale("log")
        right.set_xlabel("learning rate (log scale)")
        right.set_ylabel(metric)
        right.set_title("Validation metric against learning rate")
        right.set_ylim(left.get_ylim())
        right.legend(fontsize=8, frameon=False)
    else:
        right.set_axis_off()
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    note = "; points beyond the axes are drawn at their edge" if clipped else ""
    figure.suptitle(f"{setup.task.name} / {setup.spec.text}: {len(rows)} trials, {setup.trial_epochs} epochs "
                    f"each{note}", fontsize=11)
    figure.tight_layout()
    return _png(figure)


def importances(result: SearchResult) -> dict[str, float] | None:
    """fANOVA importances (Hutter et al., 2014) of the searched hyperparameters over the completed
    trials, or None when there are too few trials to fit them."""
    import optuna

    try:
        values = optuna.importance.get_param_importances(result.study)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None
    return dict(values) or None


def _display_name(optuna_name: str) -> str:
    return f"{optuna_name[2:]} (as 1 − {optuna_name[2:]})" if optuna_name.startswith("1-") else optuna_name


def importance_figure(values: dict[str, float], n_trials: int) -> bytes:
    names = list(values)[::-1]
    figure = Figure(figsize=(7.5, 0.45 * len(names) + 1.4))
    ax = figure.subplots()
    bars = ax.barh([_display_name(n) for n in names], [values[n] for n in names], color="#1f4e8c", height=0.6)
    for bar, name in zip(bars, names):
        ax.annotate(f"{values[name]:.2f}", xy=(bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_xlim(0, max(values.values()) * 1.15 if values else 1)
    ax.set_xlabel("share of the variance of the validation metric (fANOVA)")
    ax.set_title(f"Hyperparameter importance ({n_trials} completed trials)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return _png(figure)


# --- tables and text ------------------------------------------------------------------------------


def _pct(report: TuneReport) -> bool:
    return report.metric == "accuracy"


def _fmt(report: TuneReport, estimate: Estimate) -> str:
    return estimate.format(4, _pct(report))


def gain_sentence(report: TuneReport) -> str:
    g = report.gain
    if not math.isfinite(g.mean):
        return "Not enough finished confirmation runs to measure the gain."
    unit = " percentage points" if _pct(report) else ""
    scale = 100.0 if _pct(report) else 1.0
    ci = f" ± {g.half_width * scale:.2f}{unit}" if math.isfinite(g.half_width) else ""
    word = "gain" if g.mean >= 0 else "loss"
    verdict = ("significant at 95%" if report.significant else "not significant at 95%: the interval contains 0")
    n = report.summaries[TUNED_LABEL].final_metric.n
    return (f"Tuning {word}: {g.mean * scale:+.2f}{'' if ci else unit}{ci} test {report.metric} "
            f"(tuned − default, 95% Welch interval, {n} seeds each) — {verdict}.")


def default_trial_sentence(report: TuneReport) -> str:
    """Where the default configuration stood in the search (it is trial 0 when it lies in the space)."""
    study, setup = report.search.study, report.search.setup
    trial = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(DEFAULT_TRIAL)), None)
    best = report.best_trial
    scale, unit = (100.0, "%") if _pct(report) else (1.0, "")
    if trial is None or trial.value is None:
        if study.user_attrs.get("default_enqueued") is False:
            return ("The default configuration lies outside the search space (e.g. momentum 0 for plain SGD), "
                    "so it was not a trial of the search.")
        return "The default configuration was not a trial of the search."
    return (f"The search started from the default configuration (trial {trial.number}: validation "
            f"{setup.metric} {trial.value * scale:.4g}{unit}); the best trial (#{best.number}) scored "
            f"{best.value * scale:.4g}{unit} on the same validation split and seed.")


def comparison_rows(report: TuneReport) -> tuple[list[str], list[list[str]]]:
    header = ["configuration", "--opt", "batch size", f"test {report.metric} (mean ± 95% CI)", "per seed",
              "train loss", "diverged"]
    rows = []
    for spec, batch in ((report.default_spec, report.default_batch), (report.tuned_spec, report.tuned_batch)):
        s = report.summaries[spec.label]
        per_seed = ", ".join(f"{v * (100 if _pct(report) else 1):.4g}" for v in s.finals["final_metric"])
        rows.append([spec.label, opt_string(spec), "full batch" if spec.full_batch else str(batch),
                     _fmt(report, s.final_metric), per_seed or "-", s.final_train_loss.format(3),
                     f"{s.diverged + s.failed}/{s.runs}"])
    return header, rows


def top_trials_rows(report: TuneReport, n: int = 10) -> tuple[list[str], list[list[str]]]:
    rows = [r for r in trials_table(report.search.study, report.search.space) if r["state"] == "complete"]
    rows.sort(key=lambda r: r["value"], reverse=report.search.setup.higher_is_better)
    names = [d.name for d in report.search.space.searched()]
    header = ["trial", f"validation {report.metric}"] + names + ["seconds"]
    out = []
    for r in rows[:n]:
        value = r["value"] * 100 if _pct(report) else r["value"]
        tag = " (diverged)" if r.get("status") == "diverged" else ""
        tag += " (default configuration)" if r.get("default") else ""
        out.append([str(r["number"]), f"{value:.4g}" + tag]
                   + [_short(r.get(k)) for k in names] + [_short(r.get("seconds"))])
    return header, out


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _val_split(setup: Any) -> str:
    if setup.val_fraction is None and setup.task.has_validation:
        return f"the task's validation split ({setup.task.n_val} examples)"
    return f"{setup.val_fraction or 0.2:.0%} of the training data held out"


def _caption(report: TuneReport) -> str:
    setup = report.search.setup
    c = report.search.counts
    return (f"{report.task.name}: {report.task.description}. Search: {c['done']} trials ({c['complete']} complete, "
            f"{c['pruned']} pruned, {c['diverged']} diverged, {c['failed']} failed), TPE sampler, "
            f"{setup.pruner} pruner, {setup.trial_epochs} epochs per trial, validation {setup.metric} on "
            f"{_val_split(setup)}. Confirmation: the same training set, test set, "
            f"{len(report.race.seeds)} fresh seeds per configuration.")


def summary_dict(report: TuneReport) -> dict[str, Any]:
    setup = report.search.setup
    return {
        "task": report.task.name, "optimizer": setup.spec.text, "metric": setup.metric,
        "higher_is_better": setup.higher_is_better, "study": report.search.study.study_name,
        "storage": storage_description(setup.storage, setup.out), "trials": report.search.counts,
        "space": report.search.space.describe(), "epochs_per_trial": setup.trial_epochs,
        "best_trial": {"number": report.best_trial.number, "validation_value": report.best_trial.value},
        "default": {"opt": opt_string(report.default_spec), "batch_size": report.default_batch,
                    "test": report.summaries[DEFAULT_LABEL].to_dict()},
        "tuned": {"opt": opt_string(report.tuned_spec), "batch_size": report.tuned_batch,
                  "test": report.summaries[TUNED_LABEL].to_dict()},
        "gain": report.gain.to_dict() | {"significant": report.significant, "sentence": gain_sentence(report)},
        "default_in_search": default_trial_sentence(report),
        "seeds": report.race.seeds,
    }


def print_tune_report(report: TuneReport, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    header, rows = comparison_rows(report)
    keep = [i for i, name in enumerate(header) if name != "per seed"]  # in report.md; too wide for a terminal
    header, rows = [header[i] for i in keep], [[row[i] for i in keep] for row in rows]
    table = Table(title=f"sgdlab tune — {report.task.name} / {report.search.setup.spec.text}",
                  caption=_caption(report), caption_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"[bold]{gain_sentence(report)}")
    console.print(default_trial_sentence(report))
    console.print("\nBest configuration, ready to paste:")
    batch = "" if report.tuned_spec.full_batch else f" --batch-size {report.tuned_batch}"
    console.print(f"  --opt {opt_string(report.tuned_spec)}{batch}", markup=False, highlight=False)
    console.print(python_snippet(report.tuned_spec, report.task, report.tuned_batch), markup=False, highlight=False)


def write_tune_report(report: TuneReport, out: str | Path) -> dict[str, Path]:
    """Write tune.json, trials.json, report.md, report.html and plots/*.png into ``out``."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    figures = {"history.png": history_figure(report.search)}
    values = importances(report.search)
    if values:
        figures["importance.png"] = importance_figure(values, report.search.counts["complete"])
    figures["confirm_curves.png"] = plots.learning_curves(report.race, report.task.target_loss)
    figures["confirm_final.png"] = plots.final_metrics(report.race, report.summaries)
    for name, png in figures.items():
        (out / "plots" / name).write_bytes(png)
    summary = summary_dict(report) | {"importance": values}
    (out / "tune.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")

    setup = report.search.setup
    header, rows = comparison_rows(report)
    top_header, top_rows = top_trials_rows(report)
    space_rows = [[line] for line in report.search.space.describe()]
    batch = "" if report.tuned_spec.full_batch else f" --batch-size {report.tuned_batch}"
    opt = opt_string(report.tuned_spec)
    compare_cmd = f"sgdlab compare --task {report.task.name} --opt '{opt}'{batch} --epochs {setup.trial_epochs}"
    snippet = python_snippet(report.tuned_spec, report.task, report.tuned_batch)
    imp_rows = [[_display_name(k), f"{v:.3f}"] for k, v in (values or {}).items()]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    title = f"sgdlab tune: {report.task.name} / {setup.spec.text}"

    md = [f"# {title}", "", f"_{stamp}_", "", _caption(report), "",
          "## Tuned vs default", "", _md_table(header, rows), "", f"**{gain_sentence(report)}**", "",
          default_trial_sentence(report), "",
          "## Best configuration", "", "```", f"--opt {opt}{batch}", "```", "", "```bash", compare_cmd, "```", "",
          "```python", snippet, "```", "",
          "## Search", "", f"Study `{report.search.study.study_name}` in "
          f"`{storage_description(setup.storage, setup.out)}`; rerun the same command to add trials.", "",
          _md_table(["search space"], space_rows), "",
          "![optimization history](plots/history.png)", ""]
    if values:
        md += ["![hyperparameter importance](plots/importance.png)", "",
               _md_table(["hyperparameter", "importance (fANOVA)"], imp_rows), ""]
    md += ["### Best trials", "", _md_table(top_header, top_rows), "",
           "## Confirmation runs", "", "![learning curves](plots/confirm_curves.png)", "",
           "![final metrics](plots/confirm_final.png)", "",
           "Every confirmation evaluation is in `confirm/*/runs.jsonl`; the numbers above are in `tune.json`.", ""]
    (out / "report.md").write_text("\n".join(md))

    def img(name: str, alt: str) -> str:
        if name not in figures:
            return ""
        return _png_img(figures[name], alt)

    esc = html.escape
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{_CSS}
pre{{background:#f4f4f4;padding:.6em;overflow-x:auto}}</style></head><body>
<h1>{esc(title)}</h1>
<p class="caption">{esc(stamp)} · {esc(_caption(report))}</p>
<h2>Tuned vs default</h2>{_html_table(header, rows)}
<p><strong>{esc(gain_sentence(report))}</strong></p>
<p>{esc(default_trial_sentence(report))}</p>
<h2>Best configuration</h2>
<pre>--opt {esc(opt)}{esc(batch)}</pre><pre>{esc(compare_cmd)}</pre><pre>{esc(snippet)}</pre>
<h2>Search</h2>
<p>Study <code>{esc(report.search.study.study_name)}</code> in
<code>{esc(storage_description(setup.storage, setup.out))}</code>; rerun the same command to add trials.</p>
{_html_table(["search space"], space_rows)}
{img("history.png", "optimization history")}
{img("importance.png", "hyperparameter importance")}
{_html_table(["hyperparameter", "importance (fANOVA)"], imp_rows) if imp_rows else ""}
<h3>Best trials</h3>{_html_table(top_header, top_rows)}
<h2>Confirmation runs</h2>
{img("confirm_curves.png", "learning curves")}
{img("confirm_final.png", "final metrics")}
<p class="caption">Every confirmation evaluation is in <code>confirm/*/runs.jsonl</code>; the numbers above are
in <code>tune.json</code>.</p>
</body></html>
"""
    (out / "report.html").write_text(page)
    return {"summary": out / "tune.json", "markdown": out / "report.md", "html": out / "report.html",
            "plots": out / "plots"}
