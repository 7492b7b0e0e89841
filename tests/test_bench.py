"""``sgdlab bench``: model shapes, measurements that add up, JSON, the command line."""

from __future__ import annotations

import json
import math
import sys

import pytest

from sgdlab import bench
from sgdlab.bench import shapes
from sgdlab.cli import main


def test_resnet50_shapes_have_torchvision_counts():
    resnet = shapes.resnet50_shapes()
    assert len(resnet) == 161
    assert shapes.numel(resnet) == 25_557_032


def test_gpt2_small_shapes_have_gpt2_counts():
    gpt2 = shapes.gpt2_small_shapes()
    assert len(gpt2) == 148
    assert shapes.numel(gpt2) == 124_439_808


@pytest.fixture(scope="module")
def quick_result():
    return bench.run(["8x16k"], ["adam", "sgd-momentum"],
                     ["sgdlab", "sgdlab bf16 state", "sgdlab 8-bit state", "torch fused"],
                     device="cpu", quick=True, rounds=2)


def test_quick_run_measures_every_contender(quick_result):
    contenders = ["sgdlab", "sgdlab bf16 state", "sgdlab 8-bit state", "torch fused"]
    assert {(r.optimizer, r.contender) for r in quick_result.rows} == {
        (optimizer, contender) for optimizer in ["adam", "sgd-momentum"] for contender in contenders
    }
    for row in quick_result.rows:
        assert row.ms_per_step > 0 and math.isfinite(row.gb_per_s)
        assert len(row.samples_ms) == 2
        assert row.ms_per_step == pytest.approx(sorted(row.samples_ms)[0] / 2
                                                + sorted(row.samples_ms)[1] / 2)


def test_derived_columns_follow_from_the_measurements(quick_result):
    info = quick_result.cases[0]
    assert info.parameters == 8 * 16384 and info.copy_gb_per_s > 0
    rows = quick_result.rows_for("8x16k", "adam")
    fused, ours = rows["torch fused"], rows["sgdlab"]
    assert fused.ratio_to_torch_fused == 1.0
    # Paired: each round's time over torch fused's in the same round; the median of two rounds'
    # ratios is their mean, and with two rounds the quartiles are them (inclusive method).
    per_round = sorted(a / b for a, b in zip(ours.samples_ms, fused.samples_ms))
    assert ours.ratio_to_torch_fused == pytest.approx(sum(per_round) / 2)
    low, high = ours.ratio_quartiles
    assert low == pytest.approx(per_round[0] + (per_round[1] - per_round[0]) / 4)
    assert high == pytest.approx(per_round[0] + 3 * (per_round[1] - per_round[0]) / 4)
    # Adam moves 7 float32 words per parameter; state is 2 words (+ a step counter per tensor).
    assert ours.gb_per_s == pytest.approx(7 * 4 * info.parameters / ours.ms_per_step / 1e6)
    assert ours.state_bytes_per_param == pytest.approx(8 + 8 * 4 / info.parameters)
    # Compact state: bfloat16 halves the moments; 8-bit quarters them, plus a float32 scale per
    # block of 256 elements.
    assert rows["sgdlab bf16 state"].state_bytes_per_param == pytest.approx(
        4 + 8 * 4 / info.parameters)
    assert rows["sgdlab 8-bit state"].state_bytes_per_param == pytest.approx(
        2 * (1 + 4 / 256) + 8 * 4 / info.parameters)
    assert ours.copy_gb_per_s > 0 and ours.update_gb_per_s > 0
    assert ours.roofline_gb_per_s == max(ours.copy_gb_per_s, ours.update_gb_per_s)
    expected_pct = 100 * (7 * 4 * info.parameters / (ours.roofline_gb_per_s * 1e9)) / (
        ours.ms_per_step / 1e3)
    assert ours.roofline_pct == pytest.approx(expected_pct)


def test_result_serializes_to_json(quick_result):
    data = json.loads(quick_result.to_json())
    assert data["machine"]["torch"] and data["settings"]["quick"] is True
    assert len(data["rows"]) == 8


def test_markdown_table_has_a_row_per_measurement(quick_result):
    lines = bench.markdown(quick_result).splitlines()
    assert len(lines) == 2 + 8


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="Invalid case"):
        bench.run(["resnet51"], quick=True)
    with pytest.raises(ValueError, match="Invalid optimizer"):
        bench.run(["8x16k"], ["lion"], quick=True)
    with pytest.raises(ValueError, match="module:factory"):
        shapes.factory_shapes("nomodule")


def test_command_line_bench_writes_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny_model.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Linear(20, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--case", "tiny_model:build", "--optimizer", "adamw",
                 "--contender", "sgdlab", "--contender", "torch fused", "--rounds", "1",
                 "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["cases"][0]["tensors"] == 4 and data["cases"][0]["parameters"] == 283
    assert "tiny_model:build" in capsys.readouterr().out
    sys.modules.pop("tiny_model", None)


def test_command_line_reports_bad_input_without_a_traceback(capsys):
    assert main(["bench", "--quick", "--optimizer", "lion"]) == 2
    err = capsys.readouterr().err
    assert "Invalid optimizer" in err and err.startswith("sgdlab bench: error:")


def test_ratio_quartiles_are_the_middle_half_of_the_rounds():
    from sgdlab.bench.step import quartiles

    assert quartiles([5.0, 1.0, 3.0, 2.0, 4.0]) == (2.0, 4.0)
    assert quartiles([1.1]) == (1.1, 1.1)


def test_ratios_that_scatter_between_rounds_are_noisy_and_steady_ones_are_not():
    from sgdlab.bench.step import NOISE_LIMIT, relative_spread, too_noisy

    steady = [0.98, 1.0, 1.02, 0.99, 1.01, 1.0, 0.97]
    assert relative_spread(steady) < 0.05 and not too_noisy(steady)
    busy = [0.004, 1.0, 0.6]  # one round ran next to a burst of other work
    assert relative_spread(busy) > NOISE_LIMIT and too_noisy(busy)
    assert not too_noisy([0.004, 1.0])  # two rounds cannot tell noise from a difference


def _result_with(rows):
    from sgdlab.bench.step import BenchResult, CaseInfo

    return BenchResult(machine={"cpu": "test cpu", "torch": "x", "threads": 1},
                       settings={"rounds": 3, "noise_limit": 0.5}, cases=[CaseInfo("8x16k", "tiny", 8, 131072, 1.0)],
                       rows=rows)


def _row(contender, ratio, quartiles, noisy):
    from sgdlab.bench.step import Row

    return Row(case="8x16k", optimizer="adam", contender=contender, ms_per_step=1.0, first_step_s=0.1,
               gb_per_s=1.0, roofline_pct=50.0, state_bytes_per_param=8.0, ratio_to_torch_fused=ratio,
               ratio_quartiles=quartiles, noisy=noisy)


def test_a_noisy_ratio_is_shown_as_noisy_with_its_spread_and_explained_once():
    from rich.console import Console

    from sgdlab.bench.step import markdown, render

    result = _result_with([_row("sgdlab", 0.004, (0.002, 0.8), True), _row("torch foreach", 1.02, (1.0, 1.04), False),
                           _row("torch fused", 1.0, (1.0, 1.0), False)])
    table = markdown(result)
    assert "| noisy (IQR 0.00-0.80) |" in table and "0.004x" not in table
    assert "1.020x (1.00-1.04)" in table
    assert table.count("noisy: 1 of 2 ratios are not shown") == 1
    console = Console(record=True, width=200)
    render(result, console)
    text = console.export_text()
    assert "noisy (IQR 0.00-0.80)" in text and "0.004x" not in text and "noisy: 1 of 2 ratios" in text
    assert json.loads(result.to_json())["rows"][0]["noisy"] is True


def test_a_steady_run_prints_ratios_and_no_noise_note():
    from sgdlab.bench.step import markdown

    result = _result_with([_row("sgdlab", 0.97, (0.95, 0.99), False), _row("torch fused", 1.0, (1.0, 1.0), False)])
    assert "0.970x (0.95-0.99)" in markdown(result) and "noisy" not in markdown(result)


def test_each_row_is_marked_noisy_from_its_own_paired_ratios(monkeypatch):
    from sgdlab.bench import step

    monkeypatch.setattr(step, "NOISE_LIMIT", 0.0)  # any spread at all counts: noisy rows are certain
    result = bench.run(["8x16k"], ["sgd-momentum"], ["sgdlab", "torch fused"], device="cpu", quick=True, rounds=3)
    rows = result.rows_for("8x16k", "sgd-momentum")
    ratios = [a / b for a, b in zip(rows["sgdlab"].samples_ms, rows["torch fused"].samples_ms)]
    assert rows["sgdlab"].noisy == (step.relative_spread(ratios) > 0.0)
    assert not rows["torch fused"].noisy  # the reference itself has no ratio to doubt
