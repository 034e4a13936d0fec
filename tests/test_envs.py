"""Environments: seeds, spaces, Atari and MinAtar observations, fixed-seed episodes."""

from __future__ import annotations

import numpy as np
import pytest

from hvd_dqn.config import ConfigError, EnvConfig
from hvd_dqn.envs import env_seeds, lives_lost, make_vector_env, run_episodes
from hvd_dqn.evaluate import eval_seed


def test_env_seeds_are_distinct_within_a_run_fit_32_bits_and_never_evaluation_seeds() -> None:
    runs = {}
    for segment in (0, 2000, 2**40):  # a fresh run and resumed runs
        for seed in (0, 3, 2**32 - 1):
            run = [s for rank in range(64) for s in env_seeds(seed, rank, 64, segment)]
            assert len(set(run)) == len(run)  # every env of every rank: its own seed
            assert all(0 <= s < 2**32 and s % 2 == 0 for s in run)
            runs[seed, segment] = set(run)
    assert eval_seed(5) % 2 == 1
    # A resumed run's restarted envs (another segment) and other seeds share nothing.
    assert all(not (a & b) for k, a in runs.items() for j, b in runs.items() if k < j)
    assert env_seeds(0, 1, 4) != env_seeds(1, 0, 4)


def test_continuous_actions_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"env.id='Pendulum-v1'.*not Discrete"):
        make_vector_env(EnvConfig(id="Pendulum-v1"), 2)


def test_unknown_env_id() -> None:
    with pytest.raises(ConfigError, match="not a registered gymnasium id"):
        make_vector_env(EnvConfig(id="NoSuchEnv-v9"), 2)


def test_atari_preprocessing_shapes() -> None:
    envs = make_vector_env(EnvConfig(id="ALE/Pong-v5"), 2)
    obs, _ = envs.reset(seed=[0, 2])
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    envs.close()


def test_atari_time_limit_counts_agent_steps_not_frames() -> None:
    """env.max_episode_steps=40 ends an Atari episode after 40 agent steps (160 frames
    at frame_skip 4), as for every other env; NOOP in Breakout never loses the ball, so
    only the time limit can end it."""
    envs = make_vector_env(EnvConfig(id="ALE/Breakout-v5", max_episode_steps=40), 1)
    envs.reset(seed=[0])
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated) and steps < 100:
        _, _, term, trunc, _ = envs.step(np.zeros(1, dtype=np.int64))
        steps, terminated, truncated = steps + 1, bool(term[0]), bool(trunc[0])
    envs.close()
    assert (steps, truncated, terminated) == (40, True, False)


def test_a_lost_life_is_seen_only_by_the_env_that_lost_it_and_not_on_a_reset() -> None:
    before = np.array([5, 5, 1])
    lost, now = lives_lost(before, {"lives": np.array([4, 5, 5])}, np.array([False, False, True]))
    assert lost.tolist() == [True, False, False] and now.tolist() == [4, 5, 5]
    assert lives_lost(None, {"lives": before}, np.zeros(3, bool))[0] is None  # first step
    assert lives_lost(before, {}, np.zeros(3, bool)) == (None, before)  # no lives: none lost


def test_minatar_observations() -> None:
    envs = make_vector_env(EnvConfig(id="MinAtar/Breakout-v1"), 3)
    obs, _ = envs.reset(seed=[0, 2, 4])
    assert obs.shape == (3, 10, 10, 4) and obs.dtype == bool
    envs.close()


def test_fixed_seed_episodes_repeat_and_time_limits_apply() -> None:
    cfg = EnvConfig(id="CartPole-v1", max_episode_steps=30)
    rng = np.random.default_rng(0)

    def policy(obs: np.ndarray) -> np.ndarray:
        return (obs[:, 2] > 0).astype(np.int64)  # push toward the lean

    a = run_episodes(cfg, [1, 3, 5], policy, 0.0, rng)
    b = run_episodes(cfg, [1, 3, 5], policy, 0.0, rng)
    assert a == b
    assert all(length <= 30 for _, length in a)
    assert any(length == 30 for _, length in a)
