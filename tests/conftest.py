"""Shared helpers: launching real multi-process jobs with mpirun and horovodrun."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hvd_dqn.files import read_rows

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "workers"


def quiet_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
    return env


# The mpirun command line horovodrun builds for `-np N` on this machine (rank-tagged
# output, no core binding, slot mapping, TCP), run directly: horovodrun first checks in a
# child process that Horovod was built with MPI, which imports TensorFlow and costs 3-4 s
# per job. Tests of horovodrun itself (its signals, Gloo, elastic, two hosts) still start it.
def mpirun_cmd(np: int) -> list[str]:
    return [
        "mpirun", "--allow-run-as-root", "--tag-output", "-np", str(np), "-H", f"localhost:{np}",
        "-bind-to", "none", "-map-by", "slot", "-mca", "pml", "ob1", "-mca", "btl", "^openib",
    ]  # fmt: skip


def horovodrun_cmd(np: int, gloo: bool = False) -> list[str]:
    return [str(BIN / "horovodrun"), "-np", str(np), *(["--gloo"] if gloo else [])]


def _run(
    cmd: list[str], timeout: float, env: dict[str, str] | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env or quiet_env(), cwd=ROOT
    )


def horovodrun(
    args: list[str],
    np: int = 2,
    gloo: bool = False,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `args` as `np` processes under horovodrun (MPI, or Gloo), real processes."""
    return _run(horovodrun_cmd(np, gloo) + args, timeout, env)


def mpirun(
    args: list[str], np: int = 2, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `args` as `np` ranks under mpirun, as `horovodrun -np N` would."""
    return _run(mpirun_cmd(np) + args, timeout, env)


def hvd_dqn(
    args: list[str], timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script as one process."""
    return _run([str(BIN / "hvd-dqn"), *args], timeout, env)


def train_args(config: str, steps: int, run: Path, *sets: str) -> list[str]:
    """`train` arguments for a preset, a budget and a run directory, with `--set`s."""
    return [
        "train",
        "--config",
        config,
        "--total-steps",
        str(steps),
        "--run-dir",
        str(run),
        "--no-progress",
        *[f"--set={s}" for s in sets],
    ]


def train_one_process(run: Path, total_steps: int, *sets: str) -> subprocess.CompletedProcess[str]:
    """`hvd-dqn train` as one process into `run`, with `--set` overrides."""
    args = ["train", "--total-steps", str(total_steps), "--run-dir", str(run), "--no-progress"]
    return hvd_dqn(args + [f"--set={s}" for s in sets])


@pytest.fixture
def worker() -> Path:
    return WORKERS


def launch(
    args: list[str], np: int = 1, env: dict[str, str] | None = None, launcher: str = "mpirun"
) -> subprocess.Popen[str]:
    """Start `hvd-dqn ARGS` (np=1) or `mpirun|horovodrun -np N hvd-dqn ARGS` in the
    background, in its own session (its own process group, as a terminal's foreground
    job is)."""
    cmd = [str(BIN / "hvd-dqn"), *args]
    if np > 1 and launcher == "horovodrun":
        cmd = horovodrun_cmd(np) + cmd
    elif np > 1:
        cmd = mpirun_cmd(np) + cmd
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or quiet_env(),
        cwd=ROOT,
        start_new_session=True,
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll `condition` until it holds; fail if `proc` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def pids_of(pattern: str) -> list[int]:
    """Processes whose command line contains `pattern` (pgrep -f)."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def rank_pids(run: Path) -> dict[int, int]:
    """{rank: pid} of the training processes of run directory `run`."""
    from hvd_dqn.bench import rank_pids as ranks

    return ranks(run)


def kill_all(pattern: str) -> None:
    for pid in pids_of(pattern):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def logged_steps(run: Path, kind: str = "train") -> list[int]:
    """The env steps of run's metrics.jsonl rows of `kind` (train or eval), in order."""
    return [row["env_steps"] for row in read_rows(run, kind)]


def checkpoints(run: Path) -> list[int]:
    """Env steps of the complete checkpoints of `run`."""
    from hvd_dqn.checkpoint import complete

    return complete(run)


def ip(*args: str) -> None:
    """`ip ARGS` (iproute2), failing the test if it fails."""
    subprocess.run(["ip", *args], check=True, capture_output=True)


def veth_bytes(ns: str) -> int:
    """Bytes received plus sent on the `veth0` of network namespace `ns`."""
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "-s", "link", "show", "veth0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])
