"""Where Keras's and PyTorch's SGD differ, and how `convention` carries a recipe across.

Minimizes f(w) = w^2 / 2 from w = 1 for 8 steps with momentum 0.9, three ways: a constant learning
rate, a learning rate that drops from 0.1 to 0.01 after step 4, and weight decay 0.1. For each it
prints w after every step for Keras's SGD and PyTorch's SGD, and the two sgdlab classes set to
the *other* framework's convention, which reproduce them.

    KERAS_BACKEND=torch python examples/keras_torch_conventions.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import sgdlab  # noqa: E402
import sgdlab.keras  # noqa: E402

STEPS = 8


def keras_run(optimizer):
    w = keras.Variable(np.float64(1.0), dtype="float64")
    values = []
    for _ in range(STEPS):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(w.numpy()), w)])  # grad = w
        values.append(float(w.numpy()))
    return values


def torch_run(optimizer_class, lr_at, **options):
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_class([w], lr=lr_at(0), **options)
    values = []
    for step in range(STEPS):
        optimizer.param_groups[0]["lr"] = lr_at(step)
        w.grad = w.detach().clone()
        optimizer.step()
        values.append(w.item())
    return values


def main():
    drop = keras.optimizers.schedules.PiecewiseConstantDecay([3], [0.1, 0.01])
    cases = {
        "constant lr 0.1": (0.1, lambda step: 0.1, {}),
        "lr 0.1, then 0.01 from step 5": (drop, lambda step: 0.1 if step <= 3 else 0.01, {}),
        "constant lr 0.1, weight_decay 0.1": (0.1, lambda step: 0.1, {"weight_decay": 0.1}),
    }
    for title, (keras_lr, lr_at, options) in cases.items():
        rows = {
            "keras.optimizers.SGD": keras_run(
                keras.optimizers.SGD(learning_rate=keras_lr, momentum=0.9, **options)
            ),
            "sgdlab.SGD(convention='keras')": torch_run(
                sgdlab.SGD, lr_at, momentum=0.9, convention="keras", **options
            ),
            "torch.optim.SGD": torch_run(torch.optim.SGD, lr_at, momentum=0.9, **options),
            "sgdlab.keras.SGD(convention='torch')": keras_run(
                sgdlab.keras.SGD(
                    learning_rate=keras_lr, momentum=0.9, convention="torch", **options
                )
            ),
        }
        print(f"\n{title}: w after each step")
        for name, values in rows.items():
            print(f"  {name:38s}" + " ".join(f"{v:8.5f}" for v in values))
        gap = max(abs(a - b) for a, b in zip(rows["keras.optimizers.SGD"], rows["torch.optim.SGD"]))
        print(f"  largest Keras-vs-PyTorch gap: {gap:.2e}")


if __name__ == "__main__":
    main()
