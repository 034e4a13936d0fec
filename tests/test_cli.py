"""The command line: bad input is one line on stderr and a non-zero exit, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import hvd_dqn, quiet_env


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["train", "--set", "learner.lr=-1"],
            2,
            "config field learner.lr=-1.0: must be in (0.0, 1.0]",
        ),
        (["train", "--config", "nope.yaml"], 2, "--config nope.yaml: neither a preset"),
        (["train", "--set", "learner.bogus=1"], 2, "unknown config field learner.bogus"),
        (
            ["train", "--env", "Pendulum-v1", "--total-steps", "100"],
            2,
            "config field env.id='Pendulum-v1': action space",
        ),
        (  # 100M Atari frames: 706 GB, refused before anything is allocated
            ["train", "--config", "atari", "--set", "replay.capacity=100000000"],
            2,
            "config field replay.capacity=100000000: the replay needs 658.",
        ),
        (  # a count in scientific notation is a count (here the lr is what is wrong)
            ["train", "--total-steps", "1e5", "--set", "learner.lr=-1"],
            2,
            "config field learner.lr=-1.0",
        ),
        (
            ["train", "--expect-world-size", "2"],
            2,
            "--expect-world-size 2: this job is a world of 1 process (no launcher started "
            "it); start 2 with horovodrun -np 2",
        ),
        (  # a bench of time to a score on a preset that has no score
            ["bench", "scaling-to-score", "--config", "minatar"],
            2,
            "--config minatar: run.stop_at_return is none, so no run would reach a score",
        ),
        (["bench", "scaling-to-score", "--modes", ","], 2, "--modes ',': expected rank"),
        (["bench", "efficiency", "--rules", ","], 2, "--rules ',': expected none, linear"),
        (  # a global replay that one of the bench's world sizes cannot share
            [
                "bench",
                "scaling-to-score",
                "--modes",
                "global",
                "--ranks",
                "1,2",
                "--set",
                "replay.capacity=200",
                "--set",
                "run.stop_at_return=400",
            ],
            2,
            "replay.capacity=200: with batch_scope global each of the 2 ranks holds 100",
        ),
        (["evaluate", "/nonexistent"], 2, "/nonexistent: not an exported policy"),
        (["evaluate", ".", "--episodes", "0"], 2, "--episodes 0: must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    args = [*args, "--run-dir", str(tmp_path / "run")] if args[0] == "train" else args
    proc = hvd_dqn(args)
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hvd-dqn")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["d" * 4600, "n" * 256], ids=["4600-characters", "long-name"])
def test_a_run_dir_too_long_is_one_short_line(tmp_path: Path, name: str) -> None:
    run = tmp_path / name / "run"
    proc = hvd_dqn(["train", "--run-dir", str(run)])
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-3000:]
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"hvd-dqn: error: config field run.run_dir='{str(tmp_path)[:20]}")
    assert line.endswith(
        f" ({len(str(run))} characters)': too long (a path may have 4095 bytes, each name "
        f"in it 255)"
    )
    assert len(line) < 250  # the path is shortened, and said once
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["train", "--total-steps", "1.5e0"],
            "argument --total-steps: '1.5e0' is not a whole number (e.g. 100000 or 1e5) "
            "(see `hvd-dqn train --help`)",
        ),
        (["train", "--nope"], "unrecognized arguments: --nope (see `hvd-dqn --help`)"),
        ([], "the following arguments are required: command (see `hvd-dqn --help`)"),
    ],
    ids=["not-whole", "unknown-flag", "no-command"],
)
def test_a_command_line_argparse_refuses_is_one_line(args: list[str], line: str) -> None:
    proc = hvd_dqn(args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"hvd-dqn: error: {line}"]  # not the usage block


def test_a_replay_larger_than_the_jobs_slurm_memory_is_refused(tmp_path: Path) -> None:
    # 1.4 GiB of CartPole replay fits this host but not the 1 GiB SLURM gives the job
    # (memory.memory_limit: the smallest of the host's, the cgroup's and SLURM's).
    run = tmp_path / "run"
    args = ["train", "--run-dir", str(run), "--set", "replay.capacity=30000000"]
    args += ["--total-steps", "8", "--set", "run.eval_episodes=1", "--no-progress"]
    proc = hvd_dqn(args, env=quiet_env(SLURM_MEM_PER_NODE="1024"))
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-3000:]
    [line] = proc.stderr.splitlines()
    assert line.endswith(
        "per rank x 1 ranks on this host, more than 80 % of the 1.0 GiB SLURM gives this job "
        "on this node (SLURM_MEM_PER_NODE=1024)"
    ), line
    assert not run.exists()
