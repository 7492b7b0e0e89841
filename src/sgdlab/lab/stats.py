"""Statistics over seeds: means with Student-t confidence intervals, per-optimizer summaries and the
verdict that answers a practitioner's questions from them.

With n seeds the 95% interval of a mean is ``mean +- t(0.975, n-1) * s / sqrt(n)`` (s: the sample
standard deviation). Few seeds give wide intervals, which is the honest answer: the verdict calls a
difference significant only when Welch's interval for the difference of two means excludes zero.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from scipy import stats as _scipy_stats


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its confidence interval half-width (NaN with a single value)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, digits: int = 3, percent: bool = False) -> str:
        if self.n == 0:
            return "-"
        scale, suffix = (100.0, "%") if percent else (1.0, "")
        mean = f"{self.mean * scale:.{digits}g}" if not percent else f"{self.mean * scale:.1f}"
        if self.n < 2 or not math.isfinite(self.half_width):
            return mean + suffix
        half = f"{self.half_width * scale:.2g}" if not percent else f"{self.half_width * scale:.1f}"
        return f"{mean} ± {half}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _json(self.mean), "ci95": _json(self.half_width), "n": self.n}


def _json(value: float) -> float | None:
    return value if math.isfinite(value) else None


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Estimate:
    """Mean and Student-t confidence half-width of ``values`` (non-finite values are dropped)."""
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(data)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = sum(data) / n
    if n == 1:
        return Estimate(mean, math.nan, 1)
    variance = sum((x - mean) ** 2 for x in data) / (n - 1)
    t = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))
    return Estimate(mean, t * math.sqrt(variance / n), n)


def difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Estimate:
    """mean(a) - mean(b) with Welch's confidence interval (unequal variances)."""
    a = [float(x) for x in a if x is not None and math.isfinite(float(x))]
    b = [float(x) for x in b if x is not None and math.isfinite(float(x))]
    if not a or not b:
        return Estimate(math.nan, math.nan, 0)
    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Estimate(diff, math.nan, min(len(a), len(b)))
    va = sum((x - sum(a) / len(a)) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - sum(b) / len(b)) ** 2 for x in b) / (len(b) - 1) / len(b)
    if va + vb == 0:
        return Estimate(diff, 0.0, min(len(a), len(b)))
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = float(_scipy_stats.t.ppf(0.5 + confidence / 2, dof))
    return Estimate(diff, t * math.sqrt(va + vb), min(len(a), len(b)))


def first_reaching(records: Sequence[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first evaluation whose train loss is at or below ``target``."""
    for record in records:
        loss = record.get("train_loss")
        if loss is not None and loss <= target:
            return record
    return None


@dataclasses.dataclass
class OptimizerSummary:
    """One optimizer over its seeds."""

    label: str
    name: str
    family: str | None
    runs: int
    diverged: int
    failed: int
    final_metric: Estimate
    best_metric: Estimate
    final_train_loss: Estimate
    final_test_loss: Estimate
    gap: Estimate  # test loss - train loss at the end
    steps: Estimate  # optimizer steps taken
    time: Estimate  # training seconds
    reached: int  # runs that reached the target train loss
    steps_to_target: Estimate
    epochs_to_target: Estimate
    time_to_target: Estimate
    finals: dict[str, list[float]]  # per-seed final values, for tests between optimizers

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "name": self.name, "family": self.family, "runs": self.runs,
                               "diverged": self.diverged, "failed": self.failed, "reached_target": self.reached}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Estimate):
                out[field.name] = value.to_dict()
        out["per_seed"] = self.finals
        return out


def summarize_optimizer(
    label: str, name: str, family: str | None, runs: Sequence[Any], metric: str, higher_is_better: bool,
    target_loss: float | None,
) -> OptimizerSummary:
    """Summary of one optimizer's runs (``RunResult`` objects). Diverged and failed runs count
    separately and are left out of the means (their final numbers are not finite)."""
    good = [r for r in runs if r.status == "finished" and r.records]
    key = f"test_{metric}"
    pick = max if higher_is_better else min
    finals = {
        "final_metric": [r.final.get(key) for r in good],
        "best_metric": [pick(x[key] for x in r.records if x.get(key) is not None) for r in good],
        "final_train_loss": [r.final.get("train_loss") for r in good],
        "final_test_loss": [r.final.get("test_loss") for r in good],
        "gap": [
            r.final["test_loss"] - r.final["train_loss"]
            for r in good if r.final.get("test_loss") is not None and r.final.get("train_loss") is not None
        ],
        "steps": [r.final.get("step") for r in good],
        "time": [r.final.get("time") for r in good],
        "seeds": [r.seed for r in good],
    }
    hits = []
    if target_loss is not None:
        hits = [first_reaching(r.records, target_loss) for r in runs if r.records]
        hits = [h for h in hits if h is not None]
    finals["steps_to_target"] = [h["step"] for h in hits]
    finals["epochs_to_target"] = [h["epoch"] for h in hits]  # epochs of data seen (fractional if partial)
    finals["time_to_target"] = [h["time"] for h in hits]
    return OptimizerSummary(
        label=label, name=name, family=family, runs=len(runs),
        diverged=sum(r.status == "diverged" for r in runs), failed=sum(r.status == "failed" for r in runs),
        final_metric=mean_ci(finals["final_metric"]), best_metric=mean_ci(finals["best_metric"]),
        final_train_loss=mean_ci(finals["final_train_loss"]), final_test_loss=mean_ci(finals["final_test_loss"]),
        gap=mean_ci(finals["gap"]), steps=mean_ci(finals["steps"]), time=mean_ci(finals["time"]),
        reached=len(hits),
        steps_to_target=mean_ci(finals["steps_to_target"]),
        epochs_to_target=mean_ci(finals["epochs_to_target"]),
        time_to_target=mean_ci(finals["time_to_target"]),
        finals=finals,
    )


def summarize(result: Any, target_loss: float | None = None) -> dict[str, OptimizerSummary]:
    """Per-optimizer summaries of a :class:`~sgdlab.lab.runner.RaceResult`, in race order."""
    task = result.task
    target = task.target_loss if target_loss is None else target_loss
    out = {}
    for spec in result.specs:
        runs = [r for r in result.runs if r.optimizer == spec.label]
        out[spec.label] = summarize_optimizer(
            spec.label, spec.name, spec.family, runs, task.metric, task.higher_is_better, target
        )
    return out


# --- the verdict ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Finding:
    question: str
    evidence: str
    answer: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _by_name(summaries: dict[str, OptimizerSummary], *names: str) -> OptimizerSummary | None:
    for name in names:
        for s in summaries.values():
            if s.name == name and s.final_metric.n:
                return s
    return None


def _best(candidates: list[OptimizerSummary], higher_is_better: bool) -> OptimizerSummary | None:
    candidates = [c for c in candidates if c.final_metric.n]
    if not candidates:
        return None
    sign = 1 if higher_is_better else -1
    return max(candidates, key=lambda c: sign * c.final_metric.mean)


def _speed(s: OptimizerSummary, target: float | None) -> str:
    if target is None:
        return f"train loss {s.final_train_loss.format()}"
    if s.reached == 0:
        return f"never reached train loss {target:.3g} (final {s.final_train_loss.format()})"
    part = "" if s.reached == s.runs else f" ({s.reached}/{s.runs} seeds)"
    return (f"reached {target:.3g} in {s.epochs_to_target.format(2)} epochs / "
            f"{s.time_to_target.format(2)} s{part}")


def _faster(a: OptimizerSummary, b: OptimizerSummary, target: float | None) -> str:
    """Which of two optimizers optimizes faster, in epochs of data to the target train loss."""
    if target is not None and (a.reached or b.reached):
        if a.reached and not b.reached:
            return f"{a.label} (only it reaches the target)"
        if b.reached and not a.reached:
            return f"{b.label} (only it reaches the target)"
        ea, eb = a.epochs_to_target.mean, b.epochs_to_target.mean
        if a.reached == a.runs and b.reached == b.runs:
            d = difference_ci(a.finals["epochs_to_target"], b.finals["epochs_to_target"])
            if math.isfinite(d.half_width) and abs(d.mean) <= d.half_width:
                return "no significant difference in epochs to the target"
        fast, slow, ratio = (a, b, eb / ea) if ea < eb else (b, a, ea / eb)
        return f"{fast.label}, {ratio:.1f}x fewer epochs to the target"
    d = difference_ci(a.finals["final_train_loss"], b.finals["final_train_loss"])
    lower = a if d.mean < 0 else b
    if math.isfinite(d.half_width) and abs(d.mean) <= d.half_width:
        return "no significant difference in final train loss"
    return f"{lower.label} (lower final train loss)"


def _show_difference(d: Estimate, percent: bool) -> str:
    if percent:
        text = f"{d.mean * 100:+.1f}"
        return text + (f" ± {d.half_width * 100:.1f}" if math.isfinite(d.half_width) else "") + " points"
    return f"{d.mean:+.3g}" + (f" ± {d.half_width:.2g}" if math.isfinite(d.half_width) else "")


def _better_metric(a: OptimizerSummary, b: OptimizerSummary, metric: str, higher: bool) -> str:
    d = difference_ci(a.finals["final_metric"], b.finals["final_metric"])
    percent = metric == "accuracy"
    if not math.isfinite(d.mean):
        return "not enough finished runs to compare"
    if not math.isfinite(d.half_width) or abs(d.mean) <= d.half_width:
        return (f"no significant difference in test {metric} "
                f"({a.label} − {b.label} = {_show_difference(d, percent)})")
    winner = a if (d.mean > 0) == higher else b
    if winner is b:
        d = Estimate(-d.mean, d.half_width, d.n)
    return f"higher test {metric}: {winner.label} ({_show_difference(d, percent)}, 95% CI)"


def _smaller_gap(a: OptimizerSummary, b: OptimizerSummary) -> str:
    """Generalization proper: the test - train loss gap, smaller is better."""
    d = difference_ci(a.finals["gap"], b.finals["gap"])
    if not math.isfinite(d.mean):
        return "gap: not enough finished runs to compare"
    if not math.isfinite(d.half_width) or abs(d.mean) <= d.half_width:
        return f"no significant difference in the gap ({a.label} − {b.label} = {_show_difference(d, False)})"
    winner = a if d.mean < 0 else b
    return f"smaller gap: {winner.label} ({abs(d.mean):.3g} ± {d.half_width:.2g} less, 95% CI)"


def verdict(summaries: dict[str, OptimizerSummary], metric: str, higher_is_better: bool,
            target: float | None) -> list[Finding]:
    """Answers to: GD vs SGD, does momentum help, SGD vs Adam speed and generalization, AdamW vs Adam;
    each only when the race contains the optimizers it needs (by registered name or family)."""
    findings: list[Finding] = []
    fmt = lambda s: f"{s.label}: test {metric} {s.final_metric.format(3, metric == 'accuracy')}"  # noqa: E731

    gd, sgd = _by_name(summaries, "gd"), _by_name(summaries, "sgd")
    if gd and sgd:
        findings.append(Finding(
            "Full-batch GD vs mini-batch SGD (same epochs of data)",
            f"{gd.label}: {_speed(gd, target)}, {gd.steps.mean:.0f} steps; {sgd.label}: {_speed(sgd, target)}, "
            f"{sgd.steps.mean:.0f} steps",
            f"faster per epoch: {_faster(gd, sgd, target)}; "
            + _better_metric(gd, sgd, metric, higher_is_better),
        ))
    momentum = _by_name(summaries, "momentum") or _by_name(summaries, "nesterov")
    if sgd and momentum:
        findings.append(Finding(
            "Does momentum help SGD?",
            f"{sgd.label}: {_speed(sgd, target)}; {momentum.label}: {_speed(momentum, target)}",
            f"faster: {_faster(momentum, sgd, target)}; "
            + _better_metric(momentum, sgd, metric, higher_is_better),
        ))
    sgd_family = [s for s in summaries.values() if s.family == "sgd" and s.name != "gd"]
    adam_family = [s for s in summaries.values() if s.family == "adam"]
    best_sgd, best_adam = _best(sgd_family, higher_is_better), _best(adam_family, higher_is_better)
    if best_sgd and best_adam:
        findings.append(Finding(
            f"SGD vs Adam: convergence speed (best of each: {best_sgd.label}, {best_adam.label})",
            f"{best_sgd.label}: {_speed(best_sgd, target)}; {best_adam.label}: {_speed(best_adam, target)}",
            f"faster: {_faster(best_sgd, best_adam, target)}",
        ))
        findings.append(Finding(
            "SGD vs Adam: generalization",
            f"{fmt(best_sgd)}, gap {best_sgd.gap.format(2)}; {fmt(best_adam)}, gap {best_adam.gap.format(2)}",
            _better_metric(best_sgd, best_adam, metric, higher_is_better) + "; " + _smaller_gap(best_sgd, best_adam),
        ))
    adam, adamw = _by_name(summaries, "adam"), _by_name(summaries, "adamw")
    if adam and adamw:
        findings.append(Finding(
            "AdamW (decoupled weight decay) vs Adam",
            f"{fmt(adamw)}; {fmt(adam)}",
            _better_metric(adamw, adam, metric, higher_is_better),
        ))
    unstable = [s for s in summaries.values() if s.diverged or s.failed]
    if unstable:
        findings.append(Finding(
            "Which runs did not finish?",
            "; ".join(f"{s.label}: {s.diverged} diverged, {s.failed} failed of {s.runs}" for s in unstable),
            "diverged runs are left out of the means above; try a smaller learning rate",
        ))
    return findings
