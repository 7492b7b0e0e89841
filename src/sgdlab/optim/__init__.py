"""PyTorch adapters: ``torch.optim.Optimizer`` subclasses that execute the rules in
``sgdlab.algorithms``. They hold no optimizer math of their own."""

from sgdlab.optim.adam import Adam, AdamW
from sgdlab.optim.base import RuleOptimizer
from sgdlab.optim.compact import compact_state, widen_state_dict
from sgdlab.optim.in_backward import optimizer_in_backward
from sgdlab.optim.muon import Muon, MuonWithAdamW
from sgdlab.optim.sgd import SGD
from sgdlab.optim.sam import SAM
from sgdlab.optim.schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from sgdlab.optim.swats import SWATS

__all__ = [
    "Adam",
    "AdamW",
    "Muon",
    "MuonWithAdamW",
    "RuleOptimizer",
    "SGD",
    "SAM",
    "SWATS",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "compact_state",
    "optimizer_in_backward",
    "widen_state_dict",
]
