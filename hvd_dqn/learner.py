"""The learner: online and target Q-networks, Adam, and the compiled update.

The compiled `_update` only does math and the gradient allreduce it is handed; the
plain-Python `update()` feeds it numpy batches and returns numbers. Several updates may
be fused into one compiled call (`updates_per_call`): one Python round trip for K
updates, each with its own batch, allreduce, optimizer step and target-sync check.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from hvd_dqn.config import LearnerConfig, NetworkConfig, scaled_eps, scaled_lr
from hvd_dqn.dqn import double_q_target, huber, polyak
from hvd_dqn.networks import QNetwork
from hvd_dqn.replay import Batch

# (gradients, this rank's weight in the mean: 1, or 0 while it has nothing to give)
GradientReducer = Callable[[Sequence[tf.Tensor], tf.Tensor], list[tf.Tensor]]


def _identity(grads: Sequence[tf.Tensor], weight: tf.Tensor) -> list[tf.Tensor]:
    return list(grads)


class Adam(tf.Module):
    """Adam (Kingma & Ba 2015, Algorithm 1) on plain tf.Variables.

        m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
        w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

    The moments of all variables live in two flat vectors, so one step is a dozen ops
    whatever the number of layers (per-op overhead, not arithmetic, dominates small
    networks). Its whole state is tf.Variables (step count, m, v), so Horovod broadcasts
    it and tf.train.Checkpoint saves it the same way on Keras 2 and Keras 3.
    """

    def __init__(
        self,
        variables: Sequence[tf.Variable],
        lr: float,
        eps: float = 1e-8,
        beta1: float = 0.9,
        beta2: float = 0.999,
    ) -> None:
        super().__init__(name="adam")
        # Variables, not constants of the compiled update: an elastic run rescales them
        # when the world size changes (lr_scaling, adam_eps_scaling).
        self.lr = tf.Variable(lr, dtype=tf.float32, trainable=False, name="lr")
        self.eps = tf.Variable(eps, dtype=tf.float32, trainable=False, name="eps")
        self.beta1, self.beta2 = beta1, beta2
        self.shapes = [v.shape for v in variables]
        self.sizes = [int(np.prod(shape)) for shape in self.shapes]
        total = sum(self.sizes)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        self.m = tf.Variable(tf.zeros([total]), trainable=False, name="m")
        self.v = tf.Variable(tf.zeros([total]), trainable=False, name="v")

    @property
    def state(self) -> list[tf.Variable]:
        return [self.iterations, self.m, self.v]

    def apply(self, grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> None:
        """One step from per-variable gradients."""
        self.apply_flat(flatten(grads), variables)

    def apply_flat(self, g: tf.Tensor, variables: Sequence[tf.Variable]) -> None:
        """One step from the gradient of all variables as one flat vector."""
        t = tf.cast(self.iterations.assign_add(1), tf.float32)
        step = self.lr * tf.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        m = self.m.assign(self.beta1 * self.m + (1.0 - self.beta1) * g)
        v = self.v.assign(self.beta2 * self.v + (1.0 - self.beta2) * tf.square(g))
        delta = tf.split(step * m / (tf.sqrt(v) + self.eps), self.sizes)
        for w, d, shape in zip(variables, delta, self.shapes, strict=True):
            w.assign_sub(tf.reshape(d, shape))


def compiled(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """tf.function without AutoGraph. Every `if` and `for` in these functions runs on
    Python values while tracing (config fields, the list of weights, K); the one branch
    on a tensor is an explicit tf.cond. AutoGraph would rewrite their source to the same
    graph, and converting them took 1.1 s of a one-process CartPole start (cProfile)."""
    return tf.function(fn, autograph=False, **kwargs)


def flatten(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """All tensors as one flat vector (in order)."""
    return tf.concat([tf.reshape(x, [-1]) for x in tensors], axis=0)


class UpdateInfo(NamedTuple):
    loss: float  # mean over the fused updates
    q_mean: float  # mean Q(s, a) of the sampled actions
    grad_norm: float  # global norm of the averaged gradient, before clipping
    td_abs: np.ndarray  # [K, B] |TD error| per transition, for priorities
    weights_finite: bool  # every online weight finite after the last update


class Learner(tf.Module):
    """Online/target networks, optimizer, update and target sync."""

    def __init__(
        self,
        obs_shape: Sequence[int],
        obs_dtype: tf.DType | np.dtype | type,
        num_actions: int,
        net: NetworkConfig,
        cfg: LearnerConfig,
        *,
        seed: int,
        world_size: int = 1,
        reduce_gradients: GradientReducer = _identity,
    ) -> None:
        super().__init__(name="learner")
        self.cfg = cfg
        # Same seed on every rank: identical initial weights before any broadcast.
        self.online = QNetwork(obs_shape, num_actions, net, seed, name="online")
        self.target = QNetwork(obs_shape, num_actions, net, seed, name="target")
        self.optimizer = Adam(
            self.online.weights, scaled_lr(cfg, world_size), eps=scaled_eps(cfg, world_size)
        )
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")
        # This rank's weight in the gradient mean: 0 while an elastic rank that joined
        # fills its replay (read by the compiled update, so it is never baked in).
        self.contributes = tf.Variable(1.0, trainable=False, name="contributes")
        self.reduce_gradients = reduce_gradients
        obs_spec = tf.TensorSpec([None, *obs_shape], tf.as_dtype(obs_dtype))
        # Called through concrete functions: a call then skips tf.function's matching of
        # its arguments to a trace, which costs about as much as the MLP itself.
        self.greedy = compiled(self._greedy, input_signature=[obs_spec]).get_concrete_function()
        self.q_values = compiled(self.online.__call__, input_signature=[obs_spec])
        self._compiled_update = compiled(self._update)
        self._update_shapes: tuple = ()  # the input shapes `_update_concrete` was made for
        self._update_concrete: Any = None
        self._compiled_allreduce = compiled(self._allreduce_only)

    def digest(self) -> str:
        """SHA-256 of every variable in `state`: equal on all ranks after every update."""
        h = hashlib.sha256()
        for v in self.state:
            h.update(np.ascontiguousarray(v.numpy()).tobytes())
        return h.hexdigest()

    def set_world_size(self, world_size: int) -> None:
        """Rescale the learning rate and epsilon for a new world size (lr_scaling,
        adam_eps_scaling)."""
        self.optimizer.lr.assign(scaled_lr(self.cfg, world_size))
        self.optimizer.eps.assign(scaled_eps(self.cfg, world_size))

    @property
    def state(self) -> list[tf.Variable]:
        """Everything that must match across ranks: weights, optimizer, update count."""
        return [*self.online.weights, *self.target.weights, *self.optimizer.state, self.updates]

    def greedy_actions(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(obs, a) of the online network, for a batch of observations [B]."""
        return self.greedy(obs).numpy()

    def _greedy(self, obs: tf.Tensor) -> tf.Tensor:
        return tf.argmax(self.online(obs), axis=1, output_type=tf.int32)  # [B]

    def _one_update(
        self,
        obs_tm1: tf.Tensor,
        a_tm1: tf.Tensor,
        r_t: tf.Tensor,
        discount_t: tf.Tensor,
        obs_t: tf.Tensor,
        weights: tf.Tensor,
    ) -> tuple[tf.Tensor, ...]:
        cfg = self.cfg
        with tf.GradientTape() as tape:
            q_tm1, q_t_online = self._online_q(obs_tm1, obs_t, tape)  # [B, A] each
            q_t_target = self.target(obs_t)  # [B, A]
            y = double_q_target(r_t, discount_t, q_t_online, q_t_target, cfg.double_dqn)
            q_a = tf.gather(q_tm1, a_tm1, axis=1, batch_dims=1)  # [B]
            td = y - q_a
            loss = tf.reduce_mean(weights * huber(td, cfg.huber_delta))
        # One flat gradient: one allreduce, one norm, one optimizer step.
        g = flatten(tape.gradient(loss, self.online.weights))
        g = self.reduce_gradients([g], self.contributes)[0]  # the mean over ranks
        norm = tf.norm(g)
        if cfg.max_grad_norm > 0:  # global-norm clipping: g * c / max(|g|, c)
            g = g * (cfg.max_grad_norm / tf.maximum(norm, cfg.max_grad_norm))
        self.optimizer.apply_flat(g, self.online.weights)
        updates = self.updates.assign_add(1)
        tf.cond(
            tf.equal(updates % cfg.target_update_period, 0),
            self._sync_target,
            lambda: tf.constant(False),
        )
        return loss, tf.reduce_mean(q_a), norm, tf.abs(td)

    def _online_q(
        self, obs_tm1: tf.Tensor, obs_t: tf.Tensor, tape: tf.GradientTape
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The online net's Q-values at s_tm1 (with gradient) and at s_t (for the target
        only: no gradient). A CNN computes the second outside the tape, so its backward
        pass covers B rows instead of 2B (MinAtar: 4.7 -> 3.9 ms per update). The MLP
        keeps one pass over both: it is so small that its op count, not its FLOPs, sets
        its time (two passes measured no faster, within this machine's noise), and its
        numbers stay those of the golden test."""
        if self.online.torso == "mlp":
            batch = tf.shape(obs_tm1)[0]
            q_both = self.online(tf.concat([obs_tm1, obs_t], axis=0))  # [2B, A]
            return q_both[:batch], q_both[batch:]
        with tape.stop_recording():
            q_t = self.online(obs_t)
        return self.online(obs_tm1), q_t

    def _sync_target(self) -> tf.Tensor:
        polyak(self.target.weights, self.online.weights, self.cfg.tau)
        return tf.constant(True)

    def _update(self, *stacked: tf.Tensor) -> tuple:
        """K fused updates; the inputs are Batch's first six fields, each [K, B, ...]."""
        outs = [self._one_update(*(x[k] for x in stacked)) for k in range(stacked[0].shape[0])]
        loss, q, norm, td = (tf.stack(x) for x in zip(*outs, strict=True))
        # The loss is computed before each step: an update that makes the weights
        # non-finite shows only here (one reduction per weight, after the last step).
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(w)) for w in self.online.weights])
        return tf.reduce_mean(loss), tf.reduce_mean(q), tf.reduce_mean(norm), td, finite

    def update(
        self,
        batches: Sequence[Batch],
        tracing: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> UpdateInfo:
        """Run len(batches) updates in one compiled call; a call that traces it (the
        first, and one after a new batch share) runs inside `tracing()`."""

        def stack(i: int) -> np.ndarray:
            return np.stack([b[i] for b in batches])

        stacked = [stack(i) for i in range(6)]
        shapes = tuple(f"{x.shape}{x.dtype.str}" for x in stacked)
        if shapes != self._update_shapes:  # once per run: K and B are fixed
            with tracing():  # seconds: the trace, and the first allreduce's negotiation
                specs = [tf.TensorSpec(x.shape, x.dtype) for x in stacked]
                self._update_concrete = self._compiled_update.get_concrete_function(*specs)
                self._update_shapes = shapes
                return self._call_update(stacked)
        return self._call_update(stacked)

    def _call_update(self, stacked: list[np.ndarray]) -> UpdateInfo:
        loss, q, norm, td, finite = self._update_concrete(*stacked)
        return UpdateInfo(float(loss), float(q), float(norm), td.numpy(), bool(finite))

    def _allreduce_only(self) -> tf.Tensor:
        size = sum(self.optimizer.sizes)
        return tf.reduce_sum(self.reduce_gradients([tf.zeros([size])], self.contributes)[0])

    def time_allreduce(self) -> None:
        """One gradient-sized allreduce and nothing else (collective: every rank calls it)."""
        self._compiled_allreduce().numpy()


class ExportedPolicy(tf.Module):
    """What `evaluate` loads: the online network and a `q_values` signature, no config."""

    def __init__(self, network: QNetwork, obs_dtype: tf.DType | np.dtype | type) -> None:
        super().__init__(name="policy")
        self.network = network
        spec = tf.TensorSpec([None, *network.obs_shape], tf.as_dtype(obs_dtype), name="obs")
        self.q_values = compiled(network.__call__, input_signature=[spec])
