"""Q-networks made of plain tf.Variables, so Horovod works on Keras 2 and Keras 3 alike.

Three torsos and one head:
  mlp      vectors [B, D]: dense layers with ReLU (hidden[:-1]);
  minatar  [B, 10, 10, C]: one 3x3 conv of 16 channels, stride 1 (Young & Tian 2019);
  nature   [B, 4, 84, 84] uint8: convs 32x8x8/4, 64x4x4/2, 64x3x3/1 (Mnih et al. 2015);
then a head of hidden[-1] units to Q-values [B, A], or a dueling head (Wang et al. 2016)
with a value and an advantage stream of hidden[-1] units each:
  Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a').

Weights are drawn from numpy with the run's seed, so every rank builds the same network
before any broadcast, with any TensorFlow version.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from hvd_dqn.config import ConfigError, NetworkConfig


def resolve_torso(torso: str, obs_shape: Sequence[int]) -> str:
    """`auto` picks the torso from the observation's shape; an explicit torso must fit it
    (ConfigError naming network.torso otherwise)."""
    shape = tuple(int(d) for d in obs_shape)
    if torso == "nature" and not (len(shape) == 3 and min(shape[1:]) >= 36):
        raise ConfigError(
            f"config field network.torso=nature: needs stacked frames [stack, H, W] with "
            f"H, W >= 36; this env's observations are {shape}"
        )
    if torso == "minatar" and not (len(shape) == 3 and min(shape[:2]) >= 3):
        raise ConfigError(
            f"config field network.torso=minatar: needs images [H, W, C] with H, W >= 3; "
            f"this env's observations are {shape}"
        )
    if torso == "mlp" and len(shape) == 3:
        raise ConfigError(
            f"config field network.torso=mlp: needs vector observations [D]; this env's "
            f"observations are images {shape} (use network.torso=auto, minatar or nature)"
        )
    if torso != "auto":
        return torso
    if len(obs_shape) == 1:
        return "mlp"
    if len(obs_shape) == 3 and obs_shape[0] <= 16 and obs_shape[1] == obs_shape[2] > 32:
        return "nature"  # [stack, H, W]
    if len(obs_shape) == 3:
        return "minatar"  # [H, W, C]
    raise ConfigError(f"config field network.torso=auto: no torso fits observations {shape}")


class QNetwork(tf.Module):
    """obs -> Q-values; see the module docstring."""

    def __init__(
        self,
        obs_shape: Sequence[int],
        num_actions: int,
        cfg: NetworkConfig,
        seed: int,
        name: str = "q",
    ) -> None:
        super().__init__(name=name)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.num_actions = num_actions
        self.torso = resolve_torso(cfg.torso, self.obs_shape)
        self.dueling = cfg.dueling
        rng = np.random.default_rng(seed)
        self.convs: list[tuple[tf.Variable, tf.Variable, int]] = []
        self.layers: list[tuple[tf.Variable, tf.Variable]] = []
        if self.torso == "mlp":
            width = int(np.prod(self.obs_shape))
            for h in cfg.hidden[:-1]:
                self.layers.append(_dense(rng, width, h, f"dense{len(self.layers)}"))
                width = h
        else:
            if self.torso == "nature":
                stack, height, _ = self.obs_shape
                channels, size = stack, height
                spec = [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
            else:
                size, _, channels = self.obs_shape
                spec = [(16, 3, 1)]
            for out, k, stride in spec:
                w, b = _conv(rng, k, channels, out, f"conv{len(self.convs)}")
                self.convs.append((w, b, stride))
                channels, size = out, (size - k) // stride + 1
            width = size * size * channels
        h = cfg.hidden[-1]
        if self.dueling:
            self.value = [_dense(rng, width, h, "value_hidden"), _dense(rng, h, 1, "value")]
            self.advantage = [
                _dense(rng, width, h, "adv_hidden"),
                _dense(rng, h, num_actions, "advantage"),
            ]
        else:
            self.head = [
                _dense(rng, width, h, "head_hidden"),
                _dense(rng, h, num_actions, "q_values"),
            ]

    def features(self, obs: tf.Tensor) -> tf.Tensor:
        x = tf.cast(obs, tf.float32)
        if self.torso == "nature":
            x = tf.transpose(x, [0, 2, 3, 1]) / 255.0  # [B, 84, 84, 4], pixels in [0, 1]
        for w, b, stride in self.convs:
            conv = _conv_as_matmul if self.torso == "minatar" else tf.nn.conv2d
            x = tf.nn.relu(conv(x, w, stride, "VALID") + b)
        x = tf.reshape(x, [tf.shape(x)[0], -1])  # [B, features]
        for w, b in self.layers:
            x = tf.nn.relu(x @ w + b)
        return x

    def __call__(self, obs: tf.Tensor) -> tf.Tensor:
        """Q-values [B, A] for observations [B, *obs_shape]."""
        x = self.features(obs)
        if not self.dueling:
            return _mlp(x, self.head)
        v = _mlp(x, self.value)  # [B, 1]
        a = _mlp(x, self.advantage)  # [B, A]
        return v + a - tf.reduce_mean(a, axis=1, keepdims=True)

    def forward_flops(self) -> int:
        """FLOPs (2 per multiply-add) of one observation's forward pass through the convs
        and dense layers; biases, activations and the dueling mean are left out."""
        size = self.obs_shape[1] if self.torso == "nature" else self.obs_shape[0]
        flops = 0
        for w, _, stride in self.convs:
            k, _, c_in, c_out = w.shape
            size = (size - k) // stride + 1
            flops += 2 * k * k * c_in * c_out * size * size
        dense = self.layers + (self.value + self.advantage if self.dueling else self.head)
        return flops + sum(2 * int(np.prod(w.shape)) for w, _ in dense)

    @property
    def weights(self) -> list[tf.Variable]:
        """All variables in a fixed order (for target sync, broadcast, export)."""
        out: list[tf.Variable] = []
        for w, b, _ in self.convs:
            out += [w, b]
        for w, b in self.layers:
            out += [w, b]
        for w, b in (self.value + self.advantage) if self.dueling else self.head:
            out += [w, b]
        return out


def _conv_as_matmul(x: tf.Tensor, w: tf.Tensor, stride: int, padding: str) -> tf.Tensor:
    """tf.nn.conv2d(x, w, stride, "VALID") as one matmul of its patches (im2col).

    x: [B, H, W, C]; w: [k, k, C, F]. Row (i, j) of the output is the dot product of the
    k x k x C patch at (i * stride, j * stride) with w flattened in its own (i, j, c)
    order. For a conv as small as MinAtar's this is faster than TensorFlow's conv
    kernels on a CPU, forward and backward (docs/performance.md).
    """
    assert padding == "VALID"
    k, _, c, f = w.shape
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    patches = tf.concat(
        [
            x[:, i : i + span_h : stride, j : j + span_w : stride, :]
            for i in range(k)
            for j in range(k)
        ],
        axis=-1,
    )  # [B, out_h, out_w, k*k*C]
    flat = tf.reshape(patches, [-1, k * k * c]) @ tf.reshape(w, [k * k * c, f])
    return tf.reshape(flat, [-1, out_h, out_w, f])


def _mlp(x: tf.Tensor, layers: list[tuple[tf.Variable, tf.Variable]]) -> tf.Tensor:
    (w1, b1), (w2, b2) = layers
    return tf.nn.relu(x @ w1 + b1) @ w2 + b2


def _dense(
    rng: np.random.Generator, fan_in: int, fan_out: int, name: str
) -> tuple[tf.Variable, tf.Variable]:
    """He-uniform weights (He et al. 2015, for ReLU), zero bias."""
    limit = np.sqrt(6.0 / fan_in)
    w = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
    return tf.Variable(w, name=f"{name}/w"), tf.Variable(
        np.zeros(fan_out, np.float32), name=f"{name}/b"
    )


def _conv(
    rng: np.random.Generator, k: int, c_in: int, c_out: int, name: str
) -> tuple[tf.Variable, tf.Variable]:
    limit = np.sqrt(6.0 / (k * k * c_in))
    w = rng.uniform(-limit, limit, size=(k, k, c_in, c_out)).astype(np.float32)
    return tf.Variable(w, name=f"{name}/w"), tf.Variable(
        np.zeros(c_out, np.float32), name=f"{name}/b"
    )
