"""Shared helpers: launching real multi-process jobs with horovodrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "workers"


def quiet_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
    return env


def horovodrun(
    args: list[str],
    np: int = 2,
    gloo: bool = False,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `args` as `np` processes under horovodrun (MPI, or Gloo), real processes."""
    cmd = [str(BIN / "horovodrun"), "-np", str(np)]
    if gloo:
        cmd.append("--gloo")
    cmd += args
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env or quiet_env(), cwd=ROOT
    )


def hvd_dqn(
    args: list[str], timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script as one process."""
    return subprocess.run(
        [str(BIN / "hvd-dqn"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or quiet_env(),
        cwd=ROOT,
    )


def train_one_process(run: Path, total_steps: int, *sets: str) -> subprocess.CompletedProcess[str]:
    """`hvd-dqn train` as one process into `run`, with `--set` overrides."""
    args = ["train", "--total-steps", str(total_steps), "--run-dir", str(run), "--no-progress"]
    return hvd_dqn(args + [f"--set={s}" for s in sets])


@pytest.fixture
def worker() -> Path:
    return WORKERS
