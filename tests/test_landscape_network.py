"""sgdlab landscape, real-network part: sharpness, filter-normalized directions, lines and slices."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from sgdlab.cli import main
from sgdlab.lab.landscape.network import (
    FlatLoss,
    filter_normalized_direction,
    hessian_top_eigenvalue,
    network_landscape,
)
from sgdlab.lab.tasks import MLP, Task


def test_power_iteration_recovers_the_top_eigenvalue_of_a_known_quadratic():
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    spectrum = torch.tensor([7.0, 3.0, 1.0, 0.5, 0.1, -0.2], dtype=torch.float64)
    A = q @ torch.diag(spectrum) @ q.T
    eigenvalue, products = hessian_top_eigenvalue(
        lambda theta: 0.5 * theta @ A @ theta, torch.ones(6, dtype=torch.float64), iters=200, tol=1e-12
    )
    assert eigenvalue == pytest.approx(7.0, rel=1e-8)
    assert products < 200


def test_sharpness_of_a_linear_least_squares_model_is_the_top_eigenvalue_of_its_hessian():
    # Loss mean((x w - y)^2) has the constant Hessian (2/n) X^T X.
    torch.manual_seed(0)
    x = torch.randn(40, 5, dtype=torch.float64) * torch.tensor([3.0, 1.0, 1.0, 0.5, 0.2], dtype=torch.float64)
    y = torch.randn(40, 1, dtype=torch.float64)
    model = torch.nn.Linear(5, 1, bias=False).double()
    flat = FlatLoss(model, torch.nn.functional.mse_loss, x, y)
    expected = torch.linalg.eigvalsh(2.0 / 40 * x.T @ x).max().item()
    eigenvalue, _ = hessian_top_eigenvalue(flat, flat.flatten(model), iters=300, tol=1e-12)
    assert eigenvalue == pytest.approx(expected, rel=1e-6)


def test_filter_normalized_directions_match_each_filters_norm_and_skip_biases():
    layer = torch.nn.Conv1d(3, 4, 5)
    params = [layer.weight.detach(), layer.bias.detach()]
    weight, bias = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    torch.testing.assert_close(weight.reshape(4, -1).norm(dim=1), params[0].reshape(4, -1).norm(dim=1))
    assert torch.count_nonzero(bias) == 0
    _, scaled_bias = filter_normalized_direction(params, torch.Generator().manual_seed(0), ignore_1d=False)
    torch.testing.assert_close(scaled_bias.norm(), params[1].norm())


@pytest.fixture(scope="module")
def tiny_task() -> Task:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return Task(name="tiny", model=functools.partial(MLP, (4, 8, 3)), x_train=x[:64], y_train=y[:64],
                x_test=x[64:], y_test=y[64:], epochs=3, batch_size=16)


@pytest.fixture(scope="module")
def tiny_landscape(tiny_task):
    return network_landscape(tiny_task, ["sgd:lr=0.1", "adam:lr=0.01"], resolution=5, line_points=8,
                             hessian_iters=8)


def test_lines_start_at_the_shared_initialisation_and_end_at_each_solution(tiny_landscape):
    result = tiny_landscape
    alphas = result.line_alphas
    at0, at1 = int(np.argmin(np.abs(alphas))), int(np.argmin(np.abs(alphas - 1.0)))
    assert alphas[at0] == pytest.approx(0.0) and alphas[at1] == pytest.approx(1.0)
    sgd, adam = result.init_lines["sgd:lr=0.1"], result.init_lines["adam:lr=0.01"]
    assert sgd[at0] == pytest.approx(adam[at0], rel=1e-6)  # same seed, same initial weights
    for solution in result.solutions:
        line = result.init_lines[solution.label]
        assert line[at1] == pytest.approx(solution.train_loss, rel=1e-5)
        assert line[at1] < line[at0]
    pair = result.pair_lines[("sgd:lr=0.1", "adam:lr=0.01")]
    assert pair[at0] == pytest.approx(sgd[at1], rel=1e-5)
    assert pair[at1] == pytest.approx(adam[at1], rel=1e-5)


def test_slices_are_centred_on_each_solution(tiny_landscape):
    result = tiny_landscape
    assert result.slice_coords.shape == (5,) and result.slice_coords[2] == 0.0
    for solution in result.solutions:
        grid = result.slices[solution.label]
        assert grid.shape == (5, 5)
        assert grid[2, 2] == pytest.approx(solution.train_loss, rel=1e-5)
        assert np.isfinite(solution.sharpness) and solution.sharpness > 0


def test_network_figure_and_arrays_are_written(tiny_landscape, tmp_path):
    tiny_landscape.plot(tmp_path / "tiny.png")
    saved = np.load(tiny_landscape.save(tmp_path / "tiny.npz"))
    assert (tmp_path / "tiny.png").stat().st_size > 10_000
    assert saved["slice_0"].shape == (5, 5)
    assert list(saved["labels"]) == ["sgd:lr=0.1", "adam:lr=0.01"]


def test_cli_unknown_task_exits_2_listing_the_tasks(capsys, tmp_path):
    assert main(["landscape", "--task", "nosuch", "--out", str(tmp_path)]) == 2
    assert "digits" in capsys.readouterr().err


def test_a_diverging_optimizer_is_reported_and_the_others_still_get_their_landscape(tiny_task, tmp_path):
    result = network_landscape(tiny_task, ["sgd:lr=1e6,label=blowup", "adam:lr=0.01"], resolution=3,
                               line_points=4, hessian_iters=3)
    blowup, adam = result.solutions
    assert blowup.status == "diverged" and np.isnan(blowup.sharpness)
    assert "blowup" not in result.slices and "blowup" not in result.init_lines
    assert adam.status == "finished" and result.slices["adam:lr=0.01"].shape == (3, 3)
    result.plot(tmp_path / "partial.png")
