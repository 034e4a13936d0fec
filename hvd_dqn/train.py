"""The training loop, top to bottom: act, store, update, sync, log, evaluate, save.

Every rank runs this same loop on its own envs and replay. The loop's counters are
identical on all ranks (same num_envs, same replay_ratio), so all ranks reach every
update, log, evaluation and checkpoint together and make the same collective calls in
the same order. Decisions that end the run (NaN, solved) are collective votes.

A run directory (rank 0 writes it) holds:
    config.yaml        the resolved config (load it with --config to rerun)
    metrics.jsonl      one JSON line per log/eval point, averaged over ranks
    tensorboard/       the same scalars as TensorBoard events
    checkpoints/       tf.train.Checkpoint of learner and counters (`train --resume`)
    model/             the exported greedy policy (`hvd-dqn evaluate RUN_DIR`)
    summary.json       written last: final evaluation, steps, wall-clock
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import tensorflow as tf

from hvd_dqn import distributed
from hvd_dqn.config import Config, ConfigError, run_dir, to_yaml
from hvd_dqn.distributed import World
from hvd_dqn.dqn import epsilon_greedy, linear_schedule
from hvd_dqn.envs import env_seeds, frame_stack, make_vector_env, reset
from hvd_dqn.evaluate import evaluate, export_policy
from hvd_dqn.learner import ExportedPolicy, Learner
from hvd_dqn.metrics import RunLog, atomic_write
from hvd_dqn.replay import Replay


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss on some rank)."""


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


def choose_run_dir(cfg: Config) -> Path:
    """run_dir(cfg), or for the default name the first of NAME, NAME-1, ... not yet used.

    An explicit run.run_dir that already holds a run is refused, never overwritten.
    """
    base = run_dir(cfg)
    if cfg.run.run_dir:
        if (base / "metrics.jsonl").exists():
            raise FileExistsError(
                f"run.run_dir={base}: already holds a run (metrics.jsonl); choose another directory"
            )
        return base
    path, i = base, 0
    while (path / "metrics.jsonl").exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def restore(manager: tf.train.CheckpointManager, checkpoint: tf.train.Checkpoint) -> int:
    """Load the newest checkpoint into `checkpoint`; returns its env step count."""
    path = manager.latest_checkpoint
    if path is None:
        raise FileNotFoundError(f"{manager.directory}: no checkpoint to resume from")
    checkpoint.restore(path).assert_existing_objects_matched()
    return int(checkpoint.env_steps.numpy())


def drop_rows_after(metrics: Path, step: int) -> float:
    """Keep the metrics.jsonl rows up to env step `step` (the later ones will be
    written again); returns the last kept row's wall_seconds."""
    if not metrics.exists():
        return 0.0
    kept = [
        line
        for line in metrics.read_text().splitlines()
        if line.strip() and json.loads(line)["env_steps"] <= step
    ]
    atomic_write(metrics, "".join(line + "\n" for line in kept))
    return float(json.loads(kept[-1])["wall_seconds"]) if kept else 0.0


def train(cfg: Config, world: World, resume: bool = False) -> dict[str, Any]:
    """Train per `cfg` on this rank as part of `world`; returns the final summary.

    resume: go on from the newest checkpoint in run.run_dir (an earlier run of `cfg`,
    stopped or crashed) until run.total_steps. The learner (weights, target, optimizer
    state, update count) and the env step count are restored; the replay is not saved,
    so each rank refills it with learner.learning_starts env steps before updating.
    """
    t_process = time.perf_counter()
    # Horovod (host side): every rank must train the same config.
    distributed.check_same("config", distributed.config_digest(to_yaml(cfg)))
    # Rank 0 picks the run directory; everyone uses its choice.
    chosen = str(run_dir(cfg) if resume else choose_run_dir(cfg)) if world.is_chief else ""
    out = Path(distributed.allgather_object(chosen)[0])
    E, p = cfg.env.num_envs, world.size
    envs = distributed.run_collectively(
        lambda: make_vector_env(cfg.env, E), "creating the environments"
    )
    if world.is_chief and not resume:  # only once the envs exist: a bad env id leaves nothing
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", to_yaml(cfg))
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.Discrete)
    num_actions = int(action_space.n)
    obs_shape, obs_dtype = obs_space.shape, obs_space.dtype
    replay = Replay(
        cfg.replay.capacity,
        E,
        obs_shape,
        obs_dtype,
        stack=frame_stack(cfg.env),
        n_step=cfg.replay.n_step,
        gamma=cfg.learner.gamma,
        prioritized=cfg.replay.prioritized,
        alpha=cfg.replay.alpha,
        priority_eps=cfg.replay.priority_eps,
        seed=[cfg.run.seed, world.rank, 2],  # its own stream on every rank
    )
    learner = Learner(
        obs_shape,
        obs_dtype,
        num_actions,
        cfg.network,
        cfg.learner,
        seed=cfg.run.seed,
        world_size=p,
        reduce_gradients=partial(distributed.average_gradients, fp16=cfg.learner.fp16_allreduce),
    )
    checkpoint = tf.train.Checkpoint(learner=learner, env_steps=tf.Variable(0, dtype=tf.int64))
    manager = tf.train.CheckpointManager(checkpoint, str(out / "checkpoints"), max_to_keep=2)
    start = 0  # env steps (all ranks) already trained
    if resume:  # rank 0 reads the checkpoint; the broadcast below hands it to all
        found = distributed.run_collectively(
            lambda: restore(manager, checkpoint) if world.is_chief else 0,
            "restoring the checkpoint",
        )
        start = int(distributed.allgather_object(found)[0])
        if start >= cfg.run.total_steps:
            raise ConfigError(
                f"run.total_steps={cfg.run.total_steps}: the run in {out} is already at "
                f"{start} env steps; pass a larger --total-steps to go on"
            )
    # Horovod: start from rank 0's weights and optimizer state.
    distributed.broadcast_variables(learner.state)
    log = None
    if world.is_chief:
        wall = 0.0
        if resume:  # only now that the checkpoint loaded: a failed resume changes nothing
            atomic_write(out / "config.yaml", to_yaml(cfg))  # its new total_steps
            wall = drop_rows_after(out / "metrics.jsonl", start)
        log = RunLog(out, cfg.run.total_steps, cfg.run.progress, wall_offset=wall)

    rng = np.random.default_rng([cfg.run.seed, world.rank, 1, start])
    obs = reset(envs, env_seeds(cfg.run.seed, world.rank, E, segment=start))
    step_global = start  # env steps so far, all ranks together
    learn_from = start + cfg.learner.learning_starts  # a resumed run refills its replay
    per_iter = E * p
    iterations = math.ceil((cfg.run.total_steps - start) / per_iter)
    K = cfg.learner.updates_per_call
    update_debt = 0.0
    ep_return, ep_length = np.zeros(E), np.zeros(E, dtype=np.int64)
    lives = None
    prev_ended = np.zeros(E, dtype=bool)
    window = Window()
    last_eval: dict[str, float] = {}
    solved_at: int | None = None
    t_train = time.perf_counter()

    for it in range(iterations):
        # -- act: one batched call for all of this rank's envs ---------------------
        eps = linear_schedule(
            cfg.exploration.eps_start,
            cfg.exploration.eps_end,
            cfg.exploration.eps_decay_steps,
            step_global,
        )
        actions = epsilon_greedy(learner.greedy(obs).numpy(), num_actions, eps, rng)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)

        # -- store: raw rewards for reporting, clipped for learning ------------------
        learn_terminal = terminated
        if cfg.env.episodic_life and "lives" in info:
            now = np.asarray(info["lives"])
            if lives is not None:  # a lost life ends the episode for learning only
                learn_terminal = terminated | ((now < lives) & ~prev_ended)
            lives = now
        learn_rewards = np.sign(rewards) if cfg.env.clip_rewards else rewards
        replay.add(obs, actions, learn_rewards, learn_terminal, truncated)
        ended = (terminated | truncated) & ~prev_ended
        ep_return += np.where(prev_ended, 0.0, rewards)
        ep_length += ~prev_ended
        if ended.any():
            window.episodes += int(ended.sum())
            window.return_sum += float(ep_return[ended].sum())
            window.length_sum += float(ep_length[ended].sum())
            ep_return[ended], ep_length[ended] = 0.0, 0
        prev_ended = ended
        obs = next_obs
        step_global += per_iter
        window.env_steps += per_iter

        # -- update: replay_ratio updates per env step, K per compiled call ----------
        if step_global >= learn_from and replay.t > cfg.replay.n_step + 1:
            update_debt += E * cfg.learner.replay_ratio
            while update_debt >= K:
                update_debt -= K
                beta = linear_schedule(
                    cfg.replay.beta_start, cfg.replay.beta_end, cfg.run.total_steps, step_global
                )
                # One draw of K batches (one pass through the sum tree), split K ways.
                batches = replay.sample(K * cfg.learner.batch_size, beta).split(K)
                t0 = time.perf_counter()
                result = learner.update(batches)  # gradients averaged over ranks inside
                window.update_seconds += time.perf_counter() - t0
                indices = np.concatenate([batch.indices for batch in batches])
                replay.update_priorities(indices, result.td_abs.ravel())
                window.updates += K
                window.calls += 1
                window.loss_sum += result.loss
                window.q_sum += result.q_mean

        # -- log, evaluate, checkpoint: the same iterations on every rank ------------
        last = it == iterations - 1
        eval_now = cfg.run.eval_every and _crossed(step_global, per_iter, cfg.run.eval_every)
        if eval_now or last:
            t_eval = time.perf_counter()
            last_eval = _evaluate(cfg, learner, world)
            window.start += time.perf_counter() - t_eval  # throughput excludes evaluation
            if log:
                log.write("eval", step_global, last_eval)
                log.message(
                    f"eval @ {step_global} env steps: mean return "
                    f"{last_eval['return_mean']:.1f} over {last_eval['episodes']} ep."
                )
            target = cfg.run.stop_at_return
            reached = target is not None and last_eval["return_mean"] >= target
            if distributed.any_rank(reached):  # collective: every rank stops here
                solved_at = step_global
        # Log after any stop decision, so the last window is always written.
        if _crossed(step_global, per_iter, cfg.run.log_every) or last or solved_at is not None:
            row = _log_point(window, learner, world, eps)
            if not math.isfinite(row["loss"]) and window.updates:
                # Averaged over ranks, so a NaN on any rank is a NaN here, on every rank.
                raise TrainingError(f"non-finite loss at env step {step_global}")
            if log:
                log.write("train", step_global, row)
                log.progress(step_global, ret=row["episode_return"], sps=row["env_steps_per_s"])
            window = Window()
        every = cfg.run.checkpoint_every
        save_now = bool(every) and _crossed(step_global, per_iter, every)
        if world.is_chief and (save_now or last or solved_at is not None):
            checkpoint.env_steps.assign(step_global)
            manager.save(checkpoint_number=step_global)
        if solved_at is not None:
            break

    train_seconds = time.perf_counter() - t_train
    envs.close()
    summary = {
        "env_steps": step_global,
        "updates": int(learner.updates.numpy()),
        "world_size": p,
        "solved_at_env_steps": solved_at,
        "train_seconds": round(train_seconds, 3),
        "process_seconds": round(time.perf_counter() - t_process, 3),
        "final_eval": last_eval,
        "run_dir": str(out),
    }
    if world.is_chief and log:
        export_policy(ExportedPolicy(learner.online, obs_dtype), cfg.env, out / "model")
        log.close()
        atomic_write(out / "summary.json", json.dumps(summary, indent=2))
        print(
            f"done: {step_global} env steps in {train_seconds:.1f} s; final eval mean "
            f"{last_eval.get('return_mean', float('nan')):.1f}; outputs in {out}"
        )
    return summary


def _crossed(step: int, per_iter: int, every: int) -> bool:
    """True at the iteration where `step` passes a multiple of `every`."""
    return step // every > (step - per_iter) // every


def _log_point(window: Window, learner: Learner, world: World, eps: float) -> dict[str, float]:
    """This window's metrics averaged over ranks (collective)."""
    elapsed = time.perf_counter() - window.start
    # The share of update time spent in the allreduce: time 10 gradient-sized
    # allreduces alone (every rank does this at the same point).
    t0 = time.perf_counter()
    for _ in range(10):
        learner.time_allreduce()
    allreduce_s = (time.perf_counter() - t0) / 10
    local = {
        "episodes": window.episodes,
        "return_sum": window.return_sum,
        "length_sum": window.length_sum,
        "updates": window.updates,
        "update_seconds": window.update_seconds,
        "loss_sum": window.loss_sum,
        "q_sum": window.q_sum,
        "calls": window.calls,
        "elapsed": elapsed,
        "allreduce_s": allreduce_s,
    }
    m = distributed.mean_over_ranks(local)  # Horovod: one allreduce of all counters
    calls = max(m["calls"], 1e-9)
    per_update = m["update_seconds"] / max(m["updates"], 1e-9)
    return {
        "episode_return": m["return_sum"] / m["episodes"] if m["episodes"] else float("nan"),
        "episode_length": m["length_sum"] / m["episodes"] if m["episodes"] else float("nan"),
        "episodes": m["episodes"] * world.size,
        "loss": m["loss_sum"] / calls if m["calls"] else float("nan"),
        "q_mean": m["q_sum"] / calls if m["calls"] else float("nan"),
        "epsilon": eps,
        "env_steps_per_s": window.env_steps / m["elapsed"] if m["elapsed"] else 0.0,
        "updates_per_s": m["updates"] / m["update_seconds"] if m["update_seconds"] else 0.0,
        "ms_per_update": 1000 * per_update,
        "allreduce_share": min(1.0, m["allreduce_s"] * m["calls"] / m["update_seconds"])
        if m["update_seconds"] and world.size > 1
        else 0.0,
    }


def _evaluate(cfg: Config, learner: Learner, world: World) -> dict[str, float]:
    """Greedy evaluation, episodes split across ranks and gathered (collective)."""

    def act(obs: np.ndarray) -> np.ndarray:
        return learner.greedy(obs).numpy()

    return evaluate(
        act,
        cfg.env,
        cfg.run.eval_episodes,
        cfg.exploration.eval_eps,
        world.rank,
        world.size,
        distributed.allgather_object,
    )
