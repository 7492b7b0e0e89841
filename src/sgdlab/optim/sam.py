"""``sgdlab.SAM``: sharpness-aware minimization around any optimizer (SAM and ASAM).

SAM needs two gradients per step, at w and at the perturbed point w + e(w), so ``step`` takes a
closure and calls it twice::

    base = sgdlab.SGD(model.parameters(), lr=0.1, momentum=0.9)      # or any torch.optim optimizer
    optimizer = sgdlab.SAM(base, rho=0.05)                           # adaptive=True for ASAM

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)      # the loss at w, before the perturbation

``SAM(params, SomeOptimizerClass, rho=..., **base_kwargs)`` builds the base optimizer itself.
For loops that compute the first gradient themselves (gradient clipping, AMP scalers), call
``first_step()``, re-run forward and backward, then ``second_step()``.

The wrapper shares the base optimizer's ``param_groups`` (each group also carries ``rho``,
``adaptive`` and ``eta``, so they can differ per group), which is why learning-rate schedulers
work on it directly; ``state_dict()`` is the base optimizer's, with those keys in its groups.
The ascent-step math is in :mod:`sgdlab.algorithms.sam`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from sgdlab.algorithms.sam import perturbation, scaled_gradient, validate_sam
from sgdlab.optim import sharded


class SAM(Optimizer):
    """Sharpness-aware minimization (Foret et al. 2021); ``adaptive=True`` gives ASAM (Kwon et al.
    2021) with weight scale ``|w| + eta``.

    ``base_optimizer`` is either an optimizer instance (pass it as the first argument) or an
    optimizer class, built as ``base_optimizer(params, **kwargs)``.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] | Callable[..., Optimizer] | None = None,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        **kwargs: Any,
    ) -> None:
        validate_sam(rho=rho, eta=eta)
        if sharded.zero_process_group() is not None:
            raise TypeError(
                "SAM cannot be the optimizer_class of ZeroRedundancyOptimizer: each rank would "
                "perturb only its partition of the weights, with the norm of its partition of "
                "the gradient; wrap the other way: SAM(ZeroRedundancyOptimizer(params, "
                "optimizer_class=sgdlab.SGD, ...), rho=...)"
            )
        if isinstance(params, Optimizer):
            if base_optimizer is not None or kwargs:
                raise ValueError(
                    "SAM(optimizer, ...) wraps an existing optimizer: pass no base_optimizer and "
                    f"no optimizer arguments (got base_optimizer={base_optimizer!r}, "
                    f"arguments {sorted(kwargs)})"
                )
            base = params
        elif base_optimizer is None:
            raise ValueError(
                "SAM needs a base optimizer: SAM(sgdlab.SGD(params, lr=0.1)) or "
                "SAM(params, sgdlab.SGD, lr=0.1)"
            )
        elif isinstance(base_optimizer, Optimizer):
            raise ValueError(
                "base_optimizer is already an optimizer instance: pass it as the first argument, "
                "SAM(optimizer, rho=...)"
            )
        else:
            base = base_optimizer(params, **kwargs)
        self.base_optimizer = base
        defaults = {"rho": rho, "adaptive": adaptive, "eta": eta}
        # Passing the base's group dicts makes them *shared*: torch's add_param_group fills in the
        # SAM defaults on the same dict objects the base optimizer reads its hyperparameters from.
        super().__init__(base.param_groups, defaults)
        self.param_groups = base.param_groups  # one list: groups added later are the base's too
        self.state = base.state
        self.defaults = {**base.defaults, **defaults}
        self._origin: dict[Tensor, Tensor] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        validate_sam(**{k: param_group[k] for k in ("rho", "eta") if k in param_group})
        for key in ("rho", "adaptive", "eta"):
            param_group.setdefault(key, self.defaults[key])
        if any(group is param_group for group in self.base_optimizer.param_groups):
            super().add_param_group(param_group)  # the base's own groups, while constructing
        else:
            self.base_optimizer.add_param_group(param_group)

    # --- the two passes ------------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move the weights to w + e(w), the worst point of the neighbourhood to first order."""
        if self._origin:
            raise RuntimeError("SAM.first_step() was called twice without second_step() in between")
        with_grad = [
            (group, p) for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        if not with_grad:
            return
        # On FSDP2 shards each rank works on its local shards (the perturbation is elementwise)
        # and the norm is taken over every rank's: the same as one process with whole tensors.
        local = sharded.local
        norms = [
            torch.linalg.vector_norm(
                scaled_gradient(local(p), local(p.grad), adaptive=group["adaptive"],
                                eta=group["eta"], ops=torch)
            ).to(local(with_grad[0][1]).device)
            for group, p in with_grad
        ]
        grad_norm = torch.linalg.vector_norm(torch.stack(norms))
        params = [p for _, p in with_grad]
        if sharded.reduction_groups(params):
            (square,) = sharded.global_sum([float(grad_norm) ** 2], params)
            grad_norm = torch.tensor(square, dtype=torch.float64).sqrt().to(grad_norm)
        for group, p in with_grad:
            e = perturbation(
                local(p),
                local(p.grad),
                rho=group["rho"],
                grad_norm=grad_norm.to(local(p).device),
                adaptive=group["adaptive"],
                eta=group["eta"],
                ops=torch,
            )
            self._origin[p] = local(p).clone()
            local(p).add_(e)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to w and let the base optimizer step with the gradient taken at w + e(w)."""
        self._restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def _restore(self) -> None:
        for p, origin in self._origin.items():
            sharded.local(p).copy_(origin)
        self._origin.clear()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Both passes. ``closure`` computes the loss and its gradients; it is called at w and at
        w + e(w) (gradients are zeroed before each call) and the loss at w is returned."""
        if closure is None:
            raise RuntimeError(
                "SAM.step() needs a closure that computes the loss, calls backward() and returns "
                "the loss (it is evaluated twice); or call first_step(), recompute the gradients, "
                "then second_step()"
            )
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                closure()
        except BaseException:
            self._restore()  # back to w, without a step on a half-computed gradient
            raise
        self.second_step()
        return loss

    # --- checkpoints: the base optimizer's, whose groups carry rho/adaptive/eta -----------------
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        for group in self.param_groups:  # a checkpoint of the bare base optimizer lacks these
            for key in ("rho", "adaptive", "eta"):
                group.setdefault(key, self.defaults[key])

    def __repr__(self) -> str:
        return f"SAM(rho={self.defaults['rho']}, adaptive={self.defaults['adaptive']}, base={self.base_optimizer!r})"
