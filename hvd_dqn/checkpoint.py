"""Checkpoints: the one place a run is saved and restored.

A checkpoint is the run's `TrainState` (state.py) on disk, so a run killed at any point restarts from its newest checkpoint
as if it had never stopped (bit-identical with `run.deterministic`, same world size).

On disk (Dopamine's checkpointer is the model: a marker written last):

    RUN_DIR/checkpoints/
      ckpt-000000020000/            one directory per checkpoint, named by env steps
        learner.npz                 rank 0: online and target weights, Adam (step, m, v),
                                    update count, each under its variable's name
        rank-0.npz ... rank-<p-1>.npz
                                    each rank's own part, written by that rank: its
                                    replay (ring, priorities, RNG), its acting RNG, its
                                    episodes in progress, its envs (pickled), its log
                                    window's counters
        state.json                  WRITTEN LAST, by rank 0 once every rank reported its
                                    file complete: the shared counters (env steps,
                                    update debt, ...), the world size, the format version
      ckpt-000000020000.partial/    a save in progress (or interrupted): never read,
                                    removed at the next start

A save writes everything into `ckpt-N.partial/`, each file through a temporary name
and fsync, then rank 0 writes `state.json` and renames the directory to `ckpt-N`:
a directory named `ckpt-N` is complete by construction, and a reader never sees half a
checkpoint. The newest `run.keep_checkpoints` are kept. Restoring tries the newest
complete checkpoint first; one that fails to load on any rank (a truncated or missing
file) is skipped with a warning and the one before it is used.

What a restore brings back depends on what was saved:
- same world size and the replay saved (`run.save_replay`): everything; the envs
  continue their episodes where they were (CartPole, MinAtar: pickled; Atari: not, so each
  episode in progress is cut as a time-limit truncation, bootstrapped, and the envs
  restart from new episodes);
- another world size, or the replay not saved: the learner and the shared counters;
  each rank starts a new replay and new episodes and refills `learner.learning_starts`
  env steps before it updates again.

Rank 0 reads the shared part and Horovod broadcasts it, so other hosts need no copy of
learner.npz; each rank reads its own rank file, which other hosts can see only when the
run directory is on shared storage (otherwise they start a new replay, as above).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hvd_dqn.envs import load_envs, save_envs
from hvd_dqn.files import atomic_write
from hvd_dqn.replay import rng_state, set_rng_state
from hvd_dqn.state import TrainState, Window

FORMAT = "hvd_dqn-checkpoint-1"
_NAME = re.compile(r"^ckpt-(\d+)$")
_PARTIAL = re.compile(r"^ckpt-\d+\.partial$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file."""


# ---------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------


def directory(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def _ckpt(run_dir: Path, step: int) -> Path:
    return directory(run_dir) / f"ckpt-{step:012d}"


def complete(run_dir: Path) -> list[int]:
    """Env steps of the complete checkpoints in run_dir, oldest first."""
    d = directory(run_dir)
    if not d.is_dir():
        return []
    steps = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and (p / "state.json").is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def clean(run_dir: Path, keep: int) -> None:
    """Rank 0: remove interrupted saves (`.partial`, silently) and all but the newest
    `keep` checkpoints. A `ckpt-N` without its state.json cannot come from a save of
    ours (state.json is written before the rename): it is damaged, so it is named in a
    warning and moved aside to `ckpt-N.damaged`, never deleted."""
    d = directory(run_dir)
    if not d.is_dir():
        return
    for p in d.iterdir():
        if _PARTIAL.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
        elif _NAME.match(p.name) and not (p / "state.json").exists():
            aside = p.with_name(p.name + ".damaged")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(p, aside)
            print(
                f"hvd-dqn: warning: skipping damaged checkpoint {p}: no state.json (removed, "
                f"or copied without it); moved aside to {aside.name}",
                file=sys.stderr,
                flush=True,
            )
    for step in complete(run_dir)[:-keep]:
        shutil.rmtree(_ckpt(run_dir, step), ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Saving (called by every rank at the same iteration; see train.py)
# ---------------------------------------------------------------------------------------


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The .npz built in memory, then written all or nothing, fsynced (built in memory
    so that a full disk fails in one plain write, not halfway through numpy's zip
    writer)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getbuffer(), durable=True)


def begin(run_dir: Path, step: int) -> Path:
    """Rank 0: a fresh `ckpt-N.partial/` for the save at env step `step`."""
    partial = _ckpt(run_dir, step).with_name(_ckpt(run_dir, step).name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def write_learner(partial: Path, learner: Any) -> None:
    """Rank 0: learner.npz, each variable under its name."""
    arrays = {f"{i:03d}/{v.name}": v.numpy() for i, v in enumerate(learner.state)}
    _write_npz(partial / "learner.npz", arrays)


def rank_part(state: TrainState, save_replay: bool) -> dict[str, np.ndarray]:
    """This rank's own state as named arrays (rank-R.npz)."""
    actor = state.actor
    out: dict[str, np.ndarray] = {
        "rng": rng_state(actor.rng),
        "obs": actor.obs,
        "ep_return": actor.ep_return,
        "ep_length": actor.ep_length,
        "prev_ended": actor.prev_ended,
        "window": state.window.to_array(),
    }
    if actor.lives is not None:
        out["lives"] = actor.lives
    if save_replay:
        out.update({f"replay/{k}": v for k, v in state.replay.state().items()})
        envs = save_envs(actor.envs, actor.cfg.id)
        if envs is not None:  # else episodes in progress are cut at a restore
            out["envs"] = np.frombuffer(envs, dtype=np.uint8)
    return out


def write_rank(partial: Path, rank: int, state: TrainState, save_replay: bool) -> None:
    """Every rank: its own rank-R.npz."""
    _write_npz(partial / f"rank-{rank}.npz", rank_part(state, save_replay))


def finish(partial: Path, state: TrainState, world_size: int, keep: int, extra: dict) -> Path:
    """Rank 0, after every rank wrote its file: state.json last, then the rename that
    makes the checkpoint visible; then the oldest ones beyond `keep` go."""
    meta = {"format": FORMAT, "world_size": world_size, **state.shared(), **extra}
    atomic_write(partial / "state.json", json.dumps(meta, indent=2), durable=True)
    final = partial.with_name(partial.name.removesuffix(".partial"))
    if final.exists():  # a checkpoint of the same step from an earlier attempt
        shutil.rmtree(final)
    os.replace(partial, final)
    clean(partial.parent.parent, keep)
    return final


# ---------------------------------------------------------------------------------------
# Restoring
# ---------------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read now (a truncated file fails here, not later)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as exc:  # zipfile.BadZipFile, CRC errors, truncated data, ...
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def read_shared(run_dir: Path, step: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Rank 0: state.json and learner.npz of checkpoint `step` (CheckpointError if bad)."""
    ckpt = _ckpt(run_dir, step)
    try:
        meta = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt / 'state.json'}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{ckpt / 'state.json'}: not a checkpoint of this hvd_dqn version "
            f"(format {meta.get('format') if isinstance(meta, dict) else None!r}, "
            f"expected {FORMAT!r})"
        )
    return meta, _read_npz(ckpt / "learner.npz")


def read_rank(run_dir: Path, step: int, rank: int) -> dict[str, np.ndarray]:
    """This rank's part of checkpoint `step` (CheckpointError if missing or bad)."""
    return _read_npz(_ckpt(run_dir, step) / f"rank-{rank}.npz")


def load_learner(learner: Any, arrays: dict[str, np.ndarray], where: str) -> None:
    """Assign learner.npz's arrays to the learner's variables, names and shapes checked."""
    variables = learner.state
    names = sorted(arrays)
    if len(names) != len(variables):
        raise CheckpointError(
            f"{where}: {len(names)} variables saved, the learner has {len(variables)} "
            f"(a checkpoint of another network or version)"
        )
    for key, v in zip(names, variables, strict=True):
        if key.split("/", 1)[1] != v.name or arrays[key].shape != tuple(v.shape):
            raise CheckpointError(
                f"{where}: variable {key} {arrays[key].shape} does not match "
                f"{v.name} {tuple(v.shape)} (a checkpoint of another network)"
            )
    for key, v in zip(names, variables, strict=True):
        v.assign(arrays[key])


def load_rank(state: TrainState, part: dict[str, np.ndarray]) -> bool:
    """Put this rank's saved part back into `state`. Returns True when the envs were
    restored mid-episode, False when they must restart (then the replay's open
    episodes are cut and the caller resets the envs)."""
    actor = state.actor
    set_rng_state(actor.rng, part["rng"])
    state.window = Window.from_array(part["window"])
    replay = {k.split("/", 1)[1]: v for k, v in part.items() if k.startswith("replay/")}
    state.replay.load_state(replay)
    if "envs" in part:
        try:
            envs = load_envs(part["envs"].tobytes())
        except Exception as exc:
            print(f"hvd-dqn: warning: envs not restored ({exc}); episodes restart", file=sys.stderr)
        else:
            actor.close()
            actor.envs = envs
            actor.obs = part["obs"]
            actor.ep_return = part["ep_return"]
            actor.ep_length = part["ep_length"]
            actor.prev_ended = part["prev_ended"]
            actor.lives = part.get("lives")
            return True
    state.replay.cut_episodes(part["obs"])
    return False


# ---------------------------------------------------------------------------------------
# The two entry points of the training loop (collective: every rank calls them together)
# ---------------------------------------------------------------------------------------


def save(run_dir: Path, state: TrainState, world: Any, cfg: Any, save_replay: bool) -> None:
    """Checkpoint `state` at its env step: rank 0 opens `ckpt-N.partial/`, every rank
    writes its file, rank 0 writes the learner, then state.json and the rename.

    Each step runs through distributed.run_collectively, so a failure on any rank (a
    full disk) ends every rank with one line naming the file, and the partial directory
    is removed at the next start. A save never touches the older checkpoints until the
    new one is complete."""
    from hvd_dqn import distributed

    step = state.env_steps
    where = f"writing checkpoint {_ckpt(run_dir, step)}"
    partial = _ckpt(run_dir, step).with_name(_ckpt(run_dir, step).name + ".partial")

    def guarded(fn: Any) -> Any:
        def run() -> Any:
            try:
                return fn()
            except OSError as exc:  # a full disk, a read-only or vanished directory
                name = exc.filename or partial
                raise CheckpointError(f"{where}: {name}: {exc.strerror}") from None

        return run

    distributed.on_chief(guarded(lambda: begin(run_dir, step)), where, world)

    def write() -> None:
        if world.is_chief:
            write_learner(partial, state.learner)
        write_rank(partial, world.rank, state, save_replay)

    distributed.run_collectively(guarded(write), where)
    extra = {"replay_saved": save_replay}
    keep = cfg.run.keep_checkpoints
    distributed.on_chief(
        guarded(lambda: finish(partial, state, world.size, keep, extra)), where, world
    )


@dataclass(frozen=True)
class Restored:
    step: int  # env steps of the checkpoint restored
    per_rank: bool  # this rank's replay, RNGs and window restored (else: new, refilled)
    envs: bool  # this rank's envs restored mid-episode (else: they restart)
    world_size: int  # the world that wrote the checkpoint
    replay_saved: bool  # its ranks' replays are in it


def restore(run_dir: Path, state: TrainState, world: Any, cfg: Any) -> Restored:
    """Load the newest complete checkpoint that every rank can read into `state`
    (rank 0's learner variables: the caller broadcasts them). A damaged one is skipped
    with a warning on rank 0. CheckpointError when none can be read."""
    from hvd_dqn import distributed

    candidates = distributed.allgather_object(complete(run_dir)[::-1] if world.is_chief else [])[0]
    reasons = []
    for step in candidates:
        # Rank 0 reads the shared part; everyone learns whether it could.
        shared: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None
        error = None
        if world.is_chief:
            try:
                shared = read_shared(run_dir, step)
                load_learner(state.learner, shared[1], str(_ckpt(run_dir, step) / "learner.npz"))
            except CheckpointError as exc:
                error = str(exc)
        meta, error = distributed.allgather_object((shared[0] if shared else None, error))[0]
        per_rank = bool(meta and meta["world_size"] == world.size and meta.get("replay_saved"))
        part = None
        if meta is not None and per_rank:
            try:
                part = read_rank(run_dir, step, world.rank)
            except CheckpointError as exc:
                error = str(exc)
        errors = [e for e in distributed.allgather_object(error) if e]
        if errors:
            reasons.append(errors[0])
            if world.is_chief:
                print(
                    f"hvd-dqn: warning: skipping damaged checkpoint {_ckpt(run_dir, step)}: "
                    f"{errors[0]}",
                    file=sys.stderr,
                    flush=True,
                )
            continue
        assert meta is not None
        state.set_shared(meta)
        envs = False
        if part is not None:
            envs = distributed.run_collectively(
                functools.partial(load_rank, state, part), f"restoring {_ckpt(run_dir, step)}"
            )
        return Restored(
            step=step,
            per_rank=per_rank,
            envs=envs,
            world_size=meta["world_size"],
            replay_saved=bool(meta.get("replay_saved")),
        )
    distributed.leave_together()  # every rank raises this, after an mpi4py gather
    raise CheckpointError(
        f"run directory {run_dir}: none of its {len(candidates)} checkpoints can be read "
        f"(newest: {reasons[0] if reasons else 'none'}); move the run aside to start again"
    )
