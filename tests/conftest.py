"""Shared test configuration."""

import torch

# Each xdist worker runs single-threaded: the suite runs many tiny ops, where thread start-up costs
# more than it saves, and workers already fill the machine's cores.
torch.set_num_threads(1)
