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
import warnings
from collections.abc import Callable, Iterator
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


VIDEO_SUFFIXES = (".gif", ".mp4")
MIN_VIDEO_SIDE = 240  # small frames (MinAtar's 10x10) are scaled up to at least this


def record_video(
    act: Callable[[np.ndarray], Any],
    env: EnvConfig,
    episodes: int,
    path: Path,
    eps: float = 0.0,
    fps: int = 25,
) -> list[tuple[float, int]]:
    """Greedy episodes 0 .. episodes-1 (the seeds `evaluate` uses) one after another as
    a GIF (Pillow) or an MP4 (OpenCV) at `path`; returns (raw return, length) of each.
    One frame per agent step plus the first; fps 25 (a GIF counts time in 10 ms).

    Frames come from gymnasium's rgb_array rendering of the unprocessed game (Atari's
    210x160 screen, MinAtar's 10x10 grid scaled up by an integer factor), held unscaled
    in memory until written (an Atari frame is 100 kB). An env that cannot render is a
    ConfigError; the file appears only once it is complete.
    """
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"--video {path}: the file must end in .gif or .mp4")
    if not path.parent.is_dir():
        raise ConfigError(f"--video {path}: no directory {path.parent}")
    frames: list[np.ndarray] = []

    def on_frame(envs: Any) -> None:
        with warnings.catch_warnings():  # gymnasium's checker on MinAtar's float frames
            warnings.simplefilter("ignore", UserWarning)
            frames.append(_frame(envs, env.id))

    rng = np.random.default_rng([episodes, 0, 8])
    results = [
        run_episodes(env, [eval_seed(i)], act, eps, rng, on_frame)[0] for i in range(episodes)
    ]
    _write_video(frames, path, fps)
    return results


def _frame(envs: Any, env_id: str) -> np.ndarray:
    """The vector env's one frame as uint8 RGB, unscaled."""
    try:
        rendered = envs.render()
    except Exception as exc:  # gymnasium's DependencyNotInstalled, a render error
        raise ConfigError(f"--video: {env_id} cannot render frames ({exc})") from None
    frame = np.asarray(rendered[0] if isinstance(rendered, (tuple, list)) else rendered)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ConfigError(f"--video: {env_id} renders no RGB frames (got shape {frame.shape})")
    if frame.dtype != np.uint8:  # MinAtar: floats in [0, 1]
        frame = (np.clip(frame, 0.0, 1.0) * 255).astype(np.uint8)
    return frame


def _scaled(frames: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Each frame scaled up by the integer factor that brings its short side to at
    least MIN_VIDEO_SIDE (nearest neighbour: MinAtar's cells stay sharp squares)."""
    for frame in frames:
        scale = max(1, math.ceil(MIN_VIDEO_SIDE / min(frame.shape[:2])))
        yield frame.repeat(scale, axis=0).repeat(scale, axis=1)


def _write_video(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """Frames (unscaled, kept small in memory) to `path`, through a partial file."""
    tmp = path.with_name(path.name + ".partial" + path.suffix)
    try:
        if path.suffix.lower() == ".gif":
            from PIL import Image

            images = (Image.fromarray(f) for f in _scaled(frames))
            next(images).save(
                tmp, save_all=True, append_images=images, duration=round(1000 / fps), loop=0
            )
        else:
            import cv2

            first = next(_scaled(frames[:1]))
            size = (first.shape[1], first.shape[0])
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
            if not writer.isOpened():
                raise ConfigError(f"--video {path}: OpenCV cannot write MP4 here")
            for f in _scaled(frames):
                writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            writer.release()
        tmp.rename(path)
    finally:
        tmp.unlink(missing_ok=True)


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


def evaluate_command(
    target: str,
    episodes: int,
    env_id: str | None,
    eps: float,
    video: str | None = None,
    video_episodes: int = 1,
) -> int:
    """`hvd-dqn evaluate`: print mean, std, min, max of raw returns; 0 on success.
    video: also record the first `video_episodes` episodes to that GIF or MP4."""
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
    if video:
        recorded = record_video(act, env, video_episodes, Path(video), eps)
        frames = sum(length + 1 for _, length in recorded)
        print(
            f"{video}: {len(recorded)} episode(s), returns "
            f"{', '.join(f'{r:.1f}' for r, _ in recorded)}, {frames} frames"
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
