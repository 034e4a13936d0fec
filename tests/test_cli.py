"""The command line: bad input is one line on stderr and a non-zero exit, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import hvd_dqn


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
