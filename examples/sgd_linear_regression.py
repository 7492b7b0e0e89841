"""The classic torch.optim snippet, with sgdlab.SGD in place of torch.optim.SGD.

    python examples/sgd_linear_regression.py

prints the loss falling as a 3 -> 2 linear model fits random targets.
"""

import torch
import torch.nn as nn

import sgdlab

torch.manual_seed(0)
model = nn.Linear(3, 2)
criterion = nn.MSELoss()
optimizer = sgdlab.SGD(model.parameters(), lr=0.01, momentum=0.9)

x = torch.randn(10, 3)
y = torch.randn(10, 2)

for epoch in range(1, 201):
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    if epoch == 1 or epoch % 20 == 0:
        print(f"epoch {epoch:3d}  loss {loss.item():.4f}")
