"""How a rule is executed over a parameter group's tensors: the old names, re-exported.

The execution engine lives in modules with one job each (no optimizer math in any of them):

* :mod:`sgdlab.optim.per_tensor`: the reference, one eager rule call per tensor
  (``per_tensor``, ``rule_state``, ``write_back``, ``COUNTERS``);
* :mod:`sgdlab.optim.grouped`: the fast default, the rule traced once per step and run over
  the whole group (``grouped_supported``, ``grouped``; ``COMPILE_MIN_NUMEL``, ``BATCH_SLOTS``,
  ``COMPACT_DTYPES`` and the ``_compile_failed`` flag);
* :mod:`sgdlab.optim.layout`: the group's state in flat buffers (``GroupLayout``, ``Bucket``;
  ``BIG_TENSOR_NUMEL``, ``BUCKET_NUMEL``);
* :mod:`sgdlab.optim.tracing`, :mod:`sgdlab.optim.runners`, :mod:`sgdlab.optim.native`: the
  traced program, and running it in PyTorch (eager, Inductor) or as one C loop.

The names below are copies: reading them works, but a setting patched here changes nothing.
Set ``COMPILE_MIN_NUMEL``, ``BUCKET_NUMEL``, ... on the module that owns it (above).
"""

from sgdlab.optim.grouped import (  # noqa: F401 - re-exported
    BATCH_SLOTS,
    COMPACT_DTYPES,
    COMPILE_MIN_NUMEL,
    COMPILED_DTYPES,
    grouped,
    grouped_supported,
)
from sgdlab.optim.layout import BIG_TENSOR_NUMEL, BUCKET_NUMEL, Bucket, GroupLayout  # noqa: F401
from sgdlab.optim.per_tensor import COUNTERS, Rule, per_tensor, rule_state, write_back  # noqa: F401
