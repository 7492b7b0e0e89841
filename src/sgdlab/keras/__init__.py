"""sgdlab's optimizers for Keras 3, on the tensorflow, torch and jax backends.

    import keras
    import sgdlab.keras

    model.compile(optimizer=sgdlab.keras.AdamW(learning_rate=1e-3), loss="mse")

``SGD``, ``Adam``, ``AdamW`` and ``Muon`` are ``keras.optimizers.Optimizer`` subclasses with Keras's
signatures, defaults and numbers, running the same rules (:mod:`sgdlab.algorithms`) as the
PyTorch classes ``sgdlab.SGD`` / ``Adam`` / ``AdamW``; ``convention="torch"`` gives them
torch.optim's formulas instead. They also bring back TensorFlow 2's ``minimize(loss, var_list)``.

This subpackage needs the ``keras`` extra (``pip install sgdlab[keras]``) and is never imported by
``import sgdlab``; Keras picks its backend from ``KERAS_BACKEND`` when it is first imported.
"""

try:
    import keras as _keras  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        "sgdlab.keras needs Keras 3: pip install 'sgdlab[keras]' (plus a backend: tensorflow, "
        "torch or jax)"
    ) from error

from sgdlab.keras.muon import Muon
from sgdlab.keras.optimizers import SGD, Adam, AdamW, RuleOptimizer
from sgdlab.keras.schedule_free import ScheduleFreeAdamW, ScheduleFreeCallback, ScheduleFreeSGD
from sgdlab.keras.swats import SWATS

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Muon",
    "RuleOptimizer",
    "SWATS",
    "ScheduleFreeSGD",
    "ScheduleFreeAdamW",
    "ScheduleFreeCallback",
]
