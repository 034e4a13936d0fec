"""The training loop: act, store, learn, evaluate, vote, then stop-and-save, log, checkpoint.

Every rank runs this same loop on its own envs and replay. The loop's counters are
identical on all ranks (same num_envs, same replay_ratio), so all ranks reach every
update, log, evaluation and checkpoint together and make the same collective calls in
the same order. Once per iteration every rank votes (distributed.vote): a signal or the
wall-time limit (checkpoint, then exit 75), a non-finite loss on any rank (stop before
any checkpoint of the bad state), a reached stop_at_return.

Where the rest lives: the run's mutable state in one object (state.py), saved and
restored by checkpoint.py; the envs and episodes in the actor (actor.py); who takes part
and when the world may change in membership.py (a fixed world, or Horovod Elastic); the
run directory and its outputs in rundir.py. The same command starts a run and continues
it: whether it does is decided once, in `Trainer.begin`, before the loop.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from hvd_dqn import checkpoint, distributed, rundir, runlock
from hvd_dqn.actor import Actor
from hvd_dqn.config import (
    Config,
    ConfigError,
    rank_batch,
    rank_capacity,
    run_dir,
    steps_per_iteration,
    to_yaml,
    updates_per_step,
)
from hvd_dqn.distributed import World
from hvd_dqn.dqn import linear_schedule
from hvd_dqn.envs import frame_stack
from hvd_dqn.evaluate import evaluate
from hvd_dqn.interrupts import EXIT_PREEMPTED, Interrupts
from hvd_dqn.learner import ExportedPolicy, Learner
from hvd_dqn.membership import Elastic, Static
from hvd_dqn.metrics import RunLog
from hvd_dqn.replay import Replay, check_replay_fits, replay_bytes
from hvd_dqn.state import TrainState, Window


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss on some rank)."""


REPLAY_SAVE_BUDGET = 2 << 30  # run.save_replay=auto saves a rank's replay up to 2 GiB


class Decision(NamedTuple):
    """What the iteration's vote decided, the same on every rank."""

    stop: str  # "" or why the run stops now (a signal, the wall-time limit)
    solved: bool  # an evaluation reached run.stop_at_return


def train(cfg: Config, world: World, interrupts: Interrupts) -> dict[str, Any]:
    """Train per `cfg` on this rank as part of `world`; returns the final summary.

    Idempotent: run.run_dir that holds nothing starts a new run; one that holds this
    run continues from its newest complete checkpoint (checkpoint.py); a finished one
    returns at once. summary["stopped"] names a signal or limit that stopped the run
    early (after a checkpoint): run the same command to go on.
    """
    t_process = time.perf_counter()
    if cfg.run.elastic != distributed.elastic():
        raise ConfigError(
            "run.elastic: true needs an elastic horovodrun (--min-np/--max-np/"
            "--host-discovery-script, Gloo)"
            if cfg.run.elastic
            else "started by an elastic horovodrun: add --elastic (run.elastic: true)"
        )
    trainer = Trainer(cfg, world, interrupts)
    try:
        finished = trainer.membership.run(trainer)
        if finished is not None:
            return finished
        # The end (the envs closed, the last gather, rank 0's report and export): seconds
        # on a loaded machine and no vote after it, so a stop signal then waits for it.
        with interrupts.busy():
            return trainer.finish(t_process)
    finally:
        if trainer.lock is not None:  # rank 0: the run directory is free again
            trainer.lock.release()


class Trainer:
    """One rank's run: its state, its run directory and log, and the loop over them."""

    def __init__(self, cfg: Config, world: World, interrupts: Interrupts) -> None:
        self.cfg, self.world, self.interrupts = cfg, world, interrupts
        self.out = run_dir(cfg)
        self.lock: runlock.RunLock | None = None  # rank 0's hold on the run directory
        self.state, replay_size = build_state(cfg, world, collective=not cfg.run.elastic)
        self.save_replay = cfg.run.save_replay == "always" or (
            cfg.run.save_replay == "auto" and replay_size <= REPLAY_SAVE_BUDGET
        )
        self.membership: Static | Elastic = Elastic(self) if cfg.run.elastic else Static()
        # A global batch sampled in shares: importance weights are normalized by the
        # largest weight of all ranks' samples (Horovod: one allreduce-max per draw).
        global_per = cfg.learner.batch_scope == "global" and cfg.replay.prioritized
        self.batch_max = distributed.max_over_ranks if global_per else float
        self.log: RunLog | None = None  # rank 0's, once the run has begun
        self.plan = ""  # what the run directory held: rundir.NEW, CONTINUE or FINISHED
        self.t_train = time.perf_counter()  # (the training wall-clock, set at begin)
        self.save_seconds = 0.0  # the last checkpoint's duration (the wall-time limit keeps 2x)
        self.stopped = ""  # why the run stopped early, after its checkpoint
        self.last_eval: dict[str, float] = {}
        interrupts.configure(world.rank, cfg.run.max_wall_time, cfg.run.stall_timeout)

    # -- the loop ---------------------------------------------------------------------

    def loop(self) -> None:
        """DQN, one iteration per compiled update call (steps_per_iteration steps of all
        of this rank's envs), until total_steps, a reached stop_at_return or a stop voted
        by any rank. (A run restored after it reached stop_at_return has nothing left to
        train.)"""
        s, cfg = self.state, self.cfg
        self.interrupts.running()  # a signal during start-up waited for the first vote
        while s.env_steps < cfg.run.total_steps and s.solved_at is None:
            eps = self.act()
            finite = self.learn()
            reached = finite and self.maybe_evaluate()
            decision = self.vote(finite, reached)
            if decision.solved:
                s.solved_at = s.env_steps
            if decision.stop:
                self.stopped = decision.stop
                self.save()
                return
            self.maybe_log(eps)
            saved = self.maybe_checkpoint()
            self.membership.after_iteration(self, saved)

    def act(self) -> float:
        """The iteration's vector steps (epsilon-greedy, into the replay); returns the
        last epsilon."""
        s, per_step = self.state, self.cfg.env.num_envs * self.world.size
        for _ in range(self.steps):
            self.interrupts.beat()  # (many steps between votes are still progress)
            eps = self.epsilon()
            s.window.record_episodes(*s.actor.step(s.learner.greedy_actions, eps, s.replay))
            s.env_steps += per_step
            s.window.env_steps += per_step
        return eps

    @property
    def steps(self) -> int:
        """Vector steps per iteration (config.steps_per_iteration; an elastic world may
        change size)."""
        return steps_per_iteration(self.cfg, self.world.size)

    def epsilon(self) -> float:
        e = self.cfg.exploration
        return linear_schedule(e.eps_start, e.eps_end, e.eps_decay_steps, self.state.env_steps)

    def learn(self) -> bool:
        """Pay the update debt: replay_ratio updates per env step, K per compiled call.
        False if any call's loss, TD errors or weights were not finite (the vote then
        stops every rank; the calls go on until then, so every rank makes the same)."""
        s, K = self.state, self.cfg.learner.updates_per_call
        can_update, ready = self.membership.may_update(self)
        if not can_update:
            return True
        s.update_debt += self.steps * updates_per_step(
            self.cfg.learner, self.cfg.env.num_envs, self.world.size
        )
        finite = True
        while s.update_debt >= K:  # the same calls on every rank: each is an allreduce
            s.update_debt -= K
            finite = self._update(K, ready) and finite
        return finite

    def _update(self, K: int, ready: bool) -> bool:
        """K updates in one compiled call (gradients averaged over ranks inside), on one
        draw of K batches (one pass through the sum tree); False if not finite."""
        s, cfg = self.state, self.cfg
        beta = linear_schedule(
            cfg.replay.beta_start, cfg.replay.beta_end, cfg.run.total_steps, s.env_steps
        )
        batch = rank_batch(cfg.learner, self.world.size)
        if ready:
            batches = s.replay.sample(K * batch, beta, self.batch_max).split(K)
        else:  # an elastic worker that joins: zero weight until its replay is filled
            batches = [s.replay.empty_batch(batch)] * K
        t0 = time.perf_counter()
        result = s.learner.update(batches, tracing=self.interrupts.busy)
        s.window.record_updates(K, time.perf_counter() - t0, result.loss, result.q_mean)
        finite = (
            math.isfinite(result.loss)
            and bool(np.isfinite(result.td_abs).all())
            and result.weights_finite
        )
        if ready and finite:  # a NaN priority would break the sum tree
            indices = np.concatenate([b.indices for b in batches])
            s.replay.update_priorities(indices, result.td_abs.ravel())
        return finite

    def maybe_evaluate(self) -> bool:
        """A greedy evaluation every run.eval_every env steps and at the end; True when
        it reached run.stop_at_return."""
        s, run = self.state, self.cfg.run
        if not (self.crossed(run.eval_every) or s.env_steps >= run.total_steps):
            return False
        t_eval = time.perf_counter()
        with self.interrupts.long_phase():  # ranks wait for the longest episodes
            self.last_eval = self._evaluate()
        s.window.start += time.perf_counter() - t_eval  # throughput excludes evaluation
        self.chief_log("eval_row", s.env_steps, self.last_eval)
        target = run.stop_at_return
        return target is not None and self.last_eval["return_mean"] >= target

    def vote(self, finite: bool, reached: bool) -> Decision:
        """The iteration's one collective: every decision that stops or saves the run.
        A non-finite update on any rank ends every rank here, before any checkpoint of
        the bad state."""
        stop, bad_rank, solved = distributed.vote(
            [self.interrupts.code(self.save_seconds), 0 if finite else self.world.rank + 1, reached]
        )
        if bad_rank:
            good = checkpoint.complete(self.out)
            raise TrainingError(
                f"non-finite loss or TD error on rank {bad_rank - 1} at update "
                f"{int(self.state.learner.updates.numpy())} (env step {self.state.env_steps}); "
                f"nothing saved after it, last good checkpoint: "
                f"{f'ckpt at {good[-1]} env steps' if good else 'none'}"
                f" (lower learner.lr or check the env's rewards)"
            )
        return Decision(stop=self.interrupts.reason(stop) if stop else "", solved=bool(solved))

    def maybe_log(self, eps: float) -> None:
        """A metrics row every run.log_every env steps and at the end (after the stop
        decision, so the last window is always written)."""
        s = self.state
        if self.crossed(self.cfg.run.log_every) or self.ending():
            self.chief_log(
                "train_row", s.env_steps, _log_point(s.window, s.learner, self.world, eps)
            )
            s.window = Window()

    def maybe_checkpoint(self) -> bool:
        saved = self.crossed(self.cfg.run.checkpoint_every) or self.ending()
        if saved:
            self.save()
        return saved

    def crossed(self, every: int) -> bool:
        """True at the iteration where env_steps passes a multiple of `every` (never 0)."""
        step = self.state.env_steps
        per_iter = self.steps * self.cfg.env.num_envs * self.world.size
        return every > 0 and step // every > (step - per_iter) // every

    def ending(self) -> bool:
        s = self.state
        return s.env_steps >= self.cfg.run.total_steps or s.solved_at is not None

    def save(self) -> None:
        """A checkpoint of the state now (collective)."""
        t0 = time.perf_counter()
        self.state.wall_seconds = time.perf_counter() - self.t_train
        with self.interrupts.long_phase(math.inf):  # a long write is progress, not a stall
            checkpoint.save(self.out, self.state, self.world, self.cfg, self.save_replay)
        self.save_seconds = time.perf_counter() - t0

    # -- the start of a run -------------------------------------------------------------

    def begin(self) -> dict[str, Any] | None:
        """The start of a run, on every rank together: the same config everywhere, the
        run directory (new, continue, finished: then its summary is returned), the
        checkpoint restored, rank 0's weights everywhere, the log opened."""
        cfg, world, out, s = self.cfg, self.world, self.out, self.state
        # Horovod (host side): every rank must train the same config.
        distributed.check_same("config", distributed.config_digest(to_yaml(cfg)))
        # Rank 0 holds the run directory for the whole run (runlock.py): a second job on
        # it is refused here, naming the holder, before anything in it is read or written.
        self.lock = self.on_chief(lambda: runlock.hold(out), f"run directory {out}")
        # Rank 0 looks at the run directory; a failure there ends every rank with its line.
        self.plan = distributed.allgather_object(
            self.on_chief(lambda: rundir.inspect(out, cfg), f"run directory {out}")
        )[0]
        self._announce()
        if self.plan == rundir.FINISHED:
            return self._already_finished()
        if self.plan == rundir.CONTINUE:
            resumed = checkpoint.restore(out, s, world, cfg)
            if not resumed.envs:  # new episodes, seeded apart from the first attempt's
                s.actor.restart(cfg.run.seed, world.rank, segment=s.env_steps)
            if not resumed.per_rank:  # a new replay: refill it before updating again
                s.learn_from = s.env_steps + cfg.learner.learning_starts
                self._say_what_starts_anew(resumed)
        # Only now that a checkpoint loaded (or none was needed): a failed restore
        # changes nothing.
        self.on_chief(lambda: rundir.prepare(out, cfg, self.plan), f"run directory {out}")
        # Horovod: start from rank 0's weights and optimizer state (restored or initial).
        distributed.broadcast_variables(s.learner.state)
        distributed.run_collectively(self._open_log, f"opening the log in {out}")
        self.t_train = time.perf_counter() - s.wall_seconds  # on from the checkpoint's
        return None

    def _announce(self) -> None:
        """The first line of a run: the world it runs in (rank 0)."""
        ranks = distributed.allgather_object(distributed.describe_rank(self.world))
        if self.world.is_chief:
            hosts = sorted({r["host"] for r in ranks})
            devices = sorted({r["device"] for r in ranks})
            print(
                f"hvd-dqn: {self.world.size} rank(s) on {len(hosts)} host(s) "
                f"({', '.join(hosts)}), controller {self.world.controller}, devices "
                f"{', '.join(devices)}; run directory {self.out} ({self.plan})",
                flush=True,
            )

    def _say_what_starts_anew(self, resumed: checkpoint.Restored) -> None:
        """Rank 0: one line when a continued run cannot take its ranks' own state back."""
        if not self.world.is_chief:
            return
        why = (
            f"its checkpoint was written by {resumed.world_size} rank(s), this job has "
            f"{self.world.size}"
            if resumed.world_size != self.world.size
            else "its checkpoint holds no replay (run.save_replay)"
        )
        print(
            f"hvd-dqn: continuing at env step {resumed.step}: {why}; the weights, optimizer "
            f"and counters are kept, each rank starts a new replay and new episodes and "
            f"refills {self.cfg.learner.learning_starts} env steps before it updates again",
            flush=True,
        )

    def _already_finished(self) -> dict[str, Any]:
        distributed.leave_together()  # nothing collective follows
        summary = rundir.read_summary(self.out) or {} if self.world.is_chief else {}
        if self.world.is_chief:
            print(
                f"hvd-dqn: {self.out} is already finished ({summary['env_steps']} env "
                "steps); nothing to do"
            )
        self.state.actor.close()
        return {**summary, "already_finished": True}

    def _open_log(self) -> None:
        if self.world.is_chief:
            rundir.drop_rows_after(self.out, self.state.env_steps)
            run = self.cfg.run
            self.log = RunLog(self.out, run.total_steps, run.progress, self.state.wall_seconds)
            self.log.progress(self.state.env_steps)
            if self.plan == rundir.CONTINUE:
                self.log.message(f"continuing {self.out} from env step {self.state.env_steps}")

    def reopen_log(self) -> None:
        """Elastic: after a reset, rank 0 may be another process, and rows past the
        restored step go."""
        if self.log is not None:
            self.log.close()
            self.log = None
        distributed.run_collectively(self._open_log, f"opening the log in {self.out}")

    def join_world(self) -> World:
        """Elastic: the world as Horovod re-formed it; the learning rate, Adam's epsilon
        and the stop flags follow it."""
        self.world = distributed.current_world(self.world)
        self.state.learner.set_world_size(self.world.size)
        run = self.cfg.run
        self.interrupts.configure(self.world.rank, run.max_wall_time, run.stall_timeout)
        return self.world

    # -- rank 0's side effects, collectively ----------------------------------------------

    def on_chief(self, fn: Callable[[], Any], what: str) -> Any:
        """`fn` on rank 0 alone (None elsewhere), collectively: a failure there (a full
        disk, a bad directory) ends every rank with one line instead of leaving the
        others waiting."""
        return distributed.on_chief(fn, what, self.world)

    def chief_log(self, method: str, *args: Any) -> None:
        """Rank 0 writes a metrics row (collective). The other ranks wait for the write
        in a gather: a long phase, so a slow filesystem under a stop signal is waited
        for instead of taken for a dead rank 0."""
        with self.interrupts.long_phase():
            self.on_chief(
                lambda: getattr(self.log, method)(*args), f"writing the log in {self.out}"
            )

    def _evaluate(self) -> dict[str, float]:
        """Greedy evaluation, episodes split across ranks and gathered (collective)."""

        def act(obs: np.ndarray) -> np.ndarray:
            self.interrupts.beat()  # a long evaluation is progress, not a stall
            return self.state.learner.greedy_actions(obs)

        cfg, world = self.cfg, self.world
        return evaluate(
            act,
            cfg.env,
            cfg.run.eval_episodes,
            cfg.exploration.eval_eps,
            world.rank,
            world.size,
            distributed.allgather_object,
        )

    # -- the end of a run -----------------------------------------------------------------

    def finish(self, t_process: float) -> dict[str, Any]:
        """Every rank: check that all ended with the same weights, then the summary;
        rank 0 reports a stop, or writes the policy and summary.json."""
        s, world = self.state, self.world
        train_seconds = time.perf_counter() - self.t_train
        s.actor.close()
        # Every rank must end with the same weights (elastic resets included).
        ranks = distributed.allgather_object(
            {"pid": os.getpid(), "digest": s.learner.digest(), **self.membership.record()}
        )
        distributed.leave_together()  # the run's last collective
        digests = [r["digest"] for r in ranks]
        if len(set(digests)) > 1:
            raise TrainingError(f"the ranks ended with different weights: {digests}")
        summary = {
            "env_steps": s.env_steps,
            "updates": int(s.learner.updates.numpy()),
            "world_size": world.size,
            "weights_sha256": digests[0],
            **({"elastic_ranks": ranks} if isinstance(self.membership, Elastic) else {}),
            "solved_at_env_steps": s.solved_at,
            "train_seconds": round(train_seconds, 3),
            "process_seconds": round(time.perf_counter() - t_process, 3),
            "final_eval": self.last_eval,
            "run_dir": str(self.out),
        }
        if self.stopped:
            summary["stopped"] = self.stopped
        if world.is_chief and self.log:
            self.log.close()
            self._report(summary, train_seconds)
        return summary

    def _report(self, summary: dict[str, Any], train_seconds: float) -> None:
        """Rank 0 alone, and no collective after it: the other ranks are done. (An MPI
        collective right after the SavedModel export crashed TensorFlow 2.15's rank 0
        now and then.) A failure here is still one line (cli.py) and a non-zero exit."""
        s, out = self.state, self.out
        if self.stopped:
            print(
                f"hvd-dqn: stopped by {self.stopped} at {s.env_steps} env steps; checkpoint "
                f"written in {out}; run the same command to continue "
                f"(exit code {EXIT_PREEMPTED})",
                file=sys.stderr,
                flush=True,
            )
            return
        obs_dtype = s.actor.envs.single_observation_space.dtype
        rundir.write_results(
            out, ExportedPolicy(s.learner.online, obs_dtype), self.cfg.env, summary
        )
        print(
            f"done: {s.env_steps} env steps in {train_seconds:.1f} s; final eval mean "
            f"{self.last_eval.get('return_mean', float('nan')):.1f}; outputs in {out}"
        )


def build_state(cfg: Config, world: World, collective: bool) -> tuple[TrainState, int]:
    """A fresh TrainState on this rank (actor, replay, learner) and the replay's bytes.
    Collective: a bad env id, a replay too big for the host or a network that does not
    fit the observations ends every rank with one line. Elastic (collective False): a
    worker may be joining a run in progress and must make no collective call here."""
    run: Any = distributed.run_collectively if collective else (lambda fn, what: fn())
    run(lambda: rank_batch(cfg.learner, world.size), "sharing the batch")
    capacity = run(lambda: rank_capacity(cfg, world.size), "sharing the replay")
    actor = run(lambda: Actor.start(cfg.env, cfg.run.seed, world.rank), "creating the environments")
    obs_space, action_space = actor.envs.single_observation_space, actor.envs.single_action_space
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.Discrete)
    layout: dict[str, Any] = dict(
        capacity=capacity,
        num_envs=cfg.env.num_envs,
        obs_shape=obs_space.shape,
        obs_dtype=obs_space.dtype,
        stack=frame_stack(cfg.env),
        prioritized=cfg.replay.prioritized,
    )
    need = run(
        lambda: check_replay_fits(replay_bytes(**layout), cfg.replay.capacity, world.local_size),
        "sizing the replay",
    )
    replay = Replay(
        **layout,
        n_step=cfg.replay.n_step,
        gamma=cfg.learner.gamma,
        alpha=cfg.replay.alpha,
        priority_eps=cfg.replay.priority_eps,
        seed=[cfg.run.seed, world.rank, 2],  # its own stream on every rank
    )
    average = partial(distributed.average_gradients, fp16=cfg.learner.fp16_allreduce)
    learner = run(
        lambda: Learner(
            obs_space.shape,
            obs_space.dtype,
            int(action_space.n),
            cfg.network,
            cfg.learner,
            seed=cfg.run.seed,
            world_size=world.size,
            reduce_gradients=average,
        ),
        "building the network",
    )
    state = TrainState(learner, replay, actor, learn_from=cfg.learner.learning_starts)
    return state, need


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
