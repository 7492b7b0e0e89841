"""A rule is traced once per configuration; later steps replay its numbers' arithmetic.

The replayed program must be exactly the program a fresh trace gives (same text, same numbers to
the last bit), for every rule and option, over steps and learning-rate changes; a changed branch
must lead to a fresh trace, never to a stale program.
"""

from __future__ import annotations

import itertools

import pytest

from sgdlab.algorithms import adam, schedule_free_adamw, schedule_free_sgd, sgd
from sgdlab.optim import program, replay


def fresh(rule, keys, numbers, hyper):
    return program.trace(rule, keys, numbers, hyper)


def assert_same(replayed, traced):
    assert replayed.source == traced.source
    assert replayed.new_keys == traced.new_keys
    assert replayed.scalars == traced.scalars
    assert [type(x) for x in replayed.scalars] == [type(x) for x in traced.scalars]
    assert replayed.numbers == traced.numbers


SGD_OPTIONS = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=w, maximize=x, decoupled_weight_decay=c)
    for m, d, n, w, x, c in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 1e-4],
                                               [False, True], [False, True])
    if not (n and (m == 0 or d != 0))
]
ADAM_OPTIONS = [
    dict(weight_decay=w, amsgrad=a, maximize=x, decoupled_weight_decay=c, eps_hat=e)
    for w, a, x, c, e in itertools.product([0.0, 0.01], [False, True], [False, True],
                                           [False, True], [False, True])
]


@pytest.mark.parametrize("options", SGD_OPTIONS, ids=str)
def test_sgd_replays_exactly_what_a_fresh_trace_gives(options):
    for lr in [0.1, 0.05, 1e-3, 0.1]:
        for keys in [[], ["momentum_buffer"]]:
            hyper = {"lr": lr, **options}
            assert_same(replay.trace(sgd, keys, {}, hyper), fresh(sgd, keys, {}, hyper))


@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=str)
def test_adam_replays_exactly_what_a_fresh_trace_gives(options):
    keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if options["amsgrad"] else [])
    for step, lr in [(0, 1e-3), (1, 1e-3), (2, 7e-4), (3.0, 7e-4), (1000, 1e-5)]:
        hyper = {"lr": lr, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, **options}
        numbers = {"step": step}
        assert_same(replay.trace(adam, keys, numbers, hyper), fresh(adam, keys, numbers, hyper))


def test_schedule_free_rules_replay_exactly():
    for rule, keys, extra in [
        (schedule_free_sgd, ["z"], {"momentum": 0.9}),
        (schedule_free_adamw, ["z", "exp_avg_sq"], {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ]:
        for step, lr, ckp1, wd in [(1, 0.1, 1.0, 0.0), (5, 0.05, 0.2, 0.0), (6, 0.05, 0.1, 0.01)]:
            hyper = {"lr": lr, "ckp1": ckp1, "weight_decay": wd, **extra}
            if rule is schedule_free_adamw:
                hyper["step"] = step
            assert_same(replay.trace(rule, keys, {}, hyper), fresh(rule, keys, {}, hyper))


def test_a_branch_that_flips_is_traced_afresh():
    keys = ["momentum_buffer"]
    with_decay = replay.trace(sgd, keys, {}, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01})
    without = replay.trace(sgd, keys, {}, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    assert with_decay.source != without.source
    assert_same(without, fresh(sgd, keys, {}, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}))


def _escaping_rule(param, grad, state, *, lr, ops):
    # float() takes the number out of the record: this configuration cannot be replayed.
    return param - float(lr) * grad, {}


def test_a_rule_that_takes_a_number_out_of_the_record_is_traced_every_time():
    first = replay.trace(_escaping_rule, [], {}, {"lr": 0.1})
    second = replay.trace(_escaping_rule, [], {}, {"lr": 0.2})
    assert first.scalars == [0.1] and second.scalars == [0.2]
