"""DQN math against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from hvd_dqn.dqn import (
    double_q_target,
    epsilon_greedy,
    huber,
    importance_weights,
    linear_schedule,
    n_step_returns,
    polyak,
)


def test_n_step_returns_stop_at_terminations_and_bootstrap_after_truncations() -> None:
    gamma = 0.5
    rewards = np.array([[1.0, 2.0, 4.0]] * 5)
    terminated = np.zeros((5, 3), dtype=bool)
    truncated = np.zeros((5, 3), dtype=bool)
    terminated[1, 1] = True  # ends at the 2nd step: no bootstrap
    truncated[2, 0] = True  # time limit at the 1st step: bootstrap from the state reached
    terminated[3, 2] = True  # ends at the last step
    truncated[4, 1] = True  # truncation first, termination after it is not reached
    terminated[4, 2] = True
    g, discount, m = n_step_returns(rewards, terminated, truncated, gamma)
    # row 0: 1 + .5*2 + .25*4 = 3, discount .5^3; row 1: 1 + .5*2 = 2, discount 0;
    # row 2: 1, discount .5; row 3: 3, discount 0; row 4: 2, discount .25
    assert g.tolist() == [3.0, 2.0, 1.0, 3.0, 2.0]
    assert discount.tolist() == [0.125, 0.0, 0.5, 0.0, 0.25]
    assert m.tolist() == [3, 2, 1, 3, 2]


def test_one_step_return_is_the_reward() -> None:
    g, d, m = n_step_returns(np.array([[2.0]]), np.array([[False]]), np.array([[False]]), 0.9)
    assert (g[0], d[0], m[0]) == (2.0, pytest.approx(0.9), 1)


def test_double_dqn_target_online_picks_target_rates() -> None:
    r = tf.constant([1.0, 0.0])
    discount = tf.constant([0.9, 0.5])
    q_online = tf.constant([[1.0, 2.0], [3.0, 1.0]])
    q_target = tf.constant([[5.0, 7.0], [2.0, 4.0]])
    # online argmax: [1, 0]  ->  target values [7, 2]  ->  [1 + .9*7, 0 + .5*2]
    y = double_q_target(r, discount, q_online, q_target, double=True)
    np.testing.assert_allclose(y.numpy(), [7.3, 1.0], rtol=1e-6)
    # plain DQN: target argmax [1, 1] -> [7, 4]
    y = double_q_target(r, discount, q_online, q_target, double=False)
    np.testing.assert_allclose(y.numpy(), [7.3, 2.0], rtol=1e-6)


def test_huber_quadratic_inside_linear_outside() -> None:
    x = tf.constant([0.5, -2.0, 3.0])
    np.testing.assert_allclose(huber(x, 1.0).numpy(), [0.125, 1.5, 2.5])
    np.testing.assert_allclose(huber(x, 2.0).numpy(), [0.125, 2.0, 4.0])


def test_linear_schedule() -> None:
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 100) == pytest.approx(0.1)
    assert linear_schedule(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)


def test_epsilon_greedy() -> None:
    rng = np.random.default_rng(0)
    greedy = np.argmax(np.array([[0.0, 1.0, 0.5]] * 10_000), axis=1)
    assert (epsilon_greedy(greedy, 3, 0.0, rng) == 1).all()
    actions = epsilon_greedy(greedy, 3, 0.3, rng)
    # greedy w.p. 0.7 + 0.3/3; each other action 0.1
    assert np.mean(actions == 1) == pytest.approx(0.8, abs=0.015)
    assert np.mean(actions == 0) == pytest.approx(0.1, abs=0.015)


def test_polyak_update() -> None:
    target, online = [tf.Variable([0.0, 4.0])], [tf.Variable([10.0, 8.0])]
    polyak(target, online, 0.1)
    np.testing.assert_allclose(target[0].numpy(), [1.0, 4.4])
    polyak(target, online, 1.0)
    np.testing.assert_allclose(target[0].numpy(), [10.0, 8.0])


def test_importance_weights() -> None:
    # (4 * 0.1)^-1 = 2.5, (4 * 0.4)^-1 = 0.625; divided by the max
    np.testing.assert_allclose(importance_weights(np.array([0.1, 0.4]), 4, 1.0), [1.0, 0.25])
    np.testing.assert_allclose(importance_weights(np.array([0.1, 0.4]), 4, 0.0), [1.0, 1.0])
    # beta 0.5: sqrt(2.5) and sqrt(0.625) -> ratio 0.5
    np.testing.assert_allclose(importance_weights(np.array([0.1, 0.4]), 4, 0.5), [1.0, 0.5])
