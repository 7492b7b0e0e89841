"""TensorFlow 2's SGD-with-momentum example, running on Keras 3 with sgdlab.keras.SGD.

Keras 3 removed ``Optimizer.minimize``; sgdlab's Keras optimizers have it again. The code below
is the classic example with only the optimizer line changed. It prints the first step, 0.1
(= learning_rate * grad, since the loss var**2/2 has gradient var = 1), then the second, 0.18
(= 0.1 * 0.9 + 0.9 * 0.1: the momentum of the first step plus the new gradient step).
The printed values are float32, so the first one shows as 0.100000024 (1 - float32(0.9)).

    pip install 'sgdlab[keras]' tensorflow-cpu
    KERAS_BACKEND=tensorflow python examples/keras_minimize.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

import sgdlab.keras  # noqa: E402

opt = sgdlab.keras.SGD(learning_rate=0.1, momentum=0.9)
var = tf.Variable(1.0)
val0 = var.value()
loss = lambda: (var**2) / 2.0  # d(loss)/d(var1) = var1  # noqa: E731
step_count = opt.minimize(loss, [var]).numpy()  # first step is -learning_rate * grad
val1 = var.value()
print((val0 - val1).numpy())  # 0.1
step_count = opt.minimize(loss, [var]).numpy()  # later steps grow because of momentum
val2 = var.value()
print((val1 - val2).numpy())  # 0.18
