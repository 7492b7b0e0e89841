"""Shared test configuration."""

import pytest
import torch

# Each xdist worker runs single-threaded: the suite runs many tiny ops, where thread start-up costs
# more than it saves, and workers already fill the machine's cores.
torch.set_num_threads(1)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """The C fast path as if just imported, with its kernel cache under tmp_path (returned)."""
    from sgdlab.optim import native

    monkeypatch.setattr(native, "_kernels", {})
    monkeypatch.setattr(native, "_unavailable", [])
    monkeypatch.setattr(native, "_private", [])
    monkeypatch.delenv("SGDLAB_NATIVE", raising=False)
    monkeypatch.setenv("SGDLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kernels"
