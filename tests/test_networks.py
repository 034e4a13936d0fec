"""The Q-networks' building blocks against TensorFlow's own."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from hvd_dqn.networks import _conv_as_matmul


@pytest.mark.parametrize(
    ("shape", "k", "filters", "stride"),
    [((5, 10, 10, 4), 3, 16, 1), ((3, 12, 11, 2), 3, 5, 2), ((2, 9, 9, 3), 2, 4, 3)],
)
def test_the_conv_as_one_matmul_is_tensorflows_conv_forward_and_backward(
    shape: tuple[int, ...], k: int, filters: int, stride: int
) -> None:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    w = tf.Variable(rng.normal(size=(k, k, shape[-1], filters)).astype(np.float32))
    upstream = None
    outs, grads = [], []
    for conv in (tf.nn.conv2d, _conv_as_matmul):
        with tf.GradientTape() as tape:
            y = conv(x, w, stride, "VALID")
            if upstream is None:
                upstream = tf.constant(rng.normal(size=y.shape).astype(np.float32))
            loss = tf.reduce_sum(y * upstream)
        outs.append(y.numpy())
        grads.append(tape.gradient(loss, w).numpy())
    assert outs[0].shape == outs[1].shape
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-4)


def test_forward_flops_counts_each_multiply_add_of_the_minatar_network_twice() -> None:
    from hvd_dqn.config import NetworkConfig
    from hvd_dqn.networks import QNetwork

    net = QNetwork((10, 10, 4), 3, NetworkConfig(torso="minatar", hidden=(128,), dueling=False), 0)
    conv = 2 * (3 * 3 * 4) * 16 * (8 * 8)  # a 3x3x4 patch per output, 16 filters, 8x8 outputs
    dense = 2 * (8 * 8 * 16) * 128 + 2 * 128 * 3
    assert net.forward_flops() == conv + dense == 336_640
