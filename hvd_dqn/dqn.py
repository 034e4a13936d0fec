"""DQN's math as pure functions: schedules, n-step returns, targets, loss, Polyak.

Names are indexed by time as in Acme: `q_tm1` are the Q-values at the state the action
was taken in, `r_t` the reward that followed, `q_t` the Q-values at the state reached.
Shapes in comments: B batch, A actions, N steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf


def linear_schedule(start: float, end: float, duration: int, t: int | float) -> float:
    """start + (end - start) * min(1, t / duration): epsilon and PER's beta.

    A straight line from `start` at t=0 to `end` at t=duration, then flat (the
    schedule of Mnih et al. 2015 for epsilon).
    """
    fraction = min(1.0, max(0.0, float(t) / max(1, duration)))
    return start + (end - start) * fraction


def epsilon_greedy(
    greedy: np.ndarray, num_actions: int, eps: float, rng: np.random.Generator
) -> np.ndarray:
    """Each greedy action (argmax_a Q, computed where Q lives) replaced by a uniform
    random one of num_actions with probability eps.

    greedy: [B] ints. Returns [B].
    """
    if eps <= 0.0:
        return greedy
    explore = rng.random(greedy.shape[0]) < eps
    return np.where(explore, rng.integers(num_actions, size=greedy.shape[0]), greedy)


def n_step_returns(
    rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated n-step returns, stopping at the first episode end.

    rewards, terminated, truncated: [B, N], step k of row b is the k-th step after the
    sampled state. With m = 1 + (index of the first step that ended the episode), or N
    if none did:
        G       = sum_{k<m} gamma^k r_k
        discount = gamma^m if the episode did not terminate within m steps, else 0
    so the target is G + discount * Q(s_m). A truncation (time limit) ends the sum but
    still bootstraps from the state it reached: only termination zeroes the discount.
    Returns (G [B] float32, discount [B] float32, m [B] int64).
    """
    batch, n = rewards.shape
    ended = terminated | truncated  # [B, N]
    # alive[b, k]: no episode end strictly before step k.
    alive = np.ones((batch, n), dtype=bool)
    alive[:, 1:] = np.cumprod(~ended[:, :-1], axis=1).astype(bool)
    powers = gamma ** np.arange(n, dtype=np.float64)  # [N]
    returns = (rewards * alive * powers).sum(axis=1)
    steps = alive.sum(axis=1)  # m
    last = steps - 1
    hit_terminal = terminated[np.arange(batch), last]
    discount = np.where(hit_terminal, 0.0, gamma ** steps.astype(np.float64))
    return returns.astype(np.float32), discount.astype(np.float32), steps.astype(np.int64)


def double_q_target(
    r_t: tf.Tensor,
    discount_t: tf.Tensor,
    q_t_online: tf.Tensor,
    q_t_target: tf.Tensor,
    double: bool = True,
) -> tf.Tensor:
    """The bootstrapped target y = r_t + discount_t * Q_target(s_t, a*).

    Double DQN (van Hasselt et al. 2016, eq. 4): a* = argmax_a Q_online(s_t, a), the
    online network picks and the target network rates. Plain DQN (Mnih et al. 2015):
    a* = argmax_a Q_target(s_t, a). r_t, discount_t: [B]; q_t_*: [B, A]. Returns [B],
    with no gradient.
    """
    chooser = q_t_online if double else q_t_target
    a_star = tf.argmax(chooser, axis=1, output_type=tf.int32)  # [B]
    q_star = tf.gather(q_t_target, a_star, axis=1, batch_dims=1)  # [B]
    return tf.stop_gradient(r_t + discount_t * q_star)


def huber(x: tf.Tensor, delta: float = 1.0) -> tf.Tensor:
    """Elementwise Huber loss: x^2 / 2 if |x| <= delta, else delta * (|x| - delta / 2).

    Quadratic near zero, linear beyond delta, so one large TD error cannot dominate
    the gradient (the "error clipping" of Mnih et al. 2015).
    """
    abs_x = tf.abs(x)
    quadratic = tf.minimum(abs_x, delta)
    linear = abs_x - quadratic
    return 0.5 * quadratic**2 + delta * linear


def polyak(target: Sequence[tf.Variable], online: Sequence[tf.Variable], tau: float) -> None:
    """target <- tau * online + (1 - tau) * target, elementwise (tau = 1: hard copy)."""
    for t, o in zip(target, online, strict=True):
        t.assign(o if tau == 1.0 else tau * o + (1.0 - tau) * t)


def importance_weights(
    probs: np.ndarray, size: int, beta: float, batch_max: Callable[[float], float] = float
) -> np.ndarray:
    """PER's importance-sampling weights w_i = (size * P(i))^-beta / max_j w_j.

    Schaul et al. 2016, section 3.4: they undo the bias of sampling transition i with
    probability P(i) instead of 1/size; normalized by the batch's largest weight so
    they only ever scale the loss down. `batch_max` maps this sample's largest weight to
    the batch's (a global batch sampled in shares: the largest over all ranks).
    """
    w = (size * probs) ** (-beta)
    return (w / batch_max(float(w.max()))).astype(np.float32)
