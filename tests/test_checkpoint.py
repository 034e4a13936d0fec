"""Checkpoints: the replay's saved state, the files on disk, exact resume after SIGKILL at
1 and 2 ranks, damaged checkpoints, resume on every preset, one idempotent command."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    BIN,
    checkpoints,
    hvd_dqn,
    kill_all,
    launch,
    logged_steps,
    mpirun,
    rank_pids,
    train_args,
    wait_for,
)

from hvd_dqn import checkpoint
from hvd_dqn.files import read_rows
from hvd_dqn.replay import Replay

# -- the replay's state --------------------------------------------------------------------


def _fill(replay: Replay, steps: int, seed: int, p_end: float = 0.1, t0: int = 0) -> np.ndarray:
    """Add `steps` vector steps whose observations are ids 100 t + lane; returns the last."""
    rng = np.random.default_rng(seed)
    obs = np.zeros((replay.num_envs, 1), np.float32)
    for t in range(t0, t0 + steps):
        obs = (t * 100 + np.arange(replay.num_envs)).astype(np.float32)[:, None]
        ended = rng.random(replay.num_envs) < p_end
        actions = rng.integers(3, size=replay.num_envs)
        rewards = rng.random(replay.num_envs)
        replay.add(obs, actions, rewards, ended, np.zeros(replay.num_envs, bool))
    return obs


def _replay() -> Replay:
    return Replay(3 * 40, 3, (1,), np.float32, n_step=3, prioritized=True, seed=[5, 1, 2])


@pytest.mark.parametrize("steps", [10, 100])  # a young buffer, and one wrapped twice
def test_a_restored_replay_samples_and_updates_exactly_as_the_original(steps: int) -> None:
    original = _replay()
    _fill(original, steps, seed=0)
    original.update_priorities(np.arange(6), np.arange(6) * 3.0)
    copy = _replay()
    copy.load_state({k: np.array(v) for k, v in original.state().items()})
    for replay in (original, copy):  # both go on the same way
        _fill(replay, 7, seed=1)
    a, b = original.sample(64, beta=0.5), copy.sample(64, beta=0.5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(original.tree.nodes, copy.tree.nodes)  # type: ignore[union-attr]


def test_cut_episodes_bootstraps_from_the_last_observation_and_starts_no_transition_there() -> None:
    gamma = 0.5
    replay = Replay(2 * 20, 2, (1,), np.float32, n_step=3, gamma=gamma, seed=0)
    last = _fill(replay, 6, seed=3, p_end=0.0)  # ids 0..501, no episode ended
    replay.cut_episodes(last + 1000)  # the observations after the last step: 1500, 1501
    _fill(replay, 5, seed=4, p_end=0.0, t0=90)  # the restarted envs' new episodes
    batch = replay.sample(2000)
    start, nxt = batch.obs_tm1[:, 0], batch.obs_t[:, 0]
    assert not ((start >= 1000) & (start < 2000)).any()  # no transition starts at the cut
    old = start < 1000
    assert (nxt[old] < 2000).all()  # an old episode never reaches into the new ones
    cut = old & (nxt >= 1000)
    t, lane = start[cut] // 100, start[cut] % 100
    assert set(t.tolist()) == {3, 4, 5}  # the 3 transitions whose n steps reach the cut
    np.testing.assert_array_equal(nxt[cut], 1500 + lane)
    np.testing.assert_allclose(batch.discount_t[cut], gamma ** (6 - t))


def test_non_finite_priorities_are_refused() -> None:
    replay = _replay()
    _fill(replay, 20, seed=0)
    total = replay.tree.total  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="non-finite"):
        replay.update_priorities(np.arange(3), np.array([1.0, np.nan, 2.0]))
    assert replay.tree.total == total  # type: ignore[union-attr]


# -- the files on disk ---------------------------------------------------------------------


def test_only_complete_checkpoints_count_and_leftovers_are_cleaned(tmp_path: Path) -> None:
    d = checkpoint.directory(tmp_path)
    for step in (1000, 2000, 3000, 4000):
        (d / f"ckpt-{step:012d}").mkdir(parents=True)
        (d / f"ckpt-{step:012d}" / "state.json").write_text("{}")
    (d / "ckpt-000000004000" / "state.json").unlink()  # killed before its marker
    (d / "ckpt-000000005000.partial").mkdir()  # killed mid-save
    assert checkpoint.complete(tmp_path) == [1000, 2000, 3000]
    checkpoint.clean(tmp_path, keep=2)
    names = sorted(p.name for p in d.iterdir())
    assert names == ["ckpt-000000002000", "ckpt-000000003000", "ckpt-000000004000.damaged"]


# -- real runs ---------------------------------------------------------------------------

DETERMINISTIC = [
    "--no-progress",
    "--set=run.checkpoint_every=2000",
    "--set=run.stop_at_return=none",
    "--set=run.deterministic=true",
    "--set=run.eval_every=4000",
    "--set=run.eval_episodes=4",
    "--set=run.log_every=1000",
]
TIMING = {"wall_seconds", "env_steps_per_s", "updates_per_s", "ms_per_update", "allreduce_share"}


def _train_args(run: Path, steps: int) -> list[str]:
    return ["train", "--total-steps", str(steps), "--run-dir", str(run), *DETERMINISTIC]


def _rows(run: Path) -> list[dict]:
    rows = read_rows(run)
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _learner(run: Path, step: int) -> dict[str, np.ndarray]:
    with np.load(run / "checkpoints" / f"ckpt-{step:012d}" / "learner.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
@pytest.mark.timed  # the job ends within 10 s of a rank's death
@pytest.mark.distributed
@pytest.mark.compat
@pytest.mark.parametrize("np_", [1, 2], ids=["1rank", "2ranks"])
def test_a_run_killed_with_sigkill_resumes_bit_identical(tmp_path: Path, np_: int) -> None:
    steps = 8000
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # 2 ranks: 8 updates per call, 4 owed per vector step, so each loop iteration holds 2
    # vector steps (config.steps_per_iteration) and the resume must be exact across them.
    per_call = [] if np_ == 1 else ["--set=learner.updates_per_call=8"]
    proc = launch([*_train_args(whole, steps), *per_call], np=np_)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]  # type: ignore[union-attr]

    proc = launch([*_train_args(cut, steps), *per_call], np=np_)
    try:
        wait_for(lambda: 4000 in checkpoints(cut), proc)
        ranks = rank_pids(cut)
        victim = ranks[np_ - 1]  # the last rank: under horovodrun the launcher ends the rest
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=60)
        ended = time.monotonic() - t0
    finally:
        kill_all(str(cut))
    assert proc.returncode != 0 and not rank_pids(cut)
    assert ended < 10, f"the job took {ended:.1f} s to end after a rank died"
    assert not (cut / "summary.json").exists()
    done = checkpoints(cut)[-1]
    assert 4000 <= done < steps  # it did stop mid-run

    proc = launch([*_train_args(cut, steps), *per_call], np=np_)  # the same command
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"continuing {cut} from env step {done}" in out
    a, b = _learner(whole, steps), _learner(cut, steps)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert _rows(whole) == _rows(cut)  # the same metrics rows, timings aside
    first, second = (json.loads((r / "summary.json").read_text()) for r in (whole, cut))
    assert first["updates"] == second["updates"] > 0


@pytest.mark.slow
def test_damaged_checkpoints_are_skipped_for_the_newest_intact_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--set=run.checkpoint_every=1000", "--set=run.keep_checkpoints=5"]
    proc = hvd_dqn(_train_args(run, 4000) + args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoints(run) == [1000, 2000, 3000, 4000]
    (run / "summary.json").unlink()  # as if killed before the end
    ckpt = run / "checkpoints"
    learner = ckpt / "ckpt-000000004000" / "learner.npz"
    learner.write_bytes(learner.read_bytes()[: learner.stat().st_size // 2])  # truncated
    (ckpt / "ckpt-000000003000" / "rank-0.npz").unlink()  # a rank's file missing
    (ckpt / "ckpt-000000002000" / "state.json").unlink()  # its completion marker missing
    (ckpt / "ckpt-000000005000.partial").mkdir()  # an interrupted save
    (ckpt / "ckpt-000000005000.partial" / "rank-0.npz.tmp").write_bytes(b"x")

    proc = hvd_dqn(_train_args(run, 5000) + args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "warning: skipping" in line]
    assert len(warnings) == 3
    assert "ckpt-000000004000: " in warnings[0] and "learner.npz: unreadable" in warnings[0]
    assert "ckpt-000000003000: " in warnings[1] and "rank-0.npz: missing" in warnings[1]
    assert "ckpt-000000002000: no state.json" in warnings[2]  # named, and kept aside
    assert (ckpt / "ckpt-000000002000.damaged" / "learner.npz").exists()
    assert f"continuing {run} from env step 1000" in proc.stdout
    assert not list(ckpt.glob("*.partial"))
    steps = logged_steps(run)
    assert steps == sorted(steps) and steps[-1] == 5000  # rows after 1000 written once again
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 5000


@pytest.mark.slow
@pytest.mark.timed  # each signalled rank must reach the next vote within SIGNAL_GRACE
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("minatar", ["replay.capacity=4000", "learner.learning_starts=200"]),
        (
            "atari",
            ["replay.capacity=2000", "learner.learning_starts=200", "env.num_envs=2"],
        ),
    ],
    ids=["minatar", "atari"],
)
def test_every_preset_stops_on_sigterm_and_the_same_command_finishes_it(
    tmp_path: Path, config: str, extra: list[str]
) -> None:
    run = tmp_path / config
    steps = 1600
    args = train_args(
        config,
        steps,
        run,
        *extra,
        "run.log_every=400",
        "run.eval_episodes=2",
        "run.eval_every=0",
        "env.max_episode_steps=100",
    )
    proc = launch(args, np=2)
    try:
        wait_for(lambda: any(s >= 400 for s in logged_steps(run)), proc, timeout=400)
        for pid in rank_pids(run).values():  # as srun and Kubernetes do: every task
            os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        kill_all(str(run))
    stopped = checkpoints(run)
    assert stopped and 400 <= stopped[-1] < steps, proc.stderr.read()  # type: ignore[union-attr]
    proc = launch(args, np=2)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"continuing {run} from env step {stopped[-1]}" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] == steps and summary["updates"] > 0


@pytest.mark.slow
def test_one_command_starts_continues_and_finishes_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = hvd_dqn(_train_args(run, 2000))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((run / "summary.json").read_text())
    # Run again: nothing to do, exit 0 at once (a retried batch job must not retrain).
    proc = hvd_dqn(_train_args(run, 2000))
    assert proc.returncode == 0 and "already finished" in proc.stdout
    assert json.loads((run / "summary.json").read_text()) == first
    # A grown budget continues from the final checkpoint.
    proc = hvd_dqn(_train_args(run, 3000))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing {run} from env step 2000" in proc.stdout
    assert json.loads((run / "summary.json").read_text())["updates"] > first["updates"]
    assert "total_steps: 3000" in (run / "config.yaml").read_text()
    # Another config is refused, naming the fields, and changes nothing.
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    proc = hvd_dqn([*_train_args(run, 3000), "--set=learner.lr=0.01", "--seed=4"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "changed: learner.lr, run.seed" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    # --resume is the explicit form of the same.
    proc = hvd_dqn(["train", "--resume", str(run), "--total-steps", "3400", "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["env_steps"] == 3400


@pytest.mark.slow
@pytest.mark.distributed
def test_a_run_continued_at_another_world_size_says_what_starts_anew(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = hvd_dqn(_train_args(run, 2000))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = mpirun([str(BIN / "hvd-dqn"), *_train_args(run, 3000)], np=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "continuing at env step 2000: its checkpoint was written by 1 rank(s), this job has 2; "
        "the weights, optimizer and counters are kept, each rank starts a new replay and new "
        "episodes and refills 1000 env steps before it updates again"
    ) in proc.stdout, proc.stdout[-2000:]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
