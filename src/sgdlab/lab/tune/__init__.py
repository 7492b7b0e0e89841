"""``sgdlab tune``: the learning-rate range test and hyperparameter search (Optuna).

- :mod:`sgdlab.lab.tune.lr_finder` -- :func:`lr_range_test` (Smith, 2017), usable in any training
  script: sweeps the learning rate, smooths the loss, suggests a learning rate, restores everything.
- :mod:`sgdlab.lab.tune.space`     -- search spaces: per-optimizer defaults and the ``--space`` language.
- :mod:`sgdlab.lab.tune.search`    -- the Optuna study: TPE, pruning, storages, local workers
  (``SearchSetup``, ``search``; Optuna is imported only when a search runs).
- :mod:`sgdlab.lab.tune.report`    -- best vs default over seeds, plots, report.md / report.html.
"""

from sgdlab.lab.tune.lr_finder import LRRangeResult, lr_range_test, suggest_lr

__all__ = ["LRRangeResult", "lr_range_test", "suggest_lr"]
