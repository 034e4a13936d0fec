"""A real env whose rewards overflow float32 on one rank, for the non-finite-loss test.

CartPole, except that on the rank named by EXPLODE_RANK (Open MPI's rank variable) every
reward is 3e38: the n-step returns overflow to inf and so does the loss. Used as
`env.id=explode_env:Explode-v0` with this directory on PYTHONPATH; importing the module
registers the id.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class Explode(CartPoleEnv):
    def step(self, action: Any) -> tuple:
        obs, reward, terminated, truncated, info = super().step(action)
        rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
        if rank == os.environ.get("EXPLODE_RANK", "0"):
            reward = 3e38
        return obs, reward, terminated, truncated, info


gym.register("Explode-v0", entry_point=Explode, max_episode_steps=500)
