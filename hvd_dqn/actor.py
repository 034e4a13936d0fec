"""The acting side of a rank: its envs, what they show now, and the episodes in progress.

One `Actor` per rank steps all of its `num_envs` envs at once: one batched greedy call,
epsilon-greedy draws from its own RNG, one `envs.step`, one `replay.add`. What is
particular to an env family stays here, out of the training loop: Atari's episodic life
(a lost life is a learning terminal, not an episode's end) and reward clipping (the
replay stores sign(r); episode returns are counted raw).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hvd_dqn.config import EnvConfig
from hvd_dqn.dqn import epsilon_greedy
from hvd_dqn.envs import env_seeds, lives_lost, make_vector_env, reset
from hvd_dqn.replay import Replay


@dataclass
class Actor:
    """This rank's envs and episodes in progress; its arrays are the rank's checkpoint
    part that is not the replay (checkpoint.py saves and restores them)."""

    cfg: EnvConfig
    envs: Any  # gymnasium VectorEnv
    obs: np.ndarray  # [E, ...] the observations the next actions are taken in
    rng: np.random.Generator  # epsilon-greedy draws
    ep_return: np.ndarray = field(init=False)  # [E] raw reward so far
    ep_length: np.ndarray = field(init=False)  # [E]
    prev_ended: np.ndarray = field(init=False)  # [E] the last step ended the episode
    lives: np.ndarray | None = None  # [E] Atari lives after the last step

    def __post_init__(self) -> None:
        E = self.cfg.num_envs
        self.ep_return = np.zeros(E)
        self.ep_length = np.zeros(E, dtype=np.int64)
        self.prev_ended = np.zeros(E, dtype=bool)

    @classmethod
    def start(cls, cfg: EnvConfig, seed: int, rank: int, segment: int = 0) -> Actor:
        """New envs, reset with this rank's seeds (`segment`: the env step the run is at,
        so the envs of a continued run start episodes apart from the first attempt's)."""
        envs = make_vector_env(cfg, cfg.num_envs)
        obs = reset(envs, env_seeds(seed, rank, cfg.num_envs, segment))
        return cls(cfg, envs, obs, np.random.default_rng([seed, rank, 1]))

    def restart(self, seed: int, rank: int, segment: int) -> None:
        """New envs and episodes (the acting RNG goes on)."""
        self.close()
        self.envs = make_vector_env(self.cfg, self.cfg.num_envs)
        self.obs = reset(self.envs, env_seeds(seed, rank, self.cfg.num_envs, segment))

    def step(
        self, greedy: Callable[[np.ndarray], np.ndarray], eps: float, replay: Replay
    ) -> tuple[np.ndarray, np.ndarray]:
        """Act epsilon-greedily in every env (`greedy`: argmax_a Q for a batch of
        observations), store the step in `replay`, and return the raw returns and the
        lengths of the episodes that ended ([n] each)."""
        num_actions = int(self.envs.single_action_space.n)
        actions = epsilon_greedy(greedy(self.obs), num_actions, eps, self.rng)
        next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
        life_lost = None  # a learning terminal only: the episode goes on
        if self.cfg.episodic_life:
            life_lost, self.lives = lives_lost(self.lives, info, self.prev_ended)
        learn_rewards = np.sign(rewards) if self.cfg.clip_rewards else rewards
        replay.add(self.obs, actions, learn_rewards, terminated, truncated, life_lost)
        # The step after an episode's end is its env's reset: no reward, no length.
        ended = (terminated | truncated) & ~self.prev_ended
        self.ep_return += np.where(self.prev_ended, 0.0, rewards)
        self.ep_length += ~self.prev_ended
        finished = self.ep_return[ended], self.ep_length[ended]
        self.ep_return[ended], self.ep_length[ended] = 0.0, 0
        self.prev_ended, self.obs = ended, next_obs
        return finished

    def close(self) -> None:
        self.envs.close()
