"""A rule traced into an elementwise program, and running it: the old names, re-exported.

* :mod:`sgdlab.optim.tracing`: tracing a rule into a program (``trace``, ``Program``, ``Lazy``,
  ``TraceError``, ``ELEMENTWISE``);
* :mod:`sgdlab.optim.bfloat16`: the stochastic-rounding codec (``round_to_bfloat16``, ``HASH``);
* :mod:`sgdlab.optim.runners`: the program as eager or compiled functions, cached per text
  (``eager``, ``compiled``, ``compiled_batch``, ``worth_compiling``, ``scalar_inputs``).

The names below are copies: patch a function on the module that owns it (above).
"""

from sgdlab.optim.bfloat16 import HASH, round_to_bfloat16  # noqa: F401 - re-exported
from sgdlab.optim.runners import (  # noqa: F401
    compiled,
    compiled_batch,
    eager,
    scalar_inputs,
    worth_compiling,
)
from sgdlab.optim.tracing import ELEMENTWISE, Lazy, Program, TraceError, trace  # noqa: F401
