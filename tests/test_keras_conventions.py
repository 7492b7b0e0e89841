"""The Keras convention on the PyTorch side: rule options and sgdlab.SGD/Adam(convention=...).

No Keras needed: the formulas are checked by hand here; tests/test_keras.py checks them against
keras.optimizers themselves.
"""

import copy
import math

import numpy as np
import pytest
import torch

import sgdlab
from sgdlab.algorithms import ADAM, adam, sgd


def test_velocity_form_is_keras_sgd_by_hand():
    lr, mu, g1, g2 = 0.1, 0.9, np.array([1.0]), np.array([2.0])
    w1, state = sgd(np.array([1.0]), g1, {}, lr=lr, momentum=mu, momentum_form="velocity", ops=np)
    w2, state = sgd(w1, g2, state, lr=lr, momentum=mu, momentum_form="velocity", ops=np)
    v1 = -lr * g1
    v2 = mu * v1 - lr * g2
    np.testing.assert_allclose(state["velocity"], v2)
    np.testing.assert_allclose(w2, 1.0 + v1 + v2)


def test_velocity_form_nesterov_is_keras_nesterov_by_hand():
    lr, mu, g = 0.1, 0.9, np.array([1.0])
    options = dict(lr=lr, momentum=mu, nesterov=True, momentum_form="velocity", ops=np)
    w1, state = sgd(np.array([1.0]), g, {}, **options)
    w2, _ = sgd(w1, g, state, **options)
    v1 = -lr * g
    v2 = mu * v1 - lr * g
    np.testing.assert_allclose(w2, 1.0 + (mu * v1 - lr * g) + (mu * v2 - lr * g))


def test_eps_hat_is_keras_adam_by_hand():
    lr, b1, b2, eps, g = 0.1, 0.9, 0.999, 1e-3, np.array([0.01])
    state = ADAM.init_state(np.zeros(1), {}, zeros_like=np.zeros_like, clone=np.copy)
    w, _ = adam(np.array([1.0]), g, state, lr=lr, beta1=b1, beta2=b2, eps=eps, eps_hat=True, ops=np)
    alpha = lr * math.sqrt(1 - b2) / (1 - b1)
    np.testing.assert_allclose(w, 1.0 - alpha * (1 - b1) * g / (np.sqrt((1 - b2) * g * g) + eps))
    # PyTorch's placement with the same eps takes a visibly different step here.
    w_torch, _ = adam(np.array([1.0]), g, state, lr=lr, beta1=b1, beta2=b2, eps=eps, ops=np)
    assert abs((1.0 - w_torch[0]) - (1.0 - w[0])) > 0.1 * (1.0 - w[0])


@pytest.mark.parametrize("cls", [sgdlab.SGD, sgdlab.Adam, sgdlab.AdamW])
def test_only_a_non_default_convention_adds_a_param_group_key(cls):
    # Checkpoints of the default (torch) convention keep exactly the keys they had before.
    assert "convention" not in cls([torch.nn.Parameter(torch.ones(2))]).param_groups[0]
    keras_group = cls([torch.nn.Parameter(torch.ones(2))], convention="keras").param_groups[0]
    assert keras_group["convention"] == "keras"


def test_keras_convention_survives_a_checkpoint():
    def run(optimizer, param, steps):
        for _ in range(steps):
            param.grad = param.detach().clone()
            optimizer.step()

    param = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = sgdlab.SGD([param], lr=0.1, momentum=0.9, weight_decay=0.1, convention="keras")
    run(optimizer, param, 2)
    saved_param, saved_state = param.detach().clone(), copy.deepcopy(optimizer.state_dict())
    run(optimizer, param, 2)

    resumed = torch.nn.Parameter(saved_param)
    fresh = sgdlab.SGD([resumed], lr=0.1, momentum=0.9, weight_decay=0.1)  # torch convention...
    fresh.load_state_dict(saved_state)  # ... until the checkpoint says keras
    assert fresh.param_groups[0]["convention"] == "keras"
    assert set(fresh.state[resumed]) == {"velocity"}
    run(fresh, resumed, 2)
    torch.testing.assert_close(resumed, param, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda p: sgdlab.SGD(p, convention="tensorflow"), "convention"),
        (lambda p: sgdlab.Adam(p, convention=None), "convention"),
        (lambda p: sgdlab.AdamW(p, convention="Keras"), "convention"),
        (lambda p: sgdlab.SGD(p, momentum=0.9, dampening=0.5, convention="keras"), "dampening"),
    ],
)
def test_invalid_convention_options_raise_value_error_naming_them(make, argument):
    with pytest.raises(ValueError, match=argument):
        make([torch.nn.Parameter(torch.ones(1))])
