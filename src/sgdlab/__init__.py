"""sgdlab: gradient-descent optimizers written once, and a lab to compare, tune and visualize them.

    import sgdlab
    opt = sgdlab.SGD(model.parameters(), lr=0.1, momentum=0.9)   # a drop-in torch.optim.SGD

The math lives in :mod:`sgdlab.algorithms`; the PyTorch classes in :mod:`sgdlab.optim`.
"""

from sgdlab.optim import (
    SAM,
    SGD,
    SWATS,
    Adam,
    AdamW,
    Muon,
    MuonWithAdamW,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Muon",
    "MuonWithAdamW",
    "SWATS",
    "ScheduleFreeSGD",
    "ScheduleFreeAdamW",
    "SAM",
    "__version__",
]
