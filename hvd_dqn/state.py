"""The mutable state of a run, in one object: what the loop changes and a checkpoint saves.

Shared (identical on every rank): the learner's variables and the counters in `SHARED`.
This rank's own: its replay, its actor (envs, observations, acting RNG, episodes in
progress) and the counters of the current log window. checkpoint.py writes and reads
this object; nothing else of a run needs saving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hvd_dqn.actor import Actor
from hvd_dqn.replay import Replay


@dataclass
class Window:
    """Counters between two log points (this rank only, until averaged)."""

    start: float = field(default_factory=time.perf_counter)
    env_steps: int = 0  # all ranks together
    episodes: int = 0
    return_sum: float = 0.0
    length_sum: float = 0.0
    updates: int = 0
    update_seconds: float = 0.0
    loss_sum: float = 0.0
    q_sum: float = 0.0
    calls: int = 0

    _SAVED = (
        "env_steps",
        "episodes",
        "return_sum",
        "length_sum",
        "updates",
        "loss_sum",
        "q_sum",
        "calls",
        "update_seconds",
    )

    def record_episodes(self, returns: np.ndarray, lengths: np.ndarray) -> None:
        """Episodes that ended: their raw returns and lengths ([n] each)."""
        if len(returns):
            self.episodes += len(returns)
            self.return_sum += float(returns.sum())
            self.length_sum += float(lengths.sum())

    def record_updates(self, k: int, seconds: float, loss: float, q_mean: float) -> None:
        """One compiled call of `k` updates: its duration, loss and mean Q."""
        self.update_seconds += seconds
        self.updates += k
        self.calls += 1
        self.loss_sum += loss
        self.q_sum += q_mean

    def to_array(self) -> np.ndarray:
        """The counters, and the seconds elapsed so far, as one float64 vector."""
        values = [getattr(self, k) for k in self._SAVED]
        return np.array([*values, time.perf_counter() - self.start], dtype=np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> Window:
        w = cls(start=time.perf_counter() - float(a[-1]))
        for k, v in zip(cls._SAVED, a[:-1].tolist(), strict=True):
            setattr(w, k, type(getattr(w, k))(v))
        return w


@dataclass
class TrainState:
    """All the mutable state of a run on this rank."""

    learner: Any  # hvd_dqn.learner.Learner (its tf.Variables: `learner.state`)
    replay: Replay
    actor: Actor
    env_steps: int = 0  # all ranks together
    update_debt: float = 0.0  # updates owed by replay_ratio, paid K at a time
    learn_from: int = 0  # env steps (all ranks) from which updates start
    solved_at: int | None = None  # env step of the evaluation that reached stop_at_return
    wall_seconds: float = 0.0  # training wall-clock of earlier attempts (for metrics)
    window: Window = field(default_factory=Window)

    SHARED = ("env_steps", "update_debt", "learn_from", "solved_at", "wall_seconds")

    def shared(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.SHARED}

    def set_shared(self, values: dict[str, Any]) -> None:
        for k in self.SHARED:
            setattr(self, k, values[k])
