"""Greedy evaluation with fixed seeds, split across ranks, and the exported policy.

Episode i always runs with seed `eval_seed(i)` (odd numbers; training seeds are even),
whatever the world size, so two evaluations of one policy see the same episodes. Under
a world of p ranks, rank r runs episodes r, r + p, ...; the results are gathered so
every rank computes the same statistics.

An exported policy is a directory: a TensorFlow SavedModel with a `q_values`
signature, and `policy.json` with the env settings it was trained on. Loading it needs
neither the training code's config nor Keras.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from hvd_dqn.config import ConfigError, EnvConfig
from hvd_dqn.envs import make_vector_env, run_episodes

POLICY_FILE = "policy.json"


def eval_seed(episode: int) -> int:
    """Seed of evaluation episode i: 2i + 1 (training seeds are even)."""
    return 2 * episode + 1


def summarize(returns: list[float]) -> dict[str, float]:
    """Mean, std, min and max of episode returns."""
    r = np.asarray(returns, dtype=np.float64)
    return {
        "return_mean": float(r.mean()),
        "return_std": float(r.std()),
        "return_min": float(r.min()),
        "return_max": float(r.max()),
        "episodes": len(r),
    }


def evaluate(
    act: Callable[[np.ndarray], Any],
    env: EnvConfig,
    episodes: int,
    eps: float = 0.0,
    rank: int = 0,
    size: int = 1,
    allgather_object: Callable[[Any], list[Any]] = lambda x: [x],
) -> dict[str, float]:
    """Run this rank's share of `episodes` and return statistics over all of them."""
    mine = list(range(rank, episodes, size))
    rng = np.random.default_rng([episodes, rank, 7])
    results = run_episodes(env, [eval_seed(i) for i in mine], act, eps, rng)
    gathered = allgather_object(list(zip(mine, results, strict=True)))
    ordered = sorted(item for part in gathered for item in part)
    returns = [ret for _, (ret, _) in ordered]
    stats = summarize(returns)
    stats["length_mean"] = float(np.mean([length for _, (_, length) in ordered]))
    return stats


def export_policy(module: tf.Module, env: EnvConfig, path: Path) -> None:
    """Save `module` (with a `q_values` tf.function) and its env settings to `path`."""
    tmp = path.with_name(path.name + ".partial")
    tf.saved_model.save(module, str(tmp))
    (tmp / POLICY_FILE).write_text(json.dumps({"env": asdict(env)}, indent=2))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)


def load_policy(
    path: Path,
) -> tuple[Callable[[np.ndarray], np.ndarray], EnvConfig, tuple[int, ...]]:
    """A greedy `act(obs)`, the env settings and the observation shape it takes, from an
    exported policy (or a run dir)."""
    if (path / "model" / POLICY_FILE).exists():
        path = path / "model"
    if not (path / POLICY_FILE).exists():
        raise ConfigError(
            f"{path}: not an exported policy or a run directory with model/ (no {POLICY_FILE})"
        )
    try:
        env_fields = json.loads((path / POLICY_FILE).read_text())["env"]
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in env_fields.items()
        }
        env = EnvConfig(**fields)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path / POLICY_FILE}: unreadable ({exc})") from None
    model = tf.saved_model.load(str(path))
    spec = model.q_values.concrete_functions[0].structured_input_signature[0][0]
    shape = tuple(int(d) for d in spec.shape[1:])

    def act(obs: np.ndarray) -> np.ndarray:
        return np.argmax(model.q_values(obs).numpy(), axis=1)

    return act, env, shape


def evaluate_command(target: str, episodes: int, env_id: str | None, eps: float) -> int:
    """`hvd-dqn evaluate`: print mean, std, min, max of raw returns; 0 on success."""
    act, env, takes = load_policy(Path(target))
    if env_id:
        env = replace(env, id=env_id)
        probe = make_vector_env(env, 1, native=False)
        shape = tuple(probe.single_observation_space.shape or ())
        probe.close()
        if shape != takes:
            raise ConfigError(
                f"--env {env_id}: its observations have shape {shape}, the policy in "
                f"{target} takes {takes}"
            )
    stats = evaluate(act, env, episodes, eps)
    print(
        f"{env.id}: {episodes} episodes, epsilon {eps}: "
        f"mean {stats['return_mean']:.2f}  std {stats['return_std']:.2f}  "
        f"min {stats['return_min']:.2f}  max {stats['return_max']:.2f}  "
        f"(mean length {stats['length_mean']:.1f})"
    )
    print(
        json.dumps(
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in stats.items()
            }
        )
    )
    return 0
