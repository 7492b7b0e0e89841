"""The lab: tasks, optimizer specs, races, statistics, reports and plots built on the sgdlab core.

The lab depends on :mod:`sgdlab.algorithms` / :mod:`sgdlab.optim`, never the reverse. Modules:

- :mod:`sgdlab.lab.tasks`   -- ``Task`` (model factory + tensors + loss + metrics + default budget)
  and the task registry (``get_task``, ``task_names``, ``register_task``).
- :mod:`sgdlab.lab.specs`   -- optimizers by name: ``parse_spec("sgd:lr=0.1,momentum=0.9")``,
  ``OptimizerSpec.build(params)``, the registry (``register_optimizer``, ``optimizer_names``).
- :mod:`sgdlab.lab.runner`  -- ``train_run`` (one optimizer, one seed, per-epoch callback) and
  ``run_race`` (optimizers x seeds, parallel workers, resumable report directory).
- :mod:`sgdlab.lab.stats`, :mod:`sgdlab.lab.report`, :mod:`sgdlab.lab.plots` -- summaries with
  confidence intervals, the verdict, report.md / report.html and their figures.

Nothing is imported here eagerly, so ``import sgdlab.lab`` stays cheap.
"""
