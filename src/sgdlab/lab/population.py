"""Vectorized populations: the runs of one optimizer (its seeds, and the specs of a sweep that
differ only in hyperparameters such as the learning rate) trained as one model in one loop.

The members' parameters are stacked along a leading *population* axis (``torch.func``:
``functional_call`` under ``vmap`` runs the forward and backward of every member at once, each on
its own mini-batches, in its own data order). The update is the optimizer's own pure rule from
:mod:`sgdlab.algorithms`, called once on the stacked tensors: hyperparameters that all members
share stay Python numbers (the same code path as one run), those that differ become tensors shaped
``[members, 1, ...]`` that broadcast along the population axis. An elementwise rule applied to
stacked tensors is exactly one step per member, so nothing about the math is rewritten here.

What a member produces is what :func:`sgdlab.lab.runner.train_run` produces for it: the same
records (the numbers agree to float tolerance, since batched kernels sum in another order), the
same checkpoint file, in the same format (a population resumes from one-at-a-time checkpoints
and the other way round). A member whose loss becomes NaN or infinite is recorded as diverged
and leaves the population; the others go on.

What cannot be vectorized runs one at a time, as before, and says so once: optimizers whose
declared rule is not elementwise (``Rule.elementwise``: SWATS, Muon) or that act on a whole group
between steps (schedule-free), SAM and torch.optim classes, compact state, and models ``vmap``
cannot trace.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from sgdlab.lab import runner
from sgdlab.lab.runner import DIVERGED, FINISHED, Budget, RunResult, run_id

STOPPED = "stopped"  # ended by the caller (stop_on), e.g. a pruned trial
from sgdlab.lab.specs import STATE_KEYS, OptimizerSpec
from sgdlab.lab.tasks import Task

_AXIS: dict[tuple[Any, ...], tuple[str, ...]] = {}


def _axis_hyperparameters(optimizer: Any) -> tuple[str, ...]:
    """The hyperparameters of ``optimizer``'s rule that may differ between the members of one
    population, as tensors along the population axis: those the update only computes with, not
    those it branches on in Python (``if weight_decay != 0``), which must be equal. Found by
    trying two steps of the update on a two-member stack, once per optimizer configuration."""
    from sgdlab.optim import torch_ops
    from sgdlab.optim.execution import rule_state

    group = optimizer.param_groups[0]
    arguments = optimizer.rule_hyperparameters(group)
    key = (type(optimizer), tuple(sorted((k, repr(v)) for k, v in arguments.items())))
    if key not in _AXIS:
        rule = optimizer.rule_for(group)
        axis = []
        for name, value in arguments.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            trial = {**arguments, name: torch.tensor([float(value)] * 2).view(2, 1)}
            param = torch.full((2, 3), 0.5)
            state = optimizer.init_state(param, group)
            try:
                with torch.no_grad():
                    for _ in range(2):
                        param, state = rule(param, torch.full((2, 3), 0.1), rule_state(state, capturable=False),
                                            ops=torch_ops, **trial)
            except Exception:  # noqa: BLE001 - e.g. "Boolean value of Tensor ... is ambiguous"
                continue
            axis.append(name)
        _AXIS[key] = tuple(axis)
    return _AXIS[key]


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of a population: an optimizer spec, a seed and, optionally, its checkpoint file
    (the same file :func:`sgdlab.lab.runner.train_run` would use)."""

    spec: OptimizerSpec
    seed: int
    checkpoint: str | None = None


def _probe_optimizer(spec: OptimizerSpec, task: Task) -> tuple[Any, str | None]:
    """The spec's optimizer on a dummy parameter, and why it cannot run in a population (None: it can)."""
    from sgdlab.optim.base import RuleOptimizer

    if any(key in spec.hyperparameters for key in STATE_KEYS):
        return None, "compact optimizer state"
    if not spec.schedule(task).constant:
        return None, "a learning-rate schedule"
    if spec.full_batch:
        # One step on the whole training set: at such batches one model's kernels beat the
        # grouped ones (measured: 3 gd runs of MNIST-1D, 6.6 s as a population, 4.3 s alone).
        return None, "full batch, where one model's kernels are faster"
    optimizer = spec.build([torch.zeros(2, requires_grad=True)], task)
    if not isinstance(optimizer, RuleOptimizer):
        return None, "not an sgdlab rule"
    declaration = type(optimizer).declaration
    if declaration is None or not declaration.elementwise or declaration.routes:
        return None, "its rule is not elementwise"
    if type(optimizer).has_group_hooks or len(optimizer.param_groups) != 1:
        return None, "steps a whole group at once"
    group = optimizer.param_groups[0]
    if group.get("differentiable") or group.get("state_dtype") is not None:
        return None, "differentiable or compact"
    if any(torch.is_tensor(v) for v in optimizer.rule_hyperparameters(group).values()):
        return None, "tensor hyperparameters"
    return optimizer, None


def population_key(spec: OptimizerSpec, task: Task) -> tuple[Any, ...] | None:
    """Specs with equal keys train in one population (None: this spec runs one at a time). The key
    holds everything but the hyperparameters that may differ along the population axis."""
    optimizer, reason = _probe_optimizer(spec, task)
    if reason is not None:
        return None
    group = optimizer.param_groups[0]
    axis = _axis_hyperparameters(optimizer)
    fixed = sorted((k, repr(v)) for k, v in optimizer.rule_hyperparameters(group).items() if k not in axis)
    return (type(optimizer).__qualname__, spec.full_batch, tuple(fixed))


def why_not(spec: OptimizerSpec, task: Task) -> str | None:
    return _probe_optimizer(spec, task)[1]


_TRACEABLE: dict[tuple[str, str, str], str | None] = {}


def model_problem(task: Task) -> str | None:
    """Why ``vmap`` cannot train the task's model (None: it can), found with one tiny step of a
    two-member population; remembered per task."""
    key = (task.name, task.fingerprint(), repr(task.model))
    if key not in _TRACEABLE:
        try:
            models = []
            with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
                for seed in (0, 1):
                    torch.manual_seed(seed)
                    models.append(task.model())
            net = _Net(task, models)
            index = torch.arange(min(2, task.n_train))
            losses = net.losses(net.params(), task.x_train[index].expand(2, *task.x_train[index].shape),
                                task.y_train[index].expand(2, *task.y_train[index].shape), batched=True)
            torch.autograd.grad(losses.sum(), list(net.stacked.values()))
            _TRACEABLE[key] = None
        except Exception as error:  # noqa: BLE001 - any failure means: one at a time
            _TRACEABLE[key] = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    return _TRACEABLE[key]


class _Net:
    """The members' models as one: stacked parameters and buffers, a vmapped forward and loss."""

    def __init__(self, task: Task, models: Sequence[torch.nn.Module]) -> None:
        self.task = task
        self.base = models[0]
        self.names = [name for name, _ in self.base.named_parameters()]
        self.stacked = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
                        .requires_grad_() for name in self.names}
        self.buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in models])
                        for name, _ in self.base.named_buffers()}

    def params(self) -> dict[str, torch.Tensor]:
        return self.stacked

    def _forward(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.base, (params, buffers), (x,))

    def losses(self, params: dict, x: torch.Tensor, y: torch.Tensor, batched: bool) -> torch.Tensor:
        """Each member's mean loss on its batch (``x``: ``[members, batch, ...]`` when ``batched``,
        else one batch for all)."""
        dim = 0 if batched else None

        def member_loss(p, b, xb, yb):
            return self.task.loss(self._forward(p, b, xb), yb)

        return torch.func.vmap(member_loss, in_dims=(0, 0, dim, dim))(params, self.buffers, x, y)

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """The outputs on ``x`` of the members at ``indices`` (in eval mode), one tensor each.

        Member by member, in the chunks runner.evaluate uses, not vmapped: with no backward to
        share and large batches, one model's kernels are faster than the grouped ones (measured:
        8 members of the MNIST-1D CNN, 0.15 s member by member against 0.36 s vmapped), and
        they are the very kernels of a run alone."""
        was_training = self.base.training
        self.base.eval()
        try:
            outputs = []
            for i in indices:
                params = {k: v.detach()[i] for k, v in self.stacked.items()}
                buffers = {k: v[i] for k, v in self.buffers.items()}
                outputs.append(torch.cat([
                    torch.func.functional_call(self.base, (params, buffers), (x[first : first + runner._EVAL_CHUNK],))
                    for first in range(0, len(x), runner._EVAL_CHUNK)]))
            return outputs
        finally:
            self.base.train(was_training)

    def keep(self, alive: torch.Tensor) -> None:
        """Drop the members not in ``alive`` (indices into the current stack)."""
        self.stacked = {k: v.detach()[alive].requires_grad_() for k, v in self.stacked.items()}
        self.buffers = {k: v[alive] for k, v in self.buffers.items()}


@dataclasses.dataclass
class _State:
    """One member's bookkeeping, as train_run keeps it."""

    member: Member
    rid: str
    model: torch.nn.Module
    optimizer: Any
    shuffle: torch.Generator
    epoch: int = 0
    step: int = 0
    examples: int = 0
    seconds: float = 0.0
    records: list = dataclasses.field(default_factory=list)
    status: str | None = None
    error: str | None = None

    @property
    def position(self) -> tuple[int, int, int]:
        return (self.epoch, self.step, self.examples)


def _fresh(task: Task, member: Member, rid: str) -> _State:
    torch.manual_seed(member.seed)  # as train_run: the initial weights depend on the seed only
    model = task.model()
    optimizer = member.spec.build(model.parameters(), task)
    return _State(member, rid, model, optimizer, torch.Generator().manual_seed(member.seed))


def _load(task: Task, member: Member, rid: str) -> _State:
    """The member's state from its checkpoint (train_run's format), or a fresh one."""
    state = _fresh(task, member, rid)
    path = Path(member.checkpoint) if member.checkpoint else None
    if path is None or not path.exists():
        return state
    try:
        saved = torch.load(path, weights_only=False)
        state.records, state.status, state.error = saved["records"], saved["status"], saved.get("error")
        if state.status is None:
            state.model.load_state_dict(saved["model"])
            state.optimizer.load_state_dict(saved["optimizer"])
            state.shuffle.set_state(saved["shuffle"])
            state.epoch, state.step = saved["epoch"], saved["step"]
            state.examples, state.seconds = saved["examples"], saved["seconds"]
        return state
    except Exception as error:  # noqa: BLE001 - as train_run: set the damaged file aside, start over
        aside = runner.set_aside(path)
        runner._warn(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); moved to "
                     f"{aside.name}, the run starts over")
        return _fresh(task, member, rid)


def train_population(
    task: Task,
    members: Sequence[Member],
    *,
    epochs: int | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    batch_size: int | None = None,
    on_eval: Callable[[dict[str, Any]], Any] | None = None,
    on_progress: Callable[[tuple[str, int], float], Any] | None = None,
    stop_on: tuple[type[BaseException], ...] = (),
    stop_at: tuple[str, float, bool] | None = None,
) -> list[RunResult]:
    """Train ``members``: those of one :func:`population_key` as one population, the others one at
    a time with :func:`train_run`. One :class:`RunResult` per member, in order, equal (to float
    tolerance) to what :func:`train_run` gives each.

    ``on_eval(record)`` is called for every record of every member; ``on_progress((label, seed),
    fraction)`` as the budget is used. Members resumed from checkpoints at different points train
    as separate populations, one after the other. An exception of a type in ``stop_on`` raised by
    ``on_eval`` (a tuner's prune signal) ends that member alone, with status ``"stopped"`` and the
    exception in its ``error``; any other exception propagates, as from :func:`train_run`.
    """
    budget = Budget(epochs, steps, time_budget, stop_at).resolve(task)
    results: dict[int, RunResult] = {}
    batches: dict[Any, list[int]] = {}
    traceable = model_problem(task) is None
    for i, m in enumerate(members):
        key = population_key(m.spec, task) if traceable else None
        # One population per batch size (full-batch specs see other batches); inside it, one
        # optimizer group per population_key.
        batches.setdefault(("together", m.spec.full_batch) if key is not None else ("alone", i), []).append(i)
    for key, indices in batches.items():
        if key[0] == "alone":
            m = members[indices[0]]
            try:
                results[indices[0]] = runner.train_run(
                    task, m.spec, m.seed, epochs=budget.epochs, steps=budget.steps, time_budget=budget.time_budget,
                    batch_size=batch_size, checkpoint=m.checkpoint, on_eval=on_eval, stop_at=budget.stop_at,
                    on_progress=None if on_progress is None else
                    (lambda f, label=(m.spec.label, m.seed): on_progress(label, f)))
            except stop_on as error:  # as in a population: this run ends, the others go on
                results[indices[0]] = RunResult("", m.spec.label, m.seed, STOPPED, [], f"{type(error).__name__}: {error}")
            continue
        batch = task.n_train if key[1] else int(batch_size or task.batch_size)
        if batch < 1:
            raise ValueError(f"batch_size={batch} (expected >= 1)")
        states = [_load(task, members[i], run_id(task, members[i].spec, members[i].seed, budget, batch))
                  for i in indices]
        pending = [s for s in states if s.status is None]
        while pending:
            position = pending[0].position
            now = [s for s in pending if s.position == position]
            _train(task, now, budget, batch, on_eval, on_progress, stop_on)
            pending = [s for s in pending if s.status is None and s not in now]
        for i, s in zip(indices, states):
            results[i] = RunResult(s.rid, s.member.spec.label, s.member.seed, s.status, s.records, s.error)
    return [results[i] for i in range(len(members))]


def _stack_state(states: list[_State], stacked: dict[str, torch.Tensor], names: list[str],
                 group: dict) -> dict[str, dict[str, Any]]:
    """The optimizer state per parameter name, stacked along the population axis."""
    out = {}
    for name in names:
        params = [dict(s.model.named_parameters())[name] for s in states]
        saved = [s.optimizer.state.get(p, {}) for s, p in zip(states, params)]
        stacked_param = stacked[name]
        if not any(saved):
            out[name] = states[0].optimizer.init_state(stacked_param, group)
            continue
        entry = {}
        for key in saved[0]:
            values = [entry_[key] for entry_ in saved]
            if torch.is_tensor(values[0]) and values[0].shape == params[0].shape:
                entry[key] = torch.stack(values)
            else:  # a count shared by all (Adam's step): the members are at the same step
                entry[key] = values[0].clone() if torch.is_tensor(values[0]) else values[0]
        out[name] = entry
    return out


def _hyperparameters(states: list[_State]) -> dict[int, dict[str, Any]]:
    """The rule's keyword arguments per parameter rank: shared values as they are, the others as
    ``[members, 1, ...]`` tensors."""
    per_member = [s.optimizer.rule_hyperparameters(s.optimizer.param_groups[0]) for s in states]
    axis = _axis_hyperparameters(states[0].optimizer)
    shared, varying = {}, {}
    for key, value in per_member[0].items():
        values = [h[key] for h in per_member]
        if all(v == value for v in values[1:]):
            shared[key] = value
        elif key in axis:
            varying[key] = torch.tensor([float(v) for v in values])
        else:  # population_key keeps such specs apart; reaching here is a bug
            raise AssertionError(f"members differ in {key!r}, which cannot vary in a population")
    return {"shared": shared, "varying": varying}


def _train(task: Task, states: list[_State], budget: Budget, batch: int, on_eval, on_progress,
           stop_on: tuple[type[BaseException], ...] = ()) -> None:
    from sgdlab.optim import torch_ops

    by_key: dict[Any, list[_State]] = {}
    for s in states:
        by_key.setdefault(population_key(s.member.spec, task), []).append(s)
    states = [s for members in by_key.values() for s in members]  # each group's members side by side
    net = _Net(task, [s.model for s in states])
    groups, first = [], 0
    for members in by_key.values():
        group = members[0].optimizer.param_groups[0]
        rule = members[0].optimizer.rule_for(group)
        view = {name: stacked.detach()[first : first + len(members)] for name, stacked in net.stacked.items()}
        groups.append(_Group(rule, members, _stack_state(members, view, net.names, group),
                             _hyperparameters(members)))
        first += len(members)
    pop = _Population(net, groups)
    clock = _Clock(*states[0].position, states[0].seconds)

    def record(s: _State, evaluated, diverged: bool, partial: float | None, seconds: float) -> dict[str, Any]:
        train_loss, train_metrics, test_loss, test_metrics, *val = evaluated
        diverged = diverged or not (math.isfinite(train_loss) and math.isfinite(test_loss))
        spec = s.member.spec
        entry: dict[str, Any] = {
            "run": s.rid, "task": task.name, "optimizer": spec.label, "spec": spec.text, "seed": s.member.seed,
            "epoch": partial if partial is not None else clock.epoch, "step": clock.step,
            "examples": clock.examples, "time": round(seconds, 6),
            "train_loss": runner._finite_or_none(train_loss), "test_loss": runner._finite_or_none(test_loss),
        }
        if val:
            entry["val_loss"] = runner._finite_or_none(val[0])
            entry.update({f"val_{k}": v for k, v in val[1].items()})
        entry.update({f"train_{k}": v for k, v in train_metrics.items()})
        entry.update({f"test_{k}": v for k, v in test_metrics.items()})
        entry["diverged"] = diverged
        s.records.append(entry)
        return entry

    def publish(indices: list[int], diverged: bool, partial: float | None, finishing: bool, seconds: float) -> None:
        """Evaluate and record the members at ``indices``; end those that are done (and drop them)."""
        evaluated = _evaluate(task, net, indices)
        done = []
        for index, values in zip(indices, evaluated):
            s = pop.alive[index]
            entry = record(s, values, diverged, partial, seconds)
            if entry["diverged"]:
                s.status = DIVERGED
            elif finishing or budget.reached(entry):
                s.status = FINISHED
            pop.sync(index, clock, seconds)
            _save(s)
            if on_progress is not None:
                on_progress((s.member.spec.label, s.member.seed), budget.fraction(clock.epoch, clock.step, seconds))
            if on_eval is not None:
                try:
                    on_eval(entry)
                except stop_on as error:
                    s.status, s.error = STOPPED, f"{type(error).__name__}: {error}"
            if s.status is not None:
                done.append(index)
        pop.drop(done)

    if not states[0].records:
        publish(list(range(len(pop.alive))), False, None, False, clock.seconds)

    x, y = task.x_train, task.y_train
    while pop.alive:
        orders = None
        if batch < task.n_train:
            orders = [torch.randperm(task.n_train, generator=s.shuffle) for s in pop.alive]
        stopped_early = False
        start = time.perf_counter()
        for first in range(0, task.n_train, batch):
            if orders is not None:
                index = torch.stack([order[first : first + batch] for order in orders])
                xb, yb, batched = x[index], y[index], True
            else:
                xb, yb, batched = x, y, False
            losses = net.losses(net.stacked, xb, yb, batched)
            grads = torch.autograd.grad(losses.sum(), [net.stacked[n] for n in net.names])
            with torch.no_grad():
                for name, grad in zip(net.names, grads):
                    net.stacked[name] = pop.update(name, net.stacked[name].detach(), grad, torch_ops).requires_grad_()
            clock.step += 1
            clock.examples += yb.shape[1] if batched else len(yb)
            finite = torch.isfinite(losses.detach()).tolist()
            if not all(finite):
                # These members end here, as their own runs would (a record of the data seen so
                # far); the others go on with this epoch, in their own data orders.
                bad = [i for i, ok in enumerate(finite) if not ok]
                now = clock.seconds + time.perf_counter() - start
                publish(bad, True, round(clock.examples / task.n_train, 4), False, now)
                if orders is not None:
                    orders = [order for i, order in enumerate(orders) if i not in bad]
                if not pop.alive:
                    break
            if budget.exhausted(clock.epoch, clock.step, clock.seconds + time.perf_counter() - start):
                stopped_early = first + batch < task.n_train
                break
        clock.seconds += time.perf_counter() - start
        if not pop.alive:
            break
        partial = round(clock.examples / task.n_train, 4) if stopped_early else None
        if partial is None:
            clock.epoch += 1
        finishing = partial is not None or budget.exhausted(clock.epoch, clock.step, clock.seconds)
        publish(list(range(len(pop.alive))), False, partial, finishing, clock.seconds)


@dataclasses.dataclass
class _Clock:
    """Where the population is in its budget: the same for every member."""

    epoch: int
    step: int
    examples: int
    seconds: float


@dataclasses.dataclass
class _Group:
    """The members of one optimizer configuration (one :func:`population_key`): their rule, their
    stacked optimizer state and their hyperparameters. They sit side by side in the population."""

    rule: Callable[..., Any]
    alive: list
    opt_state: dict[str, dict[str, Any]]
    hyper: dict[str, dict[str, Any]]
    by_rank: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def arguments(self, rank: int, dtype: torch.dtype) -> dict[str, Any]:
        """The rule's keyword arguments for a parameter of ``rank`` dimensions (per member)."""
        if rank not in self.by_rank:
            self.by_rank[rank] = {**self.hyper["shared"], **{
                k: v.to(dtype).view(len(self.alive), *([1] * rank)) for k, v in self.hyper["varying"].items()}}
        return self.by_rank[rank]

    def per_member(self, value: Any, shape: torch.Size) -> bool:
        return (torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == len(self.alive)
                and value.shape[1:] == shape)

    def keep(self, keep: list[int], shapes: dict[str, torch.Size]) -> None:
        kept = torch.tensor(keep, dtype=torch.long)
        self.opt_state = {name: {k: (v[kept] if self.per_member(v, shapes[name]) else v) for k, v in entry.items()}
                          for name, entry in self.opt_state.items()}
        self.hyper["varying"] = {k: v[kept] for k, v in self.hyper["varying"].items()}
        self.by_rank.clear()
        self.alive = [self.alive[i] for i in keep]


@dataclasses.dataclass
class _Population:
    """The members still training: one stacked model, and the optimizer groups that update it."""

    net: _Net
    groups: list[_Group]

    @property
    def alive(self) -> list:
        return [s for group in self.groups for s in group.alive]

    def _locate(self, index: int) -> tuple[_Group, int]:
        for group in self.groups:
            if index < len(group.alive):
                return group, index
            index -= len(group.alive)
        raise IndexError(index)

    def update(self, name: str, param: torch.Tensor, grad: torch.Tensor, ops: Any) -> torch.Tensor:
        """One step of every group's rule on its members' slice of the stacked parameter ``name``."""
        from sgdlab.optim.execution import rule_state

        pieces, first = [], 0
        for group in self.groups:
            last = first + len(group.alive)
            state = group.opt_state[name]
            # Counters (Adam's step) as Python numbers, as the optimizers' own execution hands
            # them to the rule (bias corrections in double precision), kept as 0-d tensors.
            new, new_state = group.rule(param[first:last], grad[first:last], rule_state(state, capturable=False),
                                        ops=ops, **group.arguments(param.dim() - 1, param.dtype))
            for key, value in new_state.items():
                old = state.get(key)
                if torch.is_tensor(old) and old.dim() == 0 and not torch.is_tensor(value):
                    new_state[key] = torch.tensor(value, dtype=old.dtype)
            group.opt_state[name] = new_state
            pieces.append(new)
            first = last
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def sync(self, index: int, clock: _Clock, seconds: float) -> None:
        """Copy member ``index`` into its own model and optimizer, for its checkpoint (train_run's
        format: a population resumes from one-at-a-time checkpoints and the other way round)."""
        group, local = self._locate(index)
        s = group.alive[local]
        s.epoch, s.step, s.examples, s.seconds = clock.epoch, clock.step, clock.examples, seconds
        with torch.no_grad():
            for name, param in s.model.named_parameters():
                param.copy_(self.net.stacked[name][index])
                entry = {k: (v[local].clone() if group.per_member(v, param.shape) else
                             v.clone() if torch.is_tensor(v) else v)
                         for k, v in group.opt_state[name].items()}
                if entry:
                    s.optimizer.state[param] = entry
            for name, buffer in s.model.named_buffers():
                buffer.copy_(self.net.buffers[name][index])

    def drop(self, indices: list[int]) -> None:
        if not indices:
            return
        shapes = {name: value.shape[1:] for name, value in self.net.stacked.items()}
        keep = [i for i in range(len(self.alive)) if i not in indices]
        first = 0
        for group in self.groups:
            size = len(group.alive)
            group.keep([i - first for i in keep if first <= i < first + size], shapes)
            first += size
        self.groups = [group for group in self.groups if group.alive]
        self.net.keep(torch.tensor(keep, dtype=torch.long))


def _evaluate(task: Task, net: _Net, indices: list[int]) -> list[tuple[float, dict, float, dict]]:
    """Train, test (and validation) loss and metrics of the members at ``indices`` (as
    runner.evaluate)."""
    results: list[list[Any]] = [[] for _ in indices]
    splits = [(task.x_train, task.y_train), (task.x_test, task.y_test)]
    if task.has_validation:
        splits.append((task.x_val, task.y_val))
    for data_x, data_y in splits:
        outputs = net.outputs(data_x, indices)
        for slot, out in enumerate(outputs):
            results[slot] += [float(task.loss(out, data_y)),
                              {name: float(fn(out, data_y)) for name, fn in task.metrics.items()}]
    return [tuple(r) for r in results]


def _save(s: _State) -> None:
    if not s.member.checkpoint:
        return
    path = Path(s.member.checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "records": s.records, "status": s.status, "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(), "shuffle": s.shuffle.get_state(),
        "scheduler": None,  # a constant learning rate (schedules train one run at a time)
        "epoch": s.epoch, "step": s.step, "examples": s.examples, "seconds": s.seconds,
    }
    _atomic_save(state, path)


def _atomic_save(state: dict, path: Path) -> None:
    import os

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename (as train_run's checkpoints)
    os.replace(tmp, path)


# --- races: which runs train together ---------------------------------------------------------------

Job = tuple[OptimizerSpec, int]

# More members than this in one population only add memory: per-member throughput stops improving
# well before (measured in docs/lab/scale.md).
MAX_MEMBERS = 32


def plan(task: Task, jobs: Sequence[Job], *, workers: int = 1, enabled: bool = True,
         batch_size: int | None = None) -> tuple[list[list[Job]], list[str]]:
    """The race's ``jobs`` as units of work: populations (lists of several jobs, of one batch size:
    their optimizers may differ, each updates its own members) and single runs, plus one line for
    each reason some runs train one at a time. Populations are split until there are ``workers``
    units of about equal work (or nothing left to split), longest first."""
    if not enabled:
        return [[job] for job in jobs], []
    problem = model_problem(task)
    if problem is not None:
        return [[job] for job in jobs], [
            f"runs train one at a time: torch.func.vmap cannot train the model of task {task.name!r} ({problem})"]
    groups: dict[Any, list[Job]] = {}
    alone: dict[str, list[str]] = {}
    for spec, seed in jobs:
        reason = why_not(spec, task)
        if reason is not None:
            labels = alone.setdefault(reason, [])
            if spec.label not in labels:
                labels.append(spec.label)
            groups[("alone", spec.label, seed)] = [(spec, seed)]
        else:  # every optimizer of one batch size shares the model evaluations
            groups.setdefault(("together", spec.full_batch), []).append((spec, seed))

    def cost(unit: list[Job]) -> float:  # steps per epoch, the work of a member
        return sum(1 if spec.full_batch else task.n_train / (batch_size or task.batch_size) for spec, _ in unit)

    units = [members[first : first + MAX_MEMBERS] for members in groups.values()
             for first in range(0, len(members), MAX_MEMBERS)]
    share = sum(cost(unit) for unit in units) / max(1, workers)
    # Split the largest unit until every worker has one and none is much more than its share
    # (fewer, larger populations batch better: stop as soon as the work is spread).
    while True:
        largest = max(units, key=cost)
        if len(largest) < 2 or (len(units) >= workers and cost(largest) <= 1.25 * share):
            break
        units.remove(largest)
        half = (len(largest) + 1) // 2
        units += [largest[:half], largest[half:]]
    units.sort(key=cost, reverse=True)  # the longest first: a pool takes them in order
    notes = [f"{', '.join(labels)} train{'s' if len(labels) == 1 else ''} one run at a time (not vectorizable: "
             f"{reason})" for reason, labels in alone.items()]
    return units, notes


def run_unit(task: Task, unit: Sequence[Job], budget: Budget, batch_size: int | None, checkpoints: Sequence[str | None],
             on_eval: Callable[[dict[str, Any]], Any], on_progress: Callable[[tuple[str, int], float], Any]) -> list[RunResult]:
    """Run one unit of :func:`plan`: a single run as :func:`sgdlab.lab.runner.train_run` does, a
    population with :func:`train_population`. A population that fails for any reason is rerun one
    member at a time (each resumes from its own checkpoint), so a bug here costs time, not runs."""
    if len(unit) > 1:
        try:
            return train_population(
                task, [Member(spec, seed, ckpt) for (spec, seed), ckpt in zip(unit, checkpoints)],
                epochs=budget.epochs, steps=budget.steps, time_budget=budget.time_budget, batch_size=batch_size,
                on_eval=on_eval, on_progress=on_progress, stop_at=budget.stop_at)
        except Exception as error:  # noqa: BLE001 - fall back, and say why
            runner._warn(f"a population of {unit[0][0].label} failed ({type(error).__name__}: {error}); "
                         "its runs continue one at a time")
    return [runner._guarded_run(task, spec, seed, budget, batch_size, ckpt, on_eval,
                                lambda f, key=(spec.label, seed): on_progress(key, f))
            for (spec, seed), ckpt in zip(unit, checkpoints)]


def worker_unit_job(unit: Sequence[Job], budget: Budget, batch_size: int | None,
                    checkpoints: Sequence[str | None]) -> list[RunResult]:
    """:func:`run_unit` in a race's worker process (its task and message queue set up by the pool)."""
    task, queue = runner._WORKER["task"], runner._WORKER["queue"]
    return run_unit(task, unit, budget, batch_size, checkpoints,
                    on_eval=lambda r: queue.put(("eval", r)),
                    on_progress=lambda key, f: queue.put(("progress", key, f)))
