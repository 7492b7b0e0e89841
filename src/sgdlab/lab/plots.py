"""Figures of a race: learning curves with seed bands, and final metrics with confidence intervals.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``): no pyplot state, no
GUI backend, safe in worker processes and tests. Each function returns PNG bytes.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from sgdlab.lab.stats import OptimizerSummary

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22"]


def colors(labels: Sequence[str]) -> dict[str, str]:
    return {label: _COLORS[i % len(_COLORS)] for i, label in enumerate(labels)}


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _series(records: Sequence[dict[str, Any]], x_key: str, y_key: str, offset: float = 0.0):
    points = [(r[x_key], r[y_key] - offset) for r in records if r.get(y_key) is not None and r.get(x_key) is not None]
    if not points:
        return np.array([]), np.array([])
    x, y = np.array(points, dtype=float).T
    return x, y


def _draw_band(ax, runs, x_key, y_key, color, label, offset=0.0, floor=None) -> None:
    """Mean over seeds as a line and the min-max range over seeds as a band (finished runs); a
    diverged run as a thin dashed line ending in an x."""
    finished = [r for r in runs if r.status == "finished" and len(r.records) > 1]
    curves = [_series(r.records, x_key, y_key, offset) for r in finished]
    curves = [(x, y) for x, y in curves if len(x) > 1]
    if curves:
        end = min(x[-1] for x, _ in curves)
        grid = np.unique(np.concatenate([x[x <= end] for x, _ in curves]))
        if len(grid) > 400:
            grid = np.linspace(grid[0], end, 400)
        ys = np.array([np.interp(grid, x, y) for x, y in curves])
        if floor is not None:
            ys = np.maximum(ys, floor)
        ax.plot(grid, ys.mean(axis=0), color=color, lw=2, label=f"{label} ({len(curves)} seeds)")
        if len(curves) > 1:
            ax.fill_between(grid, ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.18, lw=0)
    for run in runs:
        if run.status == "diverged":
            x, y = _series(run.records, x_key, y_key, offset)
            if len(x):
                ax.plot(x, y if floor is None else np.maximum(y, floor), color=color, lw=1, ls="--", alpha=0.8)
                ax.plot(x[-1:], (y if floor is None else np.maximum(y, floor))[-1:], "x", color=color, ms=8)
            elif not curves:
                ax.plot([], [], color=color, ls="--", label=f"{label} (diverged)")


def learning_curves(result: Any, target_loss: float | None = None) -> bytes:
    """Train loss per epoch, train loss per second of training, test metric per epoch."""
    task = result.task
    labels = [s.label for s in result.specs]
    palette = colors(labels)
    optimum = task.optimum_loss
    offset = optimum or 0.0
    floor = 1e-6 if optimum is not None else None
    loss_name = "train loss − optimum" if optimum is not None else "train loss"

    figure = Figure(figsize=(16, 4.8))
    axes = figure.subplots(1, 3)
    for label in labels:
        runs = [r for r in result.runs if r.optimizer == label]
        _draw_band(axes[0], runs, "epoch", "train_loss", palette[label], label, offset, floor)
        _draw_band(axes[1], runs, "time", "train_loss", palette[label], label, offset, floor)
        _draw_band(axes[2], runs, "epoch", f"test_{task.metric}", palette[label], label)
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.set_ylabel(loss_name)
        if target_loss is not None:
            ax.axhline(max(target_loss - offset, floor or 0), color="0.4", ls=":", lw=1)
            ax.annotate("target", xy=(1.0, max(target_loss - offset, floor or 0)), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=8, color="0.35")
    axes[0].set_xlabel("epochs (passes over the training set)")
    axes[1].set_xlabel("training time (s, one CPU thread)")
    axes[2].set_xlabel("epochs (passes over the training set)")
    metric = task.metric.replace("_", " ")
    axes[2].set_ylabel(f"test {metric}")
    if task.metric == "accuracy":
        from matplotlib.ticker import PercentFormatter

        axes[2].yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0].set_title(f"{loss_name} per epoch")
    axes[1].set_title(f"{loss_name} per second of training")
    axes[2].set_title(f"test {metric}")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=min(len(names), 8), frameon=False,
                  bbox_to_anchor=(0.5, -0.06))
    figure.suptitle(f"{task.name}: mean over seeds, band = min-max over seeds", fontsize=11)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return _png(figure)


def final_metrics(result: Any, summaries: dict[str, OptimizerSummary]) -> bytes:
    """Final test metric and generalization gap per optimizer: mean, 95% CI and each seed."""
    task = result.task
    labels = [s.label for s in result.specs]
    palette = colors(labels)
    figure = Figure(figsize=(12, 0.55 * len(labels) + 1.6))
    axes = figure.subplots(1, 2, sharey=True)
    panels = [("final_metric", f"final test {task.metric.replace('_', ' ')}"),
              ("gap", "generalization gap (test loss − train loss)")]
    positions = np.arange(len(labels))[::-1]
    for ax, (key, title) in zip(axes, panels):
        for y, label in zip(positions, labels):
            summary = summaries[label]
            estimate = getattr(summary, key)
            seeds = [v for v in summary.finals[key] if v is not None and math.isfinite(v)]
            ax.scatter(seeds, [y] * len(seeds), color=palette[label], alpha=0.45, s=18, zorder=2)
            if estimate.n:
                err = estimate.half_width if math.isfinite(estimate.half_width) else 0.0
                low, high = estimate.mean - err, estimate.mean + err
                if key == "final_metric" and task.metric == "accuracy":
                    low, high = max(low, 0.0), min(high, 1.0)  # an accuracy interval lives in [0, 1]
                ax.errorbar([estimate.mean], [y], xerr=[[estimate.mean - low], [high - estimate.mean]], fmt="o",
                            color=palette[label], ms=7, capsize=4, lw=2, zorder=3)
            failed = summary.diverged + summary.failed
            if failed:
                ax.annotate(f"{failed} diverged/failed", xy=(1.0, y), xycoords=("axes fraction", "data"),
                            ha="right", va="center", fontsize=8, color="#d62728")
        ax.set_title(title)
        if key == "final_metric" and task.metric == "accuracy":
            from matplotlib.ticker import PercentFormatter

            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(True, axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_yticks(positions, labels)
    figure.suptitle(f"{task.name}: mean and 95% confidence interval over seeds (dots: seeds)", fontsize=11)
    figure.tight_layout()
    return _png(figure)
