"""Environments: one gymnasium vector env of `num_envs` per rank.

Any gymnasium id with a Box observation and Discrete actions works. Classic-control
envs that have gymnasium's native vectorized version (CartPole) use it (~10x faster
than stepping envs one by one); Atari (ALE/*) gets the standard preprocessing; MinAtar
(MinAtar/*) comes from the `minatar` package.

Autoreset is gymnasium's default NEXT_STEP mode: the step after an episode ends returns
the reset observation and ignores its action. The replay relies on it (each
observation is stored once, the final one included).
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from hvd_dqn.config import ConfigError, EnvConfig
from hvd_dqn.dqn import epsilon_greedy

MAX_ENVS_PER_RANK = 4096
MAX_RANKS = 1 << 19
MAX_SEED = 1 << 32


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def env_seeds(seed: int, rank: int, num_envs: int, segment: int = 0) -> list[int]:
    """One seed per env of this rank: 2 * ((base + rank * E + i) mod 2**31), with E = 4096
    and `base` a 32-bit number drawn by numpy's SeedSequence from (seed, segment).

    Within one run (one seed and segment) every env of every rank (rank < 2**19) gets
    its own seed by construction; another seed or segment moves the whole block to an
    independent random place. The seeds fit 32 bits (MinAtar seeds numpy's legacy
    RandomState) and are even, so they never meet the odd evaluation seeds
    (evaluate.eval_seed). `segment` is the env step at which a resumed run restarts
    its envs (0 for a fresh run): its new episodes are not the first attempt's.
    """
    if num_envs > MAX_ENVS_PER_RANK or rank >= MAX_RANKS or not 0 <= seed < MAX_SEED:
        raise ConfigError(
            f"env seeds: num_envs {num_envs}, rank {rank} or seed {seed} out of range"
        )
    base = int(np.random.SeedSequence([seed, segment]).generate_state(1)[0])
    return [2 * ((base + rank * MAX_ENVS_PER_RANK + i) % 2**31) for i in range(num_envs)]


def _register(env_id: str) -> str:
    """Make the id known to gymnasium and return it as the registry names it.

    ALE/* and MinAtar/* import their packages; "module:Name-v0" imports `module` (which
    registers Name-v0 on import), as gymnasium.make does, for envs of your own.
    """
    if ":" in env_id:
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"config field env.id: cannot import module {module!r} ({exc})"
            ) from None
    if is_atari(env_id):
        import ale_py

        # ALE's banner (two stderr lines per process) is not an error or a warning.
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        gym.register_envs(ale_py)
    elif env_id.startswith("MinAtar/"):
        import minatar.gym  # type: ignore[import-untyped]

        if env_id not in gym.registry:
            minatar.gym.register_envs()
    return env_id


def _atari_env(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """One Atari env with the Nature-DQN preprocessing (Mnih et al. 2015; Machado 2018).

    ALE steps every frame (frameskip=1) so AtariPreprocessing can repeat each action
    frame_skip times and max-pool the last two frames; then 84x84 grayscale, up to
    noop_max no-ops after reset, and frame_stack frames stacked on axis 0. The time
    limit counts agent steps (one per frame_skip frames), as env.max_episode_steps
    means for every env.
    """
    env = gym.make(
        cfg.id,
        frameskip=1,
        repeat_action_probability=cfg.sticky_actions,
        full_action_space=False,
        render_mode=render_mode,
    )
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=cfg.noop_max,
        frame_skip=cfg.frame_skip,
        screen_size=cfg.screen_size,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    if cfg.max_episode_steps:  # outside the frame skip: a limit in agent steps
        env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
    return gym.wrappers.FrameStackObservation(env, cfg.frame_stack)


def make_vector_env(
    cfg: EnvConfig, num_envs: int, native: bool = True, render_mode: str | None = None
) -> gym.vector.VectorEnv:
    """`num_envs` copies of cfg.id as one vector env; refuses non-DQN spaces.

    native: use gymnasium's vectorized implementation where the env has one (one
    generator for all envs); False steps separate envs, each with its own seed.
    render_mode: gymnasium's (e.g. "rgb_array" for `envs.render()` frames).
    """
    env_id = _register(cfg.id)
    if env_id not in gym.registry:
        raise ConfigError(f"config field env.id={cfg.id!r}: not a registered gymnasium id")
    spec = gym.registry[env_id]
    kwargs: dict[str, Any] = {} if render_mode is None else {"render_mode": render_mode}
    if cfg.max_episode_steps:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    if is_atari(cfg.id):

        def make_one() -> gym.Env:
            return _atari_env(cfg, render_mode)

        envs: gym.vector.VectorEnv = gym.vector.SyncVectorEnv([make_one] * num_envs)
    elif native and spec.vector_entry_point is not None:
        envs = gym.make_vec(
            env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
        )
    else:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **kwargs)
    check_spaces(cfg.id, envs.single_observation_space, envs.single_action_space)
    return envs


def check_spaces(env_id: str, obs_space: gym.Space, action_space: gym.Space) -> None:
    """DQN needs a Box observation and a Discrete action space."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(
            f"config field env.id={env_id!r}: action space {action_space} is not "
            f"Discrete; DQN picks among a finite set of actions"
        )
    if not isinstance(obs_space, gym.spaces.Box):
        raise ConfigError(
            f"config field env.id={env_id!r}: observation space {obs_space} is not a Box"
        )


def save_envs(envs: gym.vector.VectorEnv, env_id: str) -> bytes | None:
    """The vector env mid-episode as bytes (pickle), or None where that is not exact.

    CartPole's native vector env and MinAtar's envs are plain Python and numpy: a
    pickled copy steps exactly like the original (tested). ALE's emulator pickles but
    its copy diverges (its RNG and sticky-action state are not all carried), so Atari
    returns None and a resumed Atari run starts new episodes.
    """
    if is_atari(env_id):
        return None
    fns = getattr(envs, "env_fns", None)  # SyncVectorEnv's factories: closures, unpicklable
    try:
        if fns is not None:
            envs.env_fns = None  # type: ignore[attr-defined]
        return pickle.dumps(envs)
    except Exception:
        return None
    finally:
        if fns is not None:
            envs.env_fns = fns  # type: ignore[attr-defined]


def load_envs(data: bytes) -> gym.vector.VectorEnv:
    """A vector env saved by `save_envs` (only ever our own checkpoint's bytes)."""
    return pickle.loads(data)


def frame_stack(cfg: EnvConfig) -> int:
    """How many frames one observation stacks on axis 0 (1: no stacking)."""
    return cfg.frame_stack if is_atari(cfg.id) else 1


def reset(envs: gym.vector.VectorEnv, seeds: Sequence[int]) -> np.ndarray:
    """Reset `envs` with one seed per env; a native vector env (one generator for all
    of its envs, e.g. CartPoleVectorEnv) takes the first seed, distinct per rank."""
    per_env = isinstance(envs, (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv))
    seed: Any = list(seeds) if per_env else int(seeds[0])
    obs, _ = envs.reset(seed=seed)
    return obs


def lives_lost(
    before: np.ndarray | None, info: dict[str, Any], prev_ended: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Atari's episodic life: which envs lost a life in this step, and the lives now.

    `before` is the lives after the previous step (None at the start); `prev_ended`
    marks the envs whose previous step ended the episode, so this step was their
    autoreset (lives back to full, nothing lost). No "lives" in info: nothing is lost.
    """
    if "lives" not in info:
        return None, before
    now = np.asarray(info["lives"])
    if before is None:
        return None, now
    return (now < before) & ~prev_ended, now


def run_episodes(
    cfg: EnvConfig,
    seeds: Sequence[int],
    act: Any,
    eps: float,
    rng: np.random.Generator,
    on_frame: Any = None,
) -> list[tuple[float, int]]:
    """One episode per seed, all at once in one vector env; (raw return, length) each.

    `act(obs) -> actions` is called once per step for every env together; with
    probability eps an env takes a random action instead (evaluation epsilon).
    on_frame: the env renders rgb_array frames and `on_frame(envs)` is called after the
    reset and after every step up to the last one of the episodes (for one seed: the
    episode's length + 1 frames).
    """
    if not seeds:
        return []
    render_mode = None if on_frame is None else "rgb_array"
    envs = make_vector_env(cfg, len(seeds), native=False, render_mode=render_mode)
    try:
        obs = reset(envs, seeds)  # episode i: seed i
        n = len(seeds)
        returns = np.zeros(n)
        lengths = np.zeros(n, dtype=np.int64)
        running = np.ones(n, dtype=bool)
        num_actions = int(envs.single_action_space.n)  # type: ignore[attr-defined]
        if on_frame is not None:
            on_frame(envs)
        while running.any():
            actions = epsilon_greedy(np.asarray(act(obs)), num_actions, eps, rng)
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            returns += np.where(running, rewards, 0.0)
            lengths += running
            running &= ~(terminated | truncated)
            if on_frame is not None:
                on_frame(envs)
        return list(zip(returns.tolist(), lengths.tolist(), strict=True))
    finally:
        envs.close()
