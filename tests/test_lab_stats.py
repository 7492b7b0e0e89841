"""Summaries and the verdict, on hand-made runs (no training)."""

import pytest

from sgdlab.lab.runner import RunResult
from sgdlab.lab.stats import summarize_optimizer, verdict


def _run(label, seed, accuracy, train_loss, test_loss, reach_epoch=None, status="finished"):
    records = [{"epoch": 0, "step": 0, "examples": 0, "time": 0.0, "train_loss": 2.0, "test_loss": 2.0,
                "test_accuracy": 0.1}]
    for epoch in (1, 2, 3):
        loss = 0.05 if reach_epoch is not None and epoch >= reach_epoch else max(train_loss, 0.5)
        records.append({"epoch": epoch, "step": 10 * epoch, "examples": 100 * epoch, "time": 0.1 * epoch,
                        "train_loss": loss if epoch < 3 else train_loss, "test_loss": test_loss if epoch == 3 else 1.0,
                        "test_accuracy": accuracy})
    return RunResult(f"{label}-{seed}", label, seed, status, records)


def _summary(label, name, family, runs):
    return summarize_optimizer(label, name, family, runs, "accuracy", True, target_loss=0.1)


def test_summary_means_gap_and_epochs_to_target():
    runs = [_run("sgd", s, acc, 0.04, 0.30, reach_epoch=e) for s, (acc, e) in enumerate([(0.9, 1), (0.92, 2), (0.94, 3)])]
    summary = _summary("sgd", "sgd", "sgd", runs)
    assert summary.final_metric.mean == pytest.approx(0.92)
    assert summary.gap.mean == pytest.approx(0.26)
    assert summary.reached == 3 and summary.epochs_to_target.mean == pytest.approx(2.0)
    assert summary.steps_to_target.mean == pytest.approx(20.0)


def test_diverged_runs_are_counted_not_averaged():
    runs = [_run("adam", 0, 0.9, 0.04, 0.3), _run("adam", 1, 0.1, 0.04, 0.3, status="diverged")]
    summary = _summary("adam", "adam", "adam", runs)
    assert summary.diverged == 1 and summary.final_metric.n == 1 and summary.final_metric.mean == 0.9


def test_verdict_calls_a_clear_difference_and_declines_a_noisy_one():
    sgd = _summary("sgd", "sgd", "sgd", [_run("sgd", s, a, 0.04, 0.2, 1) for s, a in enumerate([0.95, 0.96, 0.97])])
    adam = _summary("adam", "adam", "adam", [_run("adam", s, a, 0.04, 0.5, 1) for s, a in enumerate([0.80, 0.81, 0.82])])
    gd = _summary("gd", "gd", "sgd", [_run("gd", s, a, 1.5, 1.6) for s, a in enumerate([0.5, 0.9, 0.6])])
    findings = {f.question.split(" (")[0]: f for f in verdict({"gd": gd, "sgd": sgd, "adam": adam}, "accuracy", True, 0.1)}
    assert "higher test accuracy: sgd (+15.0" in findings["SGD vs Adam: generalization"].answer
    assert "smaller gap: sgd" in findings["SGD vs Adam: generalization"].answer
    assert "sgd (only it reaches the target)" in findings["Full-batch GD vs mini-batch SGD"].answer
    assert "no significant difference in test accuracy" in findings["Full-batch GD vs mini-batch SGD"].answer
    assert "Does momentum help SGD?" not in findings  # no momentum optimizer in this race
