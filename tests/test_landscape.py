"""sgdlab landscape, 2-D part: test functions, the expression parser, trajectories, plots and CLI."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

from sgdlab.cli import main
from sgdlab.lab.landscape import (
    FUNCTIONS,
    UnknownFunctionError,
    explore,
    get_function,
    run_trajectory,
)
from sgdlab.lab.landscape.expression import compile_expression
from sgdlab.lab.landscape.functions import least_squares

# f = 0.5 * (x^2 + 2 y^2): curvatures 1 and 2 along the axes.
CURVATURES = np.array([1.0, 2.0])


# --- trajectories against closed forms ----------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd:lr=0.1", functools.partial(torch.optim.SGD, lr=0.1)])
def test_gradient_descent_on_a_quadratic_follows_the_closed_form_path(optimizer):
    # w_k = (1 - lr * h)^k * w_0, coordinate by coordinate.
    start = np.array([-1.8, 1.6])
    trajectory = run_trajectory("quadratic", optimizer, start=tuple(start), steps=40)
    k = np.arange(41)[:, None]
    expected = (1.0 - 0.1 * CURVATURES) ** k * start
    np.testing.assert_allclose(trajectory.path, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(trajectory.losses, 0.5 * (expected**2 * CURVATURES).sum(1), rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_on_a_quadratic_matches_the_heavy_ball_recurrence(nesterov):
    lr, mu = 0.05, 0.9
    start = np.array([-1.8, 1.6])
    spec = f"sgd:lr={lr},momentum={mu},nesterov={nesterov}"
    trajectory = run_trajectory("quadratic", spec, start=tuple(start), steps=60)
    # torch.optim's form: v <- mu v + g;  step = g + mu v (Nesterov) or v;  w <- w - lr * step.
    w, v = start.copy(), np.zeros(2)
    expected = [w.copy()]
    for _ in range(60):
        g = CURVATURES * w
        v = mu * v + g
        w = w - lr * (g + mu * v if nesterov else v)
        expected.append(w.copy())
    np.testing.assert_allclose(trajectory.path, np.array(expected), rtol=1e-11, atol=1e-14)


def test_adam_path_matches_torch_adam_on_the_same_function():
    ours = run_trajectory("rosenbrock", "adam:lr=0.05", steps=100)
    reference = run_trajectory("rosenbrock", functools.partial(torch.optim.Adam, lr=0.05), steps=100)
    np.testing.assert_allclose(ours.path, reference.path, rtol=1e-10, atol=1e-12)


def test_gradient_noise_is_seeded_and_comes_with_an_exact_gradient_reference():
    a = run_trajectory("quadratic", "sgd:lr=0.1", steps=30, noise=1.0, seed=3)
    b = run_trajectory("quadratic", "sgd:lr=0.1", steps=30, noise=1.0, seed=3)
    exact = run_trajectory("quadratic", "sgd:lr=0.1", steps=30)
    np.testing.assert_array_equal(a.path, b.path)
    assert not np.allclose(a.path, exact.path)
    np.testing.assert_array_equal(a.reference.path, exact.path)
    assert exact.reference is None


def test_mini_batches_on_least_squares_are_noisy_and_full_batch_gd_is_exact():
    problem = least_squares()
    sgd = run_trajectory(problem, "sgd:lr=0.2", steps=50, batch_size=4)
    gd = run_trajectory(problem, "gd:lr=0.2", steps=50, batch_size=4)  # full batch: ignores it
    full = run_trajectory(problem, "sgd:lr=0.2", steps=50)
    assert sgd.batch_size == 4 and sgd.reference is not None
    np.testing.assert_allclose(sgd.reference.path, full.path)
    np.testing.assert_allclose(gd.path, full.path)
    assert not np.allclose(sgd.path, full.path)


def test_a_run_that_blows_up_stops_and_says_so():
    trajectory = run_trajectory("rosenbrock", "sgd:lr=1.0", steps=200)
    assert trajectory.status in ("diverged", "escaped")
    assert trajectory.steps < 200
    assert np.isfinite(trajectory.path).all()


def test_batch_size_on_a_function_without_data_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        run_trajectory("rosenbrock", "sgd:lr=0.1", steps=5, batch_size=4)


# --- the functions ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_known_minima_and_saddles_are_stationary_points(name):
    fn = FUNCTIONS[name]
    assert fn.minima or fn.saddles
    for point in fn.minima + fn.saddles:
        assert np.linalg.norm(fn.gradient(point)) < 1e-9, point


@pytest.mark.parametrize("name", [n for n in sorted(FUNCTIONS) if FUNCTIONS[n].minima])
def test_known_minima_are_the_lowest_values_on_the_grid(name):
    fn = FUNCTIONS[name]
    _, _, Z = fn.grid(101)
    for x, y in fn.minima:
        value = float(fn(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)))
        assert value == pytest.approx(fn.min_value, abs=1e-12)
        assert value <= Z.min() + 1e-12


def test_least_squares_minimum_is_the_stationary_point_of_the_data_loss():
    problem = least_squares(n=32, seed=1)
    w = torch.tensor(problem.minima[0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(problem.batch_value(w, None), w)
    assert grad.abs().max() < 1e-12
    assert float(problem.value(w.detach())) == pytest.approx(problem.min_value, rel=1e-12)


def test_unknown_function_names_list_the_choices():
    with pytest.raises(UnknownFunctionError, match="rosenbrock.*himmelblau"):
        get_function("banana")


def test_a_callable_works_as_a_function():
    result = explore(lambda x, y: (x - 1) ** 2 + y**2, ["sgd:lr=0.25"], steps=30, start=(3.0, 1.0))
    np.testing.assert_allclose(result.trajectories[0].final, [1.0, 0.0], atol=1e-6)


# --- the expression parser ----------------------------------------------------------------------


def test_expressions_evaluate_like_the_same_torch_code():
    f = compile_expression("(1 - x)**2 + 100*(y - x**2)**2 + sin(pi*x)*exp(-abs(y)) - 2 % 3")
    x, y = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    expected = (1 - x) ** 2 + 100 * (y - x**2) ** 2 + torch.sin(torch.pi * x) * torch.exp(-y.abs()) - 2
    torch.testing.assert_close(f(x, y), expected)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "x.__class__",
        "().__class__.__bases__",
        "open('/etc/passwd')",
        "[x for x in range(3)]",
        "lambda: 1",
        "x if y else 1",
        "'text'",
        "x[0]",
        "exp(x, y)",
        "sin(x=1)",
        "z + 1",
        "eval('1')",
        "x; y",
        "",
    ],
)
def test_the_expression_parser_rejects_anything_but_arithmetic(text):
    with pytest.raises(ValueError):
        compile_expression(text)


def test_huge_constant_powers_are_refused_as_overflow_instead_of_hanging():
    with pytest.raises(ValueError, match=r"9\*\*9\*\*9 is too large .*overflow"):
        compile_expression("9**9**9 + x")


@pytest.mark.parametrize(
    "text, message",
    [
        ("2", "does not depend on x or y"),
        ("2+3", "does not depend on x or y"),
        ("sin(pi) * e", "does not depend on x or y"),
        ("10**10**10", "overflow"),
        ("1e999 * x", "overflow"),
        ("x + 1/0", "divides by zero"),
        ("x + log(0)", "log(0) is infinite"),
        ("x + (-8)**0.5", "not a real number"),
        ("-" * 300 + "x", "nested 301 levels deep"),
        ("sin(" * 150 + "x" + ")" * 150, "the limit is 100"),
        ("(" * 300 + "x" + ")" * 300, "nested parentheses"),
    ],
)
def test_expressions_without_a_usable_value_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_expression(text)


def test_constant_parts_are_computed_once_and_the_rest_follows_x_and_y():
    f = compile_expression("x * (2**0.5 * sin(pi/4)) + y**2")
    x, y = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([3.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(f(x, y), x + y**2)
    assert compile_expression("x*0")(x, y).shape == x.shape  # depends on x syntactically: accepted


def test_an_expression_as_deep_as_the_limit_compiles_and_differentiates():
    from sgdlab.lab.landscape.expression import MAX_DEPTH

    f = compile_expression("-" * (MAX_DEPTH - 1) + "x")  # MAX_DEPTH levels: the minus signs and x
    x = torch.tensor([2.0], requires_grad=True)
    f(x, x).sum().backward()
    assert x.grad.item() == (-1.0) ** (MAX_DEPTH - 1)


# --- outputs ------------------------------------------------------------------------------------


def test_the_python_api_returns_arrays():
    result = explore("himmelblau", ["sgd:lr=0.01", "adam:lr=0.1"], steps=25)
    X, Y, Z = result.grid(50)
    assert X.shape == Y.shape == Z.shape == (50, 50)
    for t in result.trajectories:
        assert t.path.shape == (26, 2) and t.losses.shape == (26,)
        assert isinstance(t.path, np.ndarray)


def test_cli_writes_png_gif_and_npz(tmp_path):
    code = main(["landscape", "quadratic", "--opt", "sgd:lr=0.1", "--opt", "adam:lr=0.1",
                 "--steps", "20", "--frames", "6", "--start", "-1.5,1", "--out", str(tmp_path)])
    assert code == 0
    from PIL import Image

    with Image.open(tmp_path / "quadratic.png") as png:
        assert png.size[0] > 800
    with Image.open(tmp_path / "quadratic.gif") as gif:
        assert gif.n_frames >= 6
        first = np.asarray(gif.convert("RGB"))
        gif.seek(gif.n_frames - 1)
        last = np.asarray(gif.convert("RGB"))
    assert (first != last).any(axis=-1).sum() > 500  # the paths grow between frames
    saved = np.load(tmp_path / "quadratic.npz")
    assert saved["path_0"].shape == (21, 2)
    np.testing.assert_allclose(saved["path_0"][0], [-1.5, 1.0])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["banana"], "unknown function 'banana'"),
        (["--opt", "nosuch:lr=1"], "unknown optimizer 'nosuch'"),
        (["x.real"], "not allowed"),
        (["2"], "does not depend on x or y"),
        (["2+3"], "does not depend on x or y"),
        (["10**10**10"], "overflow"),
        (["x" + "+x" * 300], "nested"),
    ],
)
def test_cli_bad_names_exit_2_with_the_choices(argv, message, capsys, tmp_path):
    code = main(["landscape", *argv, "--steps", "3", "--no-animation", "--out", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_mp4_without_ffmpeg_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    from sgdlab.lab.landscape import plots

    monkeypatch.setattr(plots.shutil, "which", lambda name: None)
    result = explore("quadratic", ["sgd:lr=0.1"], steps=5)
    with pytest.raises(ValueError, match="ffmpeg"):
        result.animate(tmp_path / "paths.mp4")
    with pytest.raises(ValueError, match=".gif or .mp4"):
        result.animate(tmp_path / "paths.avi")


def test_optimizers_that_need_a_closure_get_one():
    # L-BFGS evaluates the closure several times per step; it must see the same function.
    lbfgs = functools.partial(torch.optim.LBFGS, lr=0.5, max_iter=5, line_search_fn="strong_wolfe")
    trajectory = run_trajectory("rosenbrock", lbfgs, steps=30)
    np.testing.assert_allclose(trajectory.final, [1.0, 1.0], atol=1e-4)
    assert trajectory.losses[-1] == pytest.approx(float(FUNCTIONS["rosenbrock"].value(torch.tensor(trajectory.final))))


def test_schedule_free_paths_show_the_evaluation_point():
    trajectory = run_trajectory("quadratic", "schedulefree_sgd:lr=0.1", steps=20)
    assert trajectory.status == "ok" and trajectory.path.shape == (21, 2)
    values = [float(FUNCTIONS["quadratic"].value(torch.tensor(p))) for p in trajectory.path]
    np.testing.assert_allclose(trajectory.losses, values, rtol=1e-12)
    assert trajectory.losses[-1] < 0.1 * trajectory.losses[0]


def test_mp4_frames_are_piped_to_ffmpeg_as_raw_rgb(tmp_path, monkeypatch):
    # No ffmpeg needed: check what would be sent to it (size, rate, pixel format, byte count).
    import subprocess

    from sgdlab.lab.landscape import plots

    calls = []
    monkeypatch.setattr(plots.shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setattr(subprocess, "run", lambda command, input, check: calls.append((command, input)))
    result = explore("quadratic", ["sgd:lr=0.1"], steps=10)
    result.animate(tmp_path / "paths.mp4", frames=5, fps=10, resolution=40)
    (command, data), = calls
    width, height = map(int, command[command.index("-s") + 1].split("x"))
    assert command[0] == "ffmpeg" and command[-1] == str(tmp_path / "paths.mp4")
    assert command[command.index("-pix_fmt") + 1] == "rgb24" and command[command.index("-r") + 1] == "10"
    assert len(data) == width * height * 3 * (5 + 10)  # 5 frames, then the last held for 1 s
