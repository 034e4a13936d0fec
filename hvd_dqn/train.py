"""The training loop, top to bottom: act, store, update, evaluate, vote, log, save.

Every rank runs this same loop on its own envs and replay. The loop's counters are
identical on all ranks (same num_envs, same replay_ratio), so all ranks reach every
update, log, evaluation and checkpoint together and make the same collective calls in
the same order. Once per iteration every rank votes (distributed.vote): a signal or the
wall-time limit (checkpoint, then exit 75), a non-finite loss on any rank (stop before
any checkpoint of the bad state), a reached stop_at_return. Everything the loop changes
lives in one TrainState (checkpoint.py), which is what a checkpoint saves.

The same command starts a run and continues it: run.run_dir that holds this run goes on
from its newest complete checkpoint; a finished one exits at once.

Elastic (run.elastic, under an elastic horovodrun): the loop runs inside
distributed.run_elastic. A worker that is lost or added makes Horovod re-form the world
and enter the loop again with the last commit synced from rank 0 (rejoin); the run
begins (begin) at the job's first entry only, so a joining worker makes no collective
call before the loop.

A run directory (rank 0 writes it) holds:
    config.yaml        the resolved config (load it with --config to rerun)
    metrics.jsonl      one JSON line per log/eval point, averaged over ranks
    tensorboard/       the same scalars as TensorBoard events
    checkpoints/       the newest complete checkpoints (checkpoint.py lists the files)
    model/             the exported greedy policy (`hvd-dqn evaluate RUN_DIR`)
    summary.json       written last: final evaluation, steps, wall-clock
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hvd_dqn import checkpoint, distributed
from hvd_dqn.checkpoint import TrainState, Window
from hvd_dqn.config import Config, ConfigError, changed_fields, load, run_dir, to_yaml
from hvd_dqn.distributed import World
from hvd_dqn.dqn import epsilon_greedy, linear_schedule
from hvd_dqn.envs import env_seeds, frame_stack, lives_lost, make_vector_env, reset
from hvd_dqn.evaluate import evaluate, export_policy
from hvd_dqn.interrupts import EXIT_PREEMPTED, Interrupts
from hvd_dqn.learner import ExportedPolicy, Learner
from hvd_dqn.metrics import RunLog, atomic_write
from hvd_dqn.replay import Replay, replay_bytes


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss on some rank)."""


REPLAY_SAVE_BUDGET = 2 << 30  # run.save_replay=auto saves a rank's replay up to 2 GiB
_USE_MEMORY = 0.8  # a rank's replay may take at most this share of its host's free memory


def inspect_run_dir(out: Path, cfg: Config) -> str:
    """Rank 0: what `out` holds. "new" (nothing yet, or a run that never checkpointed),
    "continue" (a run of this config with a complete checkpoint) or "finished" (its
    summary.json says it reached total_steps or its stop_at_return). A run dir that is a
    file, holds another config or something that is not a run is refused (ConfigError)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run directory {out}: exists and is not a directory")
    saved = out / "config.yaml"
    if not saved.is_file():
        ours = [
            n
            for n in ("metrics.jsonl", "checkpoints", "summary.json", "model")
            if (out / n).exists()
        ]
        if ours:
            raise ConfigError(
                f"run directory {out}: holds {ours[0]} but no config.yaml (not an hvd_dqn "
                f"run, or a damaged one); choose another directory"
            )
        return "new"
    try:
        old = load(str(saved))
    except ConfigError as exc:
        raise ConfigError(
            f"run directory {out}: its config.yaml is not a config of this hvd_dqn ({exc})"
        ) from None
    changed = changed_fields(old, cfg)
    if changed:
        raise ConfigError(
            f"run directory {out} holds a run with another config (changed: "
            f"{', '.join(changed)}); only run.total_steps may grow. Use another --run-dir"
        )
    summary = out / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        if done.get("solved_at_env_steps") is not None or done["env_steps"] >= cfg.run.total_steps:
            return "finished"
    return "continue" if checkpoint.complete(out) else "new"


def prepare_run_dir(out: Path, cfg: Config, plan: str) -> None:
    """Rank 0: create the run dir, (re)write config.yaml, drop leftovers of interrupted
    saves and a stale summary. Nothing a run needs is removed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(13, "Permission denied", str(out))
        atomic_write(out / "config.yaml", to_yaml(cfg))  # a grown total_steps is recorded
    except OSError as exc:
        raise ConfigError(f"run directory {out}: cannot write there ({exc.strerror})") from None
    checkpoint.clean(out, cfg.run.keep_checkpoints)
    if plan == "continue":
        (out / "summary.json").unlink(missing_ok=True)  # written again at the end


def drop_rows_after(metrics: Path, step: int) -> None:
    """Keep the metrics.jsonl rows up to env step `step` (the later ones are written
    again by the resumed run)."""
    if not metrics.exists():
        return
    kept = [
        line
        for line in metrics.read_text().splitlines()
        if line.strip() and json.loads(line)["env_steps"] <= step
    ]
    atomic_write(metrics, "".join(line + "\n" for line in kept))


def check_replay_fits(need: int, capacity: int, ranks_here: int) -> int:
    """`need`, the replay's bytes per rank (replay.replay_bytes); ConfigError before
    allocation when this host's ranks together would need more than 80 % of its
    available memory."""
    free = _available_memory()
    if free and need * ranks_here > _USE_MEMORY * free:
        raise ConfigError(
            f"config field replay.capacity={capacity}: the replay needs {need / 2**30:.1f} GiB "
            f"per rank x {ranks_here} ranks on this host, more than 80 % of its "
            f"{free / 2**30:.1f} GiB available memory"
        )
    return need


def _available_memory() -> int:
    """MemAvailable of this host in bytes (0 if unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _make_envs(cfg: Config, world: World, segment: int) -> tuple[gym.vector.VectorEnv, np.ndarray]:
    envs = make_vector_env(cfg.env, cfg.env.num_envs)
    return envs, reset(envs, env_seeds(cfg.run.seed, world.rank, cfg.env.num_envs, segment))


def _build_state(cfg: Config, world: World, collective: bool) -> tuple[TrainState, int]:
    """A fresh TrainState on this rank (envs, replay, learner) and the replay's bytes.
    Collective: a bad env id, a replay too big for the host or a network that does not
    fit the observations ends every rank with one line. Elastic (collective False): a
    worker may be joining a run in progress and must make no collective call here."""
    E = cfg.env.num_envs
    run: Any = distributed.run_collectively if collective else (lambda fn, what: fn())
    envs, obs = run(lambda: _make_envs(cfg, world, segment=0), "creating the environments")
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.Discrete)
    obs_shape, obs_dtype = obs_space.shape, obs_space.dtype
    replay_size = run(
        lambda: check_replay_fits(
            replay_bytes(
                cfg.replay.capacity,
                E,
                obs_shape,
                obs_dtype,
                frame_stack(cfg.env),
                cfg.replay.prioritized,
            ),
            cfg.replay.capacity,
            world.local_size,
        ),
        "sizing the replay",
    )
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
    learner = run(
        lambda: Learner(
            obs_shape,
            obs_dtype,
            int(action_space.n),
            cfg.network,
            cfg.learner,
            seed=cfg.run.seed,
            world_size=world.size,
            reduce_gradients=partial(
                distributed.average_gradients, fp16=cfg.learner.fp16_allreduce
            ),
        ),
        "building the network",
    )
    state = TrainState(
        learner=learner,
        replay=replay,
        envs=envs,
        obs=obs,
        rng=np.random.default_rng([cfg.run.seed, world.rank, 1]),
        env_id=cfg.env.id,
        learn_from=cfg.learner.learning_starts,
        ep_return=np.zeros(E),
        ep_length=np.zeros(E, dtype=np.int64),
        prev_ended=np.zeros(E, dtype=bool),
    )
    return state, replay_size


def train(cfg: Config, world: World, interrupts: Interrupts) -> dict[str, Any]:
    """Train per `cfg` on this rank as part of `world`; returns the final summary.

    Idempotent: run.run_dir that holds nothing starts a new run; one that holds this
    run continues from its newest complete checkpoint (checkpoint.py); a finished one
    returns at once. summary["stopped"] names a signal or limit that stopped the run
    early (after a checkpoint): run the same command to go on.
    """
    t_process = time.perf_counter()
    out = run_dir(cfg)
    if cfg.run.elastic != distributed.elastic():
        raise ConfigError(
            "run.elastic: true needs an elastic horovodrun (--min-np/--max-np/"
            "--host-discovery-script, Gloo)"
            if cfg.run.elastic
            else "started by an elastic horovodrun: add --elastic (run.elastic: true)"
        )
    state, replay_size = _build_state(cfg, world, collective=not cfg.run.elastic)
    learner, replay = state.learner, state.replay
    E, p = cfg.env.num_envs, world.size
    num_actions = learner.online.num_actions
    save_replay = cfg.run.save_replay == "always" or (
        cfg.run.save_replay == "auto" and replay_size <= REPLAY_SAVE_BUDGET
    )
    log: RunLog | None = None
    plan = ""
    t_train = time.perf_counter() - state.wall_seconds  # training wall-clock starts

    def begin() -> dict[str, Any] | None:
        """The start of a run, on every rank together: the same config everywhere, the
        run directory (new, continue, finished: then its summary is returned), the
        checkpoint restored, rank 0's weights everywhere, the log opened."""
        nonlocal plan, t_train
        # Horovod (host side): every rank must train the same config.
        distributed.check_same("config", distributed.config_digest(to_yaml(cfg)))
        # Rank 0 looks at the run directory; a failure there ends every rank with its line.
        plan = distributed.run_collectively(
            lambda: inspect_run_dir(out, cfg) if world.is_chief else "", f"run directory {out}"
        )
        plan = distributed.allgather_object(plan)[0]
        ranks = distributed.allgather_object(distributed.describe_rank(world))
        if world.is_chief:  # the first line of a run: the world it runs in
            hosts = sorted({r["host"] for r in ranks})
            devices = sorted({r["device"] for r in ranks})
            print(
                f"hvd-dqn: {world.size} rank(s) on {len(hosts)} host(s) ({', '.join(hosts)}), "
                f"controller {world.controller}, devices {', '.join(devices)}; run directory "
                f"{out} ({plan})",
                flush=True,
            )
        if plan == "finished":
            summary = json.loads((out / "summary.json").read_text()) if world.is_chief else {}
            if world.is_chief:
                print(
                    f"hvd-dqn: {out} is already finished ({summary['env_steps']} env steps); "
                    "nothing to do"
                )
            state.envs.close()
            return {**summary, "already_finished": True}
        if plan == "continue":
            resumed = checkpoint.restore(out, state, world, cfg)
            if not resumed.envs:  # new episodes, seeded apart from the first attempt's
                state.envs.close()
                state.envs, state.obs = _make_envs(cfg, world, segment=state.env_steps)
            if not resumed.per_rank:  # a new replay: refill it before updating again
                state.learn_from = state.env_steps + cfg.learner.learning_starts
        # Only now that a checkpoint loaded (or none was needed): a failed restore changes
        # nothing.
        distributed.run_collectively(
            lambda: prepare_run_dir(out, cfg, plan) if world.is_chief else None,
            f"run directory {out}",
        )
        # Horovod: start from rank 0's weights and optimizer state (restored or initial).
        distributed.broadcast_variables(learner.state)
        distributed.run_collectively(open_log, f"opening the log in {out}")
        t_train = time.perf_counter() - state.wall_seconds  # on from the checkpoint's
        return None

    def open_log() -> None:
        nonlocal log
        if world.is_chief:
            drop_rows_after(out / "metrics.jsonl", state.env_steps)
            log = RunLog(out, cfg.run.total_steps, cfg.run.progress, state.wall_seconds)
            log.progress(state.env_steps)
            if plan == "continue":
                log.message(f"continuing {out} from env step {state.env_steps}")

    def chief_log(method: str, *args: Any) -> None:
        """Rank 0 writes a metrics row; collective, so a failed write (a full disk) ends
        every rank with one line instead of leaving the others waiting."""
        distributed.run_collectively(
            lambda: getattr(log, method)(*args) if log else None, f"writing the log in {out}"
        )

    K = cfg.learner.updates_per_call
    interrupts.configure(world.rank, cfg.run.max_wall_time, cfg.run.stall_timeout)
    save_seconds = 0.0  # the last checkpoint's duration (the wall-time limit keeps 2x)
    stopped = ""
    last_eval: dict[str, float] = {}

    def save() -> None:
        nonlocal save_seconds
        t0 = time.perf_counter()
        state.wall_seconds = time.perf_counter() - t_train
        interrupts.saving = True  # a long write is progress, not a stall
        try:
            checkpoint.save(out, state, world, cfg, save_replay)
        finally:
            interrupts.saving = False
            interrupts.beat()
        save_seconds = time.perf_counter() - t0

    commit = None
    if cfg.run.elastic:
        commit = distributed.ElasticCommit(learner.state, state.shared, state.set_shared)
    began = False  # this rank has been through begin()
    last_size = 0  # the world size at this rank's previous (re)entry (elastic)
    # Elastic, this rank: the update count when it entered the job, and when (with how
    # many transitions in its replay) its gradient first counted.
    mine: dict[str, Any] = {"joined_at": None, "weighted_from": None, "replay_then": None}

    def rejoin(commit: distributed.ElasticCommit) -> dict[str, Any] | None:
        """Elastic: every (re)entry of the loop, on every rank together, with the state
        just synced from rank 0. At the job's first entry (no rank has begun) the run
        begins; a worker that joins later skips that. The world, the learning rate and
        rank 0's log follow the new world; each entry is one row of resets.jsonl."""
        nonlocal world, p, log, began, last_size
        world = distributed.current_world(world)
        p = world.size
        learner.set_world_size(p)
        interrupts.configure(world.rank, cfg.run.max_wall_time, cfg.run.stall_timeout)
        me = distributed.describe_rank(world)
        seen = distributed.allgather_object(
            {"began": began, "last_size": last_size, "failures": commit.failures, **me}
        )
        fresh = not any(r["began"] for r in seen)
        if fresh:
            finished = begin()
            if finished is not None:
                return finished
            commit.save()  # the restored checkpoint is the first commit
        reason = "start" if fresh else "failure" if any(r["failures"] for r in seen) else "hosts"
        row = {
            "time": time.time(),
            "reason": reason,
            "old_size": max(r["last_size"] for r in seen) or None,
            "size": p,
            "env_steps": state.env_steps,
            "updates": int(learner.updates.numpy()),
            "ranks": [{k: r[k] for k in ("rank", "host", "pid")} for r in seen],
        }
        if not began:
            mine["joined_at"] = row["updates"]
        commit.failures, began, last_size = 0, True, p

        def record() -> None:
            if world.is_chief:
                with open(out / "resets.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                if not fresh:
                    print(
                        f"hvd-dqn: elastic reset ({reason}): {row['old_size']} -> {p} ranks "
                        f"at env step {state.env_steps}, update {row['updates']}",
                        flush=True,
                    )

        distributed.run_collectively(record, f"writing {out / 'resets.jsonl'}")
        if not fresh:
            # Rank 0 may be another process now, and rows past the restored step go.
            if log is not None:
                log.close()
                log = None
            distributed.run_collectively(open_log, f"opening the log in {out}")
        return None

    def loop(commit: distributed.ElasticCommit | None = None) -> dict[str, Any] | None:
        """The training loop. Elastic: Horovod calls it again after every reset."""
        nonlocal stopped, last_eval
        interrupts.beat()
        if commit is not None:
            finished = rejoin(commit)
            if finished is not None:
                return finished
        per_iter = E * p
        committed = int(learner.updates.numpy())
        contributes = bool(learner.contributes.numpy())
        # (A run restored after it reached stop_at_return has nothing left to train.)
        while state.env_steps < cfg.run.total_steps and state.solved_at is None:
            interrupts.beat()
            # -- act: one batched call for all of this rank's envs ---------------------
            eps = linear_schedule(
                cfg.exploration.eps_start,
                cfg.exploration.eps_end,
                cfg.exploration.eps_decay_steps,
                state.env_steps,
            )
            actions = epsilon_greedy(learner.greedy(state.obs).numpy(), num_actions, eps, state.rng)
            next_obs, rewards, terminated, truncated, info = state.envs.step(actions)

            # -- store: raw rewards for reporting, clipped for learning ------------------
            life_lost = None  # a learning terminal only: the episode goes on
            if cfg.env.episodic_life:
                life_lost, state.lives = lives_lost(state.lives, info, state.prev_ended)
            learn_rewards = np.sign(rewards) if cfg.env.clip_rewards else rewards
            replay.add(state.obs, actions, learn_rewards, terminated, truncated, life_lost)
            ended = (terminated | truncated) & ~state.prev_ended
            state.ep_return += np.where(state.prev_ended, 0.0, rewards)
            state.ep_length += ~state.prev_ended
            window = state.window
            if ended.any():
                window.episodes += int(ended.sum())
                window.return_sum += float(state.ep_return[ended].sum())
                window.length_sum += float(state.ep_length[ended].sum())
                state.ep_return[ended], state.ep_length[ended] = 0.0, 0
            state.prev_ended = ended
            state.obs = next_obs
            state.env_steps += per_iter
            window.env_steps += per_iter
            step = state.env_steps

            # -- update: replay_ratio updates per env step, K per compiled call ----------
            # Elastic: whether to update is decided by the shared counters alone, so a
            # rank that joined takes part in every allreduce; until it has stored its share
            # of learning_starts it gives zero weight (distributed.average_gradients). The
            # ranks that start the run are ready exactly when learn_from is reached.
            nonfinite = False
            if commit is not None:
                can_update = step >= state.learn_from
                stored = replay.t * E  # transitions this rank added (since it joined)
                ready = (
                    stored >= cfg.learner.learning_starts // p
                    and len(replay) >= cfg.learner.batch_size
                )
                if ready != contributes:
                    contributes = ready
                    learner.contributes.assign(1.0 if ready else 0.0)
                    if ready and mine["weighted_from"] is None:
                        mine["weighted_from"] = int(learner.updates.numpy())
                        mine["replay_then"] = stored
            else:
                can_update = step >= state.learn_from and replay.t > cfg.replay.n_step + 1
                ready = True
            if can_update:
                state.update_debt += E * cfg.learner.replay_ratio
                while state.update_debt >= K and not nonfinite:
                    state.update_debt -= K
                    beta = linear_schedule(
                        cfg.replay.beta_start, cfg.replay.beta_end, cfg.run.total_steps, step
                    )
                    # One draw of K batches (one pass through the sum tree), split K ways.
                    if ready:
                        batches = replay.sample(K * cfg.learner.batch_size, beta).split(K)
                    else:
                        batches = [replay.empty_batch(cfg.learner.batch_size)] * K
                    t0 = time.perf_counter()
                    result = learner.update(batches)  # gradients averaged over ranks inside
                    window.update_seconds += time.perf_counter() - t0
                    nonfinite = not (
                        math.isfinite(result.loss) and np.isfinite(result.td_abs).all()
                    )
                    if ready and not nonfinite:  # a NaN priority would break the sum tree
                        indices = np.concatenate([batch.indices for batch in batches])
                        replay.update_priorities(indices, result.td_abs.ravel())
                    window.updates += K
                    window.calls += 1
                    window.loss_sum += result.loss
                    window.q_sum += result.q_mean

            # -- evaluate: the same iterations on every rank ------------------------------
            last = step >= cfg.run.total_steps
            reached = False
            if not nonfinite and (_crossed(step, per_iter, cfg.run.eval_every) or last):
                t_eval = time.perf_counter()
                last_eval = _evaluate(cfg, learner, world, interrupts)
                window.start += time.perf_counter() - t_eval  # throughput excludes evaluation
                chief_log("eval_row", step, last_eval)
                target = cfg.run.stop_at_return
                reached = target is not None and last_eval["return_mean"] >= target

            # -- the vote: one collective carries every decision that stops or saves ------
            stop, bad_rank, solved = distributed.vote(
                [interrupts.code(save_seconds), world.rank + 1 if nonfinite else 0, int(reached)]
            )
            if bad_rank:  # every rank stops here, before any checkpoint of the bad state
                good = checkpoint.complete(out)
                raise TrainingError(
                    f"non-finite loss or TD error on rank {bad_rank - 1} at update "
                    f"{int(learner.updates.numpy())} (env step {step}); nothing saved after "
                    f"it, last good checkpoint: "
                    f"{f'ckpt at {good[-1]} env steps' if good else 'none'}"
                    f" (lower learner.lr or check the env's rewards)"
                )
            if solved:
                state.solved_at = step
            if stop:
                stopped = interrupts.reason(stop)
                save()
                break
            # Log after the stop decision, so the last window is always written.
            ending = last or state.solved_at is not None
            if _crossed(step, per_iter, cfg.run.log_every) or ending:
                row = _log_point(window, learner, world, eps)
                chief_log("train_row", step, row)
                state.window = Window()
            saved = _crossed(step, per_iter, cfg.run.checkpoint_every) or ending
            if saved:
                save()
            if commit is not None:
                updates = int(learner.updates.numpy())  # (read only when elastic)
                if saved or updates - committed >= cfg.run.commit_every:
                    # Horovod Elastic: keep this state in memory; every rank learns here,
                    # at the same update, whether the hosts changed (then all reset
                    # together).
                    committed = updates
                    commit.commit()
            if state.solved_at is not None:
                break
        return None

    if commit is None:
        finished = begin()
        if finished is None:
            loop()
    else:
        finished = distributed.run_elastic(loop, commit)
    if finished is not None:
        return finished

    train_seconds = time.perf_counter() - t_train
    state.envs.close()
    # Every rank must end with the same weights (elastic resets included).
    ranks = distributed.allgather_object({"pid": os.getpid(), "digest": learner.digest(), **mine})
    digests = [r["digest"] for r in ranks]
    if len(set(digests)) > 1:
        raise TrainingError(f"the ranks ended with different weights: {digests}")
    summary = {
        "env_steps": state.env_steps,
        "updates": int(learner.updates.numpy()),
        "world_size": p,
        "weights_sha256": digests[0],
        **({"elastic_ranks": ranks} if commit is not None else {}),
        "solved_at_env_steps": state.solved_at,
        "train_seconds": round(train_seconds, 3),
        "process_seconds": round(time.perf_counter() - t_process, 3),
        "final_eval": last_eval,
        "run_dir": str(out),
    }
    if stopped:
        summary["stopped"] = stopped
        if world.is_chief and log:
            log.close()
            print(
                f"hvd-dqn: stopped by {stopped} at {state.env_steps} env steps; checkpoint "
                f"written in {out}; run the same command to continue "
                f"(exit code {EXIT_PREEMPTED})",
                file=sys.stderr,
                flush=True,
            )
        return summary

    if world.is_chief and log:
        # Rank 0 alone, and no collective after it: the other ranks are done. (An MPI
        # collective right after the SavedModel export crashed TensorFlow 2.15's rank 0
        # now and then.) A failure here is still one line (cli.py) and a non-zero exit.
        try:
            obs_dtype = state.envs.single_observation_space.dtype
            export_policy(ExportedPolicy(learner.online, obs_dtype), cfg.env, out / "model")
            log.close()
            atomic_write(out / "summary.json", json.dumps(summary, indent=2))
        except OSError as exc:
            raise ConfigError(f"writing the results to {out}: {exc}") from None
        print(
            f"done: {state.env_steps} env steps in {train_seconds:.1f} s; final eval mean "
            f"{last_eval.get('return_mean', float('nan')):.1f}; outputs in {out}"
        )
    return summary


def _crossed(step: int, per_iter: int, every: int) -> bool:
    """True at the iteration where `step` passes a multiple of `every` (never for 0)."""
    return every > 0 and step // every > (step - per_iter) // every


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


def _evaluate(
    cfg: Config, learner: Learner, world: World, interrupts: Interrupts
) -> dict[str, float]:
    """Greedy evaluation, episodes split across ranks and gathered (collective)."""

    def act(obs: np.ndarray) -> np.ndarray:
        interrupts.beat()  # a long evaluation is progress, not a stall
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
