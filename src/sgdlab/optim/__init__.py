"""PyTorch adapters: ``torch.optim.Optimizer`` subclasses that execute the rules in
``sgdlab.algorithms``. They hold no optimizer math of their own."""

from sgdlab.optim.adam import Adam, AdamW
from sgdlab.optim.base import RuleOptimizer
from sgdlab.optim.sgd import SGD

__all__ = ["Adam", "AdamW", "RuleOptimizer", "SGD"]
