"""End to end: `hvd-dqn train` as one process and under horovodrun -np 2 on CartPole,
MinAtar and Atari with tiny budgets; the run directory; `evaluate` on the export."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import BIN, horovodrun, hvd_dqn, quiet_env, train_one_process


def _rows(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["kind"] == kind]


def _check_run_dir(run: Path, env_steps: int) -> dict:
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "model/policy.json",
        "model/saved_model.pb",
        "checkpoints/checkpoint",
    ):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] >= env_steps
    train_rows = _rows(run, "train")
    assert train_rows and train_rows[-1]["env_steps"] == summary["env_steps"]
    for key in (
        "episode_return",
        "loss",
        "q_mean",
        "epsilon",
        "env_steps_per_s",
        "updates_per_s",
        "allreduce_share",
    ):
        assert key in train_rows[-1]
    assert _rows(run, "eval")
    return summary


def test_single_process_cartpole_run_and_evaluate(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = train_one_process(
        run, 3000, "run.eval_episodes=3", "run.log_every=1000", "run.stop_at_return=none"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run_dir(run, 3000)
    assert summary["world_size"] == 1 and summary["updates"] > 0
    rows = _rows(run, "train")
    assert len(rows) == 3 and rows[-1]["loss"] is not None
    assert rows[0]["epsilon"] > rows[-1]["epsilon"]
    proc = hvd_dqn(["evaluate", str(run), "--episodes", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.splitlines()[-1])
    assert stats["episodes"] == 3 and stats["return_min"] <= stats["return_mean"]
    # The same run directory is never overwritten.
    proc = hvd_dqn(["train", "--total-steps", "100", "--run-dir", str(run)])
    assert proc.returncode == 1
    assert "already holds a run" in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("config", "steps", "extra"),
    [
        ("cartpole", 4000, []),
        (
            "minatar",
            3000,
            ["replay.capacity=4000", "learner.learning_starts=500", "env.max_episode_steps=200"],
        ),
        (
            "atari",
            800,
            [
                "replay.capacity=2000",
                "learner.learning_starts=400",
                "env.max_episode_steps=150",
                "env.num_envs=2",
            ],
        ),
    ],
    ids=["cartpole", "minatar", "atari"],
)
def test_two_ranks_train_end_to_end(
    tmp_path: Path, config: str, steps: int, extra: list[str]
) -> None:
    run = tmp_path / config
    sets = [
        f"--set={s}"
        for s in [*extra, "run.eval_episodes=2", f"run.log_every={steps // 2}", "run.eval_every=0"]
    ]
    proc = horovodrun(
        [
            str(BIN / "hvd-dqn"),
            "train",
            "--config",
            config,
            "--total-steps",
            str(steps),
            "--run-dir",
            str(run),
            "--no-progress",
            *sets,
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run_dir(run, steps)
    assert summary["world_size"] == 2 and summary["updates"] > 0
    assert "[1,1]<stdout>" not in proc.stdout  # rank 1 is silent
    proc = hvd_dqn(["evaluate", str(run / "model"), "--episodes", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_stop_at_return_ends_the_run_at_the_first_good_evaluation(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = train_one_process(
        run, 50000, "run.eval_every=1000", "run.eval_episodes=2", "run.stop_at_return=5"
    )  # any policy lasts 5 steps
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run_dir(run, 1000)
    assert summary["solved_at_env_steps"] == summary["env_steps"] == 1000
    assert _rows(run, "eval")[-1]["return_mean"] >= 5


def _q_values(model: Path, obs: np.ndarray) -> np.ndarray:
    loaded = tf.saved_model.load(str(model))  # kept alive while q_values runs
    return loaded.q_values(obs).numpy()


@pytest.mark.distributed
def test_resume_restores_the_learner_and_goes_on(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["--set=run.eval_episodes=2", "--set=run.log_every=400", "--set=run.stop_at_return=none"]
    train = [str(BIN / "hvd-dqn"), "train", "--no-progress"]
    proc = horovodrun([*train, "--total-steps", "2000", "--run-dir", str(run), *sets])
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((run / "summary.json").read_text())
    (run / "model").rename(tmp_path / "model-2000")
    # A line written after the last checkpoint, as by a run that then crashed.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "env_steps": 2100, "wall_seconds": 1e6}) + "\n")
    # 400 more steps: fewer than learning_starts (1000), so no update happens after the
    # restore, and the exported policy must be exactly the checkpointed one.
    proc = horovodrun([*train, "--resume", str(run), "--total-steps", "2400"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run_dir(run, 2400)
    assert summary["env_steps"] == 2400 and summary["updates"] == first["updates"] > 0
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        _q_values(run / "model", obs), _q_values(tmp_path / "model-2000", obs)
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["env_steps"] for r in rows if r["kind"] == "train"]
    assert steps == [400, 800, 1200, 1600, 2000, 2400]  # the stale 2100 row is gone
    walls = [r["wall_seconds"] for r in rows]
    assert walls == sorted(walls) and walls[-1] < 1e6
    assert "total_steps: 2400" in (run / "config.yaml").read_text()
    # Asking for no more steps than are done is refused and changes nothing.
    proc = horovodrun([*train, "--resume", str(run), "--total-steps", "2400"])
    assert proc.returncode == 2 and "already at 2400 env steps" in proc.stderr
    assert "total_steps: 2400" in (run / "config.yaml").read_text()


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--total-steps", "1000000", "--run-dir", str(run), "--no-progress"]
    sets = ["--set=run.checkpoint_every=1000", "--set=run.stop_at_return=none"]
    proc = subprocess.Popen([str(BIN / "hvd-dqn"), *args, *sets], env=quiet_env())
    try:
        deadline = time.monotonic() + 240
        while not list((run / "checkpoints").glob("ckpt-2000.index")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL: no clean-up code runs
        proc.wait()
    assert not (run / "summary.json").exists()
    # ckpt-2000 or, if killed between its files and the index, ckpt-1000
    done = int(tf.train.latest_checkpoint(str(run / "checkpoints")).rsplit("-", 1)[1])
    assert done in (1000, 2000, 3000)
    proc = hvd_dqn(["train", "--resume", str(run), "--total-steps", str(done + 1000)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run_dir(run, done + 1000)
    assert summary["env_steps"] == done + 1000 and summary["updates"] > 0


def test_resume_refuses_config_changes_and_missing_runs(tmp_path: Path) -> None:
    proc = hvd_dqn(["train", "--resume", str(tmp_path), "--set", "learner.lr=0.1"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "only --total-steps may change (got learner.lr)" in proc.stderr
    proc = hvd_dqn(["train", "--resume", str(tmp_path / "nothing")])
    assert proc.returncode == 1 and "no config.yaml" in proc.stderr
    (tmp_path / "config.yaml").write_text("run:\n  total_steps: 5000\n")
    proc = hvd_dqn(["train", "--resume", str(tmp_path)])
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    assert "no checkpoint to resume from" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing written
