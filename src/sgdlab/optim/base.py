"""The torch.optim contract, once, for every sgdlab rule.

``RuleOptimizer`` is a ``torch.optim.Optimizer``: param groups, ``state`` keyed by parameter,
``state_dict`` / ``load_state_dict`` with integer ids, hooks, closures and ``zero_grad`` are
inherited unchanged, which is what makes sgdlab checkpoints interchangeable with torch.optim's.
A subclass names its rule's declaration (:class:`sgdlab.algorithms.rule.Rule`), from which this
class reads the rule's keyword arguments in a param group (torch's names), the per-parameter
state in torch.optim's layout, the validation and what the fast paths may do; a subclass adds
only its signature and, if the algorithm has any, its group-level steps (hooks below).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from sgdlab.algorithms.rule import Rule
from sgdlab.optim import execution, quantized, sharded, stacked

# The param-group key counting a group's steps with compact (stochastically rounded) state.
ROUNDING_STEP = "compact_state_step"
# With 8-bit state, tensors with fewer elements than this (param-group key ``min_8bit_size``)
# keep float32 state, as in bitsandbytes and torchao: biases and norm scales are a negligible
# share of the memory, and the parameters that least tolerate the codec's noise.
MIN_8BIT_SIZE = 4096


class RuleOptimizer(Optimizer):
    """Base class: executes ``rule`` over every parameter that has a gradient."""

    #: The rule, declared (a subclass sets this; ``rule``, ``validate`` and the capabilities
    #: below follow from it). A subclass without one provides ``rule``, ``validate``,
    #: ``rule_hyperparameters`` and ``init_state`` itself.
    declaration: ClassVar[Rule | None] = None
    rule: ClassVar[Callable[..., Any]]
    validate: ClassVar[Callable[..., None]]
    # Param-group keys that checkpoints of torch.optim (or of older versions) may lack, with the
    # value their absence means; filled in whenever a state_dict is loaded.
    group_defaults: ClassVar[dict[str, Any]] = {}
    # Whether param groups may set ``state_dtype`` (compact state needs the grouped path).
    compact_state_supported: ClassVar[bool] = True
    # Whether the grouped (flat, compiled when large) path may run the rule; False: tensor by
    # tensor always.
    grouped_execution_supported: ClassVar[bool] = True
    # Whether the class defines any group-level hook (set for each subclass, so that step() of
    # a class without hooks makes no call for them).
    has_group_hooks: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declaration = cls.__dict__.get("declaration")
        if declaration is not None:
            cls.rule = staticmethod(declaration.update)
            cls.validate = staticmethod(_validator(declaration))
            cls.compact_state_supported = declaration.compact_state and all(
                route.rule.compact_state for route in declaration.routes)
            # A rule known not to be elementwise goes straight to the per-tensor path.
            cls.grouped_execution_supported = declaration.elementwise and all(
                route.rule.elementwise for route in declaration.routes)
        cls.has_group_hooks = any(
            getattr(cls, name) is not getattr(RuleOptimizer, name)
            for name in ("before_group", "before_update", "after_update", "after_group")
        )

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        type(self).validate(**defaults)
        super().__init__(params, defaults)
        # After the parameters, as in torch.optim (an empty parameter list is named first).
        if defaults.get("fused"):
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch.optim's load_state_dict ends here, before its post-hooks run (which may put
        # anything in self.state), with every state tensor cast to its parameter's dtype.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.group_defaults.items():
                group.setdefault(key, value)
        # 8-bit codes (an entry with block scales beside it) are integers 0..255: cast back
        # exactly. Entries that are not a parameter's state dict are left as they are.
        for entry in self.state.values():
            if not isinstance(entry, dict):
                continue
            quantized.unpack(entry)  # a state_dict holds an 8-bit entry as one dict
            for key, value in list(entry.items()):
                if (isinstance(key, str) and key + quantized.SUFFIX in entry
                        and isinstance(value, Tensor) and value.dtype != torch.uint8):
                    entry[key] = value.to(torch.uint8)

    def state_dict(self) -> dict[str, Any]:
        saved = super().state_dict()
        # Each 8-bit entry as one dict (codes, scales): torch.optim refuses it at its first step
        # instead of training on codes cast to floats (quantized.pack).
        saved["state"] = {key: quantized.pack(value) if isinstance(value, dict) else value
                          for key, value in saved["state"].items()}
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(_compact_checkpoint(self.param_groups, state_dict))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # Each group is checked with its own values, not only the defaults (torch.optim checks the
        # defaults alone, so a group with lr=-1 would be accepted there).
        group = self.param_groups[-1]
        type(self).validate(**{k: v for k, v in group.items() if k != "params"})
        self.check_state_dtype(group.get("state_dtype"))
        check_min_8bit_size(group.get("min_8bit_size", MIN_8BIT_SIZE))

    def check_state_dtype(self, state_dtype: Any) -> None:
        declaration = type(self).declaration
        rules = [] if declaration is None else [declaration, *(r.rule for r in declaration.routes)]
        named = [rule.compact_state for rule in rules if isinstance(rule.compact_state, tuple)]
        if state_dtype is not None and named and any(
                str(state_dtype).removeprefix("torch.") not in dtypes for dtypes in named):
            raise ValueError(
                f"Invalid state_dtype: {state_dtype!r} ({type(self).__name__} stores its state in "
                f"{' or '.join(sorted(set(named[0])))} at most)"
            )
        if state_dtype is not None and not type(self).compact_state_supported:
            why = ""
            if not type(self).grouped_execution_supported:
                # Compact state is rounded where the grouped elementwise path writes it back.
                why = (": its update is not elementwise, and compact state is stored and rounded "
                       "by the grouped elementwise execution path only")
            raise ValueError(
                f"Invalid state_dtype: {state_dtype!r} ({type(self).__name__} keeps its state in "
                f"the parameters' dtype{why})"
            )

    # --- what the declaration gives (a subclass without one provides these) ----------------------
    def rule_hyperparameters(self, group: dict[str, Any],
                             rule: Rule | None = None) -> dict[str, Any]:
        """The keyword arguments of ``rule`` (default: the declaration) for this param group:
        the declared hyperparameters under torch's names, the convention's options, then the
        values the group-level steps derive (``step_arguments``)."""
        rule = rule or type(self).declaration
        if rule is None:
            raise NotImplementedError(f"{type(self).__name__} declares no rule")
        return {**_declared_arguments(rule, group), **self.step_arguments(group)}

    def step_arguments(self, group: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the rule that the group-level steps derive for this step (e.g. a
        schedule's averaging weight), not param-group keys."""
        return {}

    def init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """A parameter's state before its first step, in torch.optim's layout: the declared
        entries, counters as 0-d tensors as torch.optim keeps them."""
        declaration = type(self).declaration
        if declaration is None:
            raise NotImplementedError(f"{type(self).__name__} declares no rule")
        rule = declaration.route(param)
        state = rule.init_state(param, _declared_arguments(rule, group),
                                zeros_like=lambda p: self.state_zeros(p, group), clone=_clone)
        fused = bool(group.get("fused"))
        on_device = group.get("capturable") or fused
        for key in rule.counters:
            if key in state:
                state[key] = torch.tensor(float(state[key]), dtype=step_dtype(fused),
                                          device=param.device if on_device else None)
        return state

    def state_zeros(self, param: Tensor, group: dict[str, Any]) -> Tensor:
        """A zero state tensor for ``param``, already in the group's compact storage dtype
        (bfloat16, or uint8 codes: zero is code 0), so that a first step never holds a float32
        copy of compact state."""
        storage = _state_dtype(param, group)
        if storage is None or param.dtype != torch.float32:
            storage = param.dtype
        return torch.zeros_like(param, dtype=storage, memory_format=torch.preserve_format)

    def check_grad(self, param: Tensor, grad: Tensor) -> None:
        """Reject gradients the rule cannot use (e.g. sparse gradients for Adam)."""

    def rule_for(self, group: dict[str, Any]) -> Callable[..., Any]:
        """The rule that updates ``group`` now: ``rule``. A subclass without a declaration may
        change rules between steps here (sgdlab's own change phases inside one declared rule,
        as SWATS does); ``rule_hyperparameters`` gives its keyword arguments."""
        return type(self).rule

    # --- group-level steps --------------------------------------------------------------------
    # What is not elementwise happens around the rule, once per param group and step:
    # before_group, then the rule over the group's parameters with gradients, each run of it
    # between before_update and after_update, then after_group. step() runs a group's
    # parameters in one run; optimizer-in-backward one parameter at a time as gradients complete
    # (step_parameter), and ends the step when backward() does (finish_parameter_step). Either
    # way every group gets before_group and after_group once per step, with or without
    # gradients, so a quantity reduced over a group is gathered in after_update and used in
    # after_group.
    def before_group(self, group: dict[str, Any]) -> None:
        """Called once per step for each param group, before the rule updates any of its
        parameters (e.g. the step's schedule)."""

    def before_update(self, group: dict[str, Any], params: list[Tensor],
                      grads: list[Tensor]) -> Any:
        """Called right before the rule updates ``params`` (all of ``group``'s parameters with
        gradients, or one of them); what it returns is handed to ``after_update``."""
        return None

    def after_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                     before: Any) -> None:
        """Called right after the rule updated ``params``, with their gradients (e.g. to gather
        the terms of a reduction over the group)."""

    def after_group(self, group: dict[str, Any]) -> None:
        """Called once per step for each param group, after the rule updated all its
        parameters that had gradients (none, possibly)."""

    # --- the step -----------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # This loop is the per-step cost of a model with many small tensors: no call or lookup
        # in it that can be skipped (check_grad only where a subclass defines one).
        check = None if type(self).check_grad is RuleOptimizer.check_grad else self.check_grad
        hooks = type(self).has_group_hooks
        known = self.state
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            if hooks and self.__dict__.get("_open_groups"):
                self.finish_parameter_step()  # a backward that ended without its callback
            for index, group in enumerate(self.param_groups):
                params, grads, states, new, first = [], [], [], [], {}
                fused = group.get("fused")
                for param in group["params"]:
                    grad = param.grad
                    if grad is None:
                        continue
                    if check is not None:
                        check(param, grad)
                    state = known.get(param)
                    if not state:
                        if fused:
                            check_fused_param(param)
                        state = self.init_state(param, group)
                        if state:  # a parameter listed twice has one state (as in torch.optim)
                            state = first.setdefault(id(param), state)
                        new.append((param, state))
                    params.append(param)
                    grads.append(grad)
                    states.append(state)
                if hooks:
                    self.before_group(group)
                if params:
                    before = self.before_update(group, params, grads) if hooks else None
                    self._run_rule(index, group, params, grads, states)
                    # A parameter enters self.state only once it has state (as in torch.optim,
                    # plain SGD keeps none, and its state_dict lists no entries).
                    for param, state in new:
                        if state:
                            known[param] = state
                    if hooks:
                        self.after_update(group, params, grads, before)
                if hooks:
                    self.after_group(group)
        return loss

    def step_parameter(self, param: Tensor, group_index: int) -> None:
        """Update one parameter of group ``group_index`` from its ``.grad``, then drop the grad
        (the unit of work of :func:`sgdlab.optim.optimizer_in_backward`). The first parameter of
        a group in a step runs the group's ``before_group``; :meth:`finish_parameter_step` ends
        the step."""
        group = self.param_groups[group_index]
        grad = param.grad
        if grad is None:
            return
        hooks = type(self).has_group_hooks
        with torch.no_grad():
            self.check_grad(param, grad)
            if hooks:
                opened = self.__dict__.setdefault("_open_groups", set())
                if group_index not in opened:
                    self.before_group(group)
                    opened.add(group_index)
            state = self.state.get(param)
            if not state:
                if group.get("fused"):
                    check_fused_param(param)
                state = self.init_state(param, group)
            before = self.before_update(group, [param], [grad]) if hooks else None
            self._run_rule((group_index, id(param)), group, [param], [grad], [state])
            if state and param not in self.state:
                self.state[param] = state
            if hooks:
                self.after_update(group, [param], [grad], before)
        param.grad = None

    def finish_parameter_step(self) -> None:
        """End a step taken parameter by parameter (:meth:`step_parameter`), as ``step()`` ends
        one: ``after_group`` for every group, preceded by ``before_group`` for the groups none of
        whose parameters had a gradient. Nothing happens if no parameter was updated since the
        last step (a backward pass that reached none of them is not a step)."""
        opened = self.__dict__.get("_open_groups")
        if not opened:
            return
        self._open_groups = set()
        with torch.no_grad():
            for index, group in enumerate(self.param_groups):
                if index not in opened:
                    self.before_group(group)
                self.after_group(group)

    def _run_rule(self, index: Any, group: dict[str, Any], params: list[Tensor],
                  grads: list[Tensor], states: list[dict[str, Any]]) -> None:
        """Hand a group to an execution strategy: the grouped (flat, compiled when large) path
        by default, the per-tensor reference for anything unusual or ``foreach=False``."""
        if self._lists_a_tensor_twice(group["params"]) and len(set(map(id, params))) < len(params):
            # A parameter listed twice in a group (torch.optim warns, and updates it twice in a
            # row, with the same gradient and one state): one run per listing, since the grouped
            # path updates the tensors of one run side by side, from the same old values.
            for key, indices in listings(params):
                self._run_rule((index, key), group, [params[i] for i in indices],
                               [grads[i] for i in indices], [states[i] for i in indices])
            return
        declaration = type(self).declaration
        if declaration is not None and declaration.routes:
            # One run per route (Muon for matrices, AdamW for the rest), each with its own rule.
            routed: dict[int, tuple[Rule, list[int]]] = {}
            for i, param in enumerate(params):
                rule = declaration.route(param)
                routed.setdefault(id(rule), (rule, []))[1].append(i)
            for rule, indices in routed.values():
                self._run_storage((index, rule.name), group, [params[i] for i in indices],
                                  [grads[i] for i in indices], [states[i] for i in indices],
                                  rule)
            return
        self._run_storage(index, group, params, grads, states, None)

    def _run_storage(self, index: Any, group: dict[str, Any], params: list[Tensor],
                     grads: list[Tensor], states: list[dict[str, Any]],
                     rule: Rule | None) -> None:
        """One run per storage layout of the state: with 8-bit state, 8-bit for the large
        tensors and float32 for the small ones."""
        state_dtype = group.get("state_dtype")
        if state_dtype == torch.uint8:
            minimum = group.get("min_8bit_size", MIN_8BIT_SIZE)
            if any(p.numel() < minimum for p in params):
                # The large ones go first: if 8-bit state is refused, nothing has changed yet.
                small = [i for i, p in enumerate(params) if p.numel() < minimum]
                large = [i for i, p in enumerate(params) if p.numel() >= minimum]
                for indices, key, dtype in ((large, index, state_dtype),
                                            (small, ("float32", index), None)):
                    if indices:
                        self._execute(key, group, [params[i] for i in indices],
                                      [grads[i] for i in indices], [states[i] for i in indices],
                                      dtype, rule=rule)
                return
        self._execute(index, group, params, grads, states, state_dtype, rule=rule)

    def _lists_a_tensor_twice(self, listed: list[Tensor]) -> bool:
        # Checked once per list of a group's parameters (and again if its length changes), not
        # every step: a set of 161 ids costs several percent of a small model's step.
        seen = self.__dict__.setdefault("_listed_twice", {})
        known = seen.get(id(listed))
        if known is None or known[0] is not listed or known[1] != len(listed):
            known = seen[id(listed)] = (listed, len(listed),
                                        len(set(map(id, listed))) < len(listed))
        return known[2]

    def _execute(self, index: Any, group: dict[str, Any], params: list[Tensor],
                 grads: list[Tensor], states: list[dict[str, Any]],
                 state_dtype: torch.dtype | None, rule: Rule | None = None) -> None:
        if sharded.is_dtensor(params[0]) and not group.get("differentiable") and (
                type(self).grouped_execution_supported if rule is None else rule.elementwise):
            # FSDP2 shards of an elementwise rule: it runs on each rank's local tensors
            sharded.execute(functools.partial(self._execute, rule=rule), index, group, params,
                            grads, states, state_dtype, self.__dict__.setdefault("_shards", {}))
            return
        arguments = (self.rule_hyperparameters(group) if rule is None
                     else self.rule_hyperparameters(group, rule))
        hyperparameters = {
            # A 1-element tensor of any shape (lr=torch.tensor([[1e-3]])) acts as a scalar, as
            # in torch.optim; its 0-d view follows in-place changes (schedulers) to the original.
            key: value.view(()) if isinstance(value, Tensor) and value.dim() else value
            for key, value in arguments.items()
        }
        compact = state_dtype is not None and state_dtype != params[0].dtype
        rounding_step = 0
        if compact:
            # Compact state is rounded stochastically; the noise's seed counts the group's
            # compact steps and lives in the param group, so it is saved with the checkpoint and
            # a resumed run rounds exactly as an uninterrupted one would.
            rounding_step = group.get(ROUNDING_STEP, 0) + 1
        update = self.rule_for(group) if rule is None else rule.update
        elementwise = type(self).grouped_execution_supported if rule is None else rule.elementwise
        if elementwise and execution.grouped_supported(params, grads, group):
            layouts = self.__dict__.setdefault("_layouts", {})
            if execution.grouped(update, params, grads, states, hyperparameters,
                                 layouts=layouts, layout_key=index, state_dtype=state_dtype,
                                 rounding_step=rounding_step):
                if compact:
                    group[ROUNDING_STEP] = rounding_step
                return
        declared = type(self).declaration if rule is None else rule
        if (compact and declared is not None and declared.stacks
                and state_dtype in (torch.bfloat16, torch.uint8)
                and not group.get("differentiable")):
            # Compact state of a rule that takes stacks (Muon): widened (8-bit: decoded),
            # stepped, rounded back stochastically (encoded), stack by stack.
            _check_state_shapes(group, params, states)
            stacked.stacked(update, params, grads, states, hyperparameters,
                            rounding_step=rounding_step)
            group[ROUNDING_STEP] = rounding_step
            return
        if compact:
            _check_state_shapes(group, params, states)  # a checkpoint that does not fit: say so
            raise ValueError(
                f"Invalid state_dtype: {state_dtype} needs the grouped execution path: plain, "
                "dense, contiguous tensors (or FSDP2 shards) of one device and dtype, "
                "in a group that is not differentiable, capturable or foreach=False"
            )
        quantized.widen_in_place(states)  # 8-bit state, now stepped as float32
        if (declared is not None and declared.stacks and len(params) > 1
                and not group.get("differentiable") and not group.get("capturable")):
            # Same-shape tensors in one call of the rule (Muon: batched Newton-Schulz).
            stacked.stacked(update, params, grads, states, hyperparameters)
            return
        execution.per_tensor(
            update,
            params,
            grads,
            states,
            hyperparameters,
            capturable=bool(group.get("capturable", False)),
        )


def check_fused_param(param: Tensor) -> None:
    """``fused=True`` takes floating-point parameters on devices with fused kernels, as in
    torch.optim (which checks a parameter when it creates its state, before the first step)."""
    devices = _fused_devices()
    if not (param.device.type in devices and torch.is_floating_point(param)):
        raise RuntimeError(
            "`fused=True` requires all the params to be floating point Tensors of "
            f"supported devices: {devices} but {param.dtype} and {param.device.type}"
        )


def _fused_devices() -> list[str]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the helper: its list as of torch 2.13
        return ["mps", "cuda", "xpu", "hpu", "cpu", "mtia", torch._C._get_privateuse1_backend_name()]
    return _get_fused_kernels_supported_devices()


def _compact_checkpoint(groups: list[dict[str, Any]],
                        state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` checked for 8-bit entries that do not fit the parameters (a ValueError naming
    them, before anything changes), and with the optimizer's own storage settings where its groups
    have none (a checkpoint of torch.optim, or of float32 state, loads into compact state)."""
    saved_groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
    if (not isinstance(saved_groups, list) or len(saved_groups) != len(groups)
            or any(len(group["params"]) != len(saved.get("params", ()))
                   for group, saved in zip(groups, saved_groups))):
        return state_dict  # torch.optim's load_state_dict says what is wrong
    saved_state = state_dict.get("state", {})
    for group_index, (group, saved) in enumerate(zip(groups, saved_groups)):
        for param, param_id in zip(group["params"], saved["params"]):
            entry = saved_state.get(param_id)
            problem = quantized.mismatch(param, entry) if isinstance(entry, dict) else None
            if problem is not None:
                raise ValueError(
                    f"loaded state dict does not fit parameter {param_id} (param group "
                    f"{group_index}, shape {list(param.shape)}): {problem}"
                )
    storage = ("state_dtype", "min_8bit_size")
    if all(key in saved or key not in group
           for group, saved in zip(groups, saved_groups) for key in storage):
        return state_dict
    filled = [{**{key: group[key] for key in storage if key in group and key not in saved}, **saved}
              for group, saved in zip(groups, saved_groups)]
    return {**state_dict, "param_groups": filled}


def _check_state_shapes(group: dict[str, Any], params: list[Tensor],
                        states: list[dict[str, Any]]) -> None:
    """A ValueError naming the first state tensor shaped unlike its parameter, if any."""
    for param, state in zip(params, states):
        for key, value in state.items():
            if (isinstance(value, Tensor) and value.dim() and value.shape != param.shape
                    and not (isinstance(key, str) and key.endswith(quantized.SUFFIX))):
                position = next(i for i, p in enumerate(group["params"]) if p is param)
                raise ValueError(
                    f"state entry {key!r} of parameter {position} of its param group has shape "
                    f"{list(value.shape)}, expected the parameter's {list(param.shape)} (loaded "
                    "from a checkpoint of other parameters?)"
                )


def listings(params: list[Tensor]) -> list[tuple[Any, list[int]]]:
    """The indices of ``params`` in lists where no tensor appears twice, each with a layout key:
    the tensors listed once, then every tensor listed more than once (its first listing), then
    again (its second), ... Lists of the same tensors share a key, hence a layout."""
    counts: dict[int, int] = {}
    for param in params:
        counts[id(param)] = counts.get(id(param), 0) + 1
    once = [i for i, param in enumerate(params) if counts[id(param)] == 1]
    rounds: list[list[int]] = []
    seen: dict[int, int] = {}
    for i, param in enumerate(params):
        if counts[id(param)] > 1:
            listing = seen[id(param)] = seen.get(id(param), -1) + 1
            if listing == len(rounds):
                rounds.append([])
            rounds[listing].append(i)
    keyed = [("listed again", tuple(id(params[i]) for i in indices)) for indices in rounds]
    return ([("listed once", once)] if once else []) + list(zip(keyed, rounds))


def check_min_8bit_size(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid min_8bit_size: {value!r} (expected an int >= 0)")


def _state_dtype(param: Tensor, group: dict[str, Any]) -> torch.dtype | None:
    """The dtype ``param``'s state is stored in under ``group``'s settings (None: its own)."""
    dtype = group.get("state_dtype")
    if dtype == torch.uint8 and param.numel() < group.get("min_8bit_size", MIN_8BIT_SIZE):
        return None
    return dtype


def _declared_arguments(rule: Rule, group: dict[str, Any]) -> dict[str, Any]:
    """The rule's declared hyperparameters in ``group`` (torch's names), with the options of the
    group's convention."""
    return {**rule.arguments(group, "torch"), **rule.conventions(group.get("convention", "torch"))}


def _validator(rule: Rule) -> Callable[..., None]:
    """The declaration's validation, with the options of the convention the values name."""
    def validate(**values: Any) -> None:
        rule.validate(**{**values, **rule.conventions(values.get("convention", "torch"))})
    return validate


def step_dtype(fused: bool) -> torch.dtype:
    """The dtype of a step counter: torch.optim keeps it in float32, or float64 when that is the
    default dtype (fused kernels always want float32); matching it keeps state_dicts
    interchangeable."""
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _clone(param: Tensor) -> Tensor:
    return torch.clone(param, memory_format=torch.preserve_format).detach()
