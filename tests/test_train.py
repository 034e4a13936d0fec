"""End to end: `hvd-dqn train` as one process and under horovodrun -np 2 on CartPole,
MinAtar and Atari with tiny budgets; the run directory; `evaluate` on the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BIN, horovodrun, hvd_dqn, train_one_process


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
