"""Optimizer paths as numpy arrays: run sgdlab's and torch's optimizers on 2-D functions, then draw.

    python examples/landscape_paths.py            # writes landscape_*.png in the current folder

The same runs as `sgdlab landscape`, from Python: `explore` returns the paths and losses as arrays,
so you can compute with them or draw your own figure; `.plot()` / `.animate()` draw the standard one.
"""

import functools

import numpy as np
import torch

from sgdlab.lab import landscape

# 1. Heavy-ball momentum vs plain GD vs Adam down Rosenbrock's valley; optimizers are spec strings
#    (any name `sgdlab landscape --list` shows) or factories such as functools.partial(torch.optim...).
result = landscape.explore(
    "rosenbrock",
    ["sgd:lr=1e-3", "momentum:lr=1e-3", functools.partial(torch.optim.Adam, lr=0.05)],
    steps=500,
    start=(-1.5, 2.0),
)
for t in result.trajectories:
    print(f"{t.label:28s} end {np.round(t.final, 4)}  f = {t.losses[-1]:.3g}  "
          f"distance to (1, 1) = {result.distance_to_minimum(t):.3g}")
result.plot("landscape_rosenbrock.png")

# 2. Your own function, as an expression in x and y (parsed safely, evaluated with torch), with
#    gradient noise: the dashed paths are the same optimizers with exact gradients.
noisy = landscape.explore("x**2 + 10*y**2", ["sgd:lr=0.04", "adam:lr=0.1"], steps=150,
                          start=(-2.5, 2.0), noise=2.0)
noisy.plot("landscape_noise.png")

# 3. Real mini-batch noise: least squares over 64 data points, full-batch GD vs SGD on 4 points.
batches = landscape.explore("least-squares", ["gd:lr=0.3", "sgd:lr=0.3"], steps=200, batch_size=4)
batches.plot("landscape_minibatch.png")

# Draw your own: the function on a grid and the raw paths.
X, Y, Z = result.grid(100)
print("grid", X.shape, "min on grid", Z.min().round(4), "paths", [t.path.shape for t in result.trajectories])
