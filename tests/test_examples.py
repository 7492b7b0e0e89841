"""The scripts in examples/ run and do what their docstrings promise."""

import pathlib
import runpy

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_sgd_example_prints_a_falling_loss(capsys):
    runpy.run_path(str(EXAMPLES / "sgd_linear_regression.py"), run_name="__main__")
    losses = [float(line.split()[-1]) for line in capsys.readouterr().out.splitlines()]
    assert len(losses) == 11
    assert losses[-1] < 0.8 * losses[0]
