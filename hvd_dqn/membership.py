"""Who takes part in the run, and when the world may change: the loop asks, never branches.

`Static` is the world `horovodrun -np N`, `mpirun` or `srun` starts: fixed for the whole
run. The run begins once, the loop runs once, every rank updates from the first step its
replay can be sampled, and nothing happens after an iteration.

`Elastic` is a Horovod Elastic job (run.elastic, `horovodrun --min-np/--max-np
--host-discovery-script`). The loop runs inside `distributed.run_elastic`: when a worker
is lost or added, Horovod re-forms the world and enters the loop again with the last
commit synced from rank 0 (`_enter`). The run begins at the job's first entry only, so a
worker that joins later makes no collective call before the loop. Every entry is one row
of resets.jsonl. A worker that joined takes part in every allreduce from its first
iteration but gives its gradient zero weight (distributed.average_gradients) until it
has stored its share of learning_starts. The state is committed in memory at every
checkpoint and every `run.commit_every` updates (Horovod then learns, at the same update
on every rank, whether the hosts changed).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hvd_dqn import distributed, rundir

if TYPE_CHECKING:
    from hvd_dqn.train import Trainer


class Static:
    """A world fixed for the whole run."""

    def run(self, trainer: Trainer) -> dict[str, Any] | None:
        """The run: its summary if it was already finished, else None once it trained."""
        finished = trainer.begin()
        if finished is None:
            trainer.loop()
        return finished

    def may_update(self, trainer: Trainer) -> tuple[bool, bool]:
        """(update now, with samples of this rank's replay): from learn_from, once the
        replay holds one n-step transition."""
        s = trainer.state
        return s.env_steps >= s.learn_from and s.replay.t > trainer.cfg.replay.n_step + 1, True

    def after_iteration(self, trainer: Trainer, saved: bool) -> None:
        """Nothing: the world cannot change."""

    def record(self) -> dict[str, Any]:
        """This rank's part of the summary (nothing for a fixed world)."""
        return {}


class Elastic:
    """A Horovod Elastic world: workers may fail, join and leave while the run goes on."""

    def __init__(self, trainer: Trainer) -> None:
        state = trainer.state
        # Horovod Elastic: the shared state, kept in memory at each commit.
        self.commit = distributed.ElasticCommit(state.learner.state, state.shared, state.set_shared)
        self.began = False  # this rank has been through Trainer.begin
        self.last_size = 0  # the world size at this rank's previous (re)entry
        self.committed = 0  # the update count at the last commit
        self.contributes = False  # this rank's gradient has weight 1
        # This rank: the update count when it entered the job, and when (with how many
        # transitions in its replay) its gradient first counted.
        self.mine: dict[str, Any] = {"joined_at": None, "weighted_from": None, "replay_then": None}

    def run(self, trainer: Trainer) -> dict[str, Any] | None:
        return distributed.run_elastic(lambda commit: self._enter(trainer), self.commit)

    def _enter(self, trainer: Trainer) -> dict[str, Any] | None:
        """Every (re)entry of the loop, on every rank together, with the state just synced
        from rank 0."""
        trainer.interrupts.beat()
        finished = self._rejoin(trainer)
        if finished is not None:
            return finished
        learner = trainer.state.learner
        self.committed = int(learner.updates.numpy())
        self.contributes = bool(learner.contributes.numpy())
        trainer.loop()
        return None

    def _rejoin(self, trainer: Trainer) -> dict[str, Any] | None:
        """At the job's first entry (no rank has begun) the run begins; a worker that
        joins later skips that. The world, the learning rate, Adam's epsilon and rank 0's
        log follow the new world."""
        world = trainer.join_world()
        seen = distributed.allgather_object(
            {
                "began": self.began,
                "last_size": self.last_size,
                "failures": self.commit.failures,
                **distributed.describe_rank(world),
            }
        )
        fresh = not any(r["began"] for r in seen)
        if fresh:
            finished = trainer.begin()
            if finished is not None:
                return finished
            self.commit.save()  # the restored checkpoint is the first commit
        reason = "start" if fresh else "failure" if any(r["failures"] for r in seen) else "hosts"
        row = {
            "time": time.time(),
            "reason": reason,
            "old_size": max(r["last_size"] for r in seen) or None,
            "size": world.size,
            "env_steps": trainer.state.env_steps,
            "updates": int(trainer.state.learner.updates.numpy()),
            "ranks": [{k: r[k] for k in ("rank", "host", "pid")} for r in seen],
        }
        if not self.began:
            self.mine["joined_at"] = row["updates"]
        self.commit.failures, self.began, self.last_size = 0, True, world.size
        trainer.on_chief(lambda: self._record(trainer, row), "writing resets.jsonl")
        if not fresh:  # rank 0 may be another process now, and rows past the commit go
            trainer.reopen_log()
        return None

    @staticmethod
    def _record(trainer: Trainer, row: dict[str, Any]) -> None:
        rundir.append_reset(trainer.out, row)
        if row["reason"] != "start":
            print(
                f"hvd-dqn: elastic reset ({row['reason']}): {row['old_size']} -> {row['size']} "
                f"ranks at env step {row['env_steps']}, update {row['updates']}",
                flush=True,
            )

    def may_update(self, trainer: Trainer) -> tuple[bool, bool]:
        """Whether to update is decided by the shared counters alone, so a rank that
        joined takes part in every allreduce; until it has stored its share of
        learning_starts it gives zero weight. The ranks that start the run are ready
        exactly when learn_from is reached."""
        s, cfg = trainer.state, trainer.cfg
        stored = s.replay.t * cfg.env.num_envs  # transitions this rank added (since it joined)
        ready = (
            stored >= cfg.learner.learning_starts // trainer.world.size
            and len(s.replay) >= cfg.learner.batch_size
        )
        if ready != self.contributes:
            self.contributes = ready
            s.learner.contributes.assign(1.0 if ready else 0.0)
            if ready and self.mine["weighted_from"] is None:
                self.mine["weighted_from"] = int(s.learner.updates.numpy())
                self.mine["replay_then"] = stored
        return s.env_steps >= s.learn_from, ready

    def after_iteration(self, trainer: Trainer, saved: bool) -> None:
        """Commit at every checkpoint and every run.commit_every updates."""
        updates = int(trainer.state.learner.updates.numpy())
        if saved or updates - self.committed >= trainer.cfg.run.commit_every:
            # Horovod Elastic: keep this state in memory; every rank learns here, at the
            # same update, whether the hosts changed (then all reset together).
            self.committed = updates
            self.commit.commit()

    def record(self) -> dict[str, Any]:
        return dict(self.mine)
