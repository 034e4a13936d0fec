"""Horovod Elastic with real workers on this machine: `horovodrun --min-np/--max-np
--host-discovery-script` with "hosts" that are distinct names of this machine (localhost,
127.0.0.1, its host name, its address), each with one slot, and docker/discover-hosts.sh
reading a host file the test rewrites. A worker is SIGKILLed, a host is added, a host is
removed, and the run must go on and finish with exact counters and identical weights.
Assertions read resets.jsonl, the row rank 0 writes at the start and at every reset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, ROOT, checkpoints, logged_steps, quiet_env

from hvd_dqn.config import load

pytestmark = [pytest.mark.distributed, pytest.mark.elastic, pytest.mark.cluster]
LEARNING_STARTS = load("cartpole", []).learner.learning_starts


def local_names() -> list[str]:
    """Four names Horovod treats as four local hosts (no ssh)."""
    from horovod.runner.util.network import get_local_host_addresses

    local = get_local_host_addresses()
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    names += sorted(a for a in local if a != "127.0.0.1")
    names = [n for n in dict.fromkeys(names) if socket.gethostbyname(n) in local]
    if len(names) < 4:
        pytest.skip(f"needs 4 names of this machine, found {names}")
    return names[:4]


def resets(run: Path) -> list[dict]:
    path = run / "resets.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_rows(run: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(rows := resets(run)) < n:
        if proc.poll() is not None:
            pytest.fail(f"ended ({proc.returncode}) with {rows}: {proc.stdout.read()[-3000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"timed out waiting for reset row {n}: {rows}"
        time.sleep(0.2)
    return rows


@contextlib.contextmanager
def elastic_job(
    tmp_path: Path, hosts: list[str], np: int, total: int
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """An elastic job on `hosts` (one slot each), waited for until it has trained a
    while; killed with its workers if the test ends first."""
    proc, run = start(tmp_path, hosts, np, total)
    try:
        wait_rows(run, 1, proc)
        while not logged_steps(run):  # trained (and committed) for a while
            assert proc.poll() is None
            time.sleep(0.2)
        yield proc, run
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def start(
    tmp_path: Path,
    hosts: list[str],
    np: int,
    total: int,
    limits: tuple[int, int] = (2, 3),
    hvd_args: tuple[str, ...] = (),
    train_args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, Path]:
    """horovodrun --min-np/--max-np `limits` on `hosts` ("name" for one slot, or
    "name:slots"), listed in a host file that docker/discover-hosts.sh reads."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{h}\n" if ":" in h else f"{h}:1\n" for h in hosts))
    run = tmp_path / "run"
    cmd = [
        str(BIN / "horovodrun"), "-np", str(np),
        "--min-np", str(limits[0]), "--max-np", str(limits[1]), *hvd_args,
        "--host-discovery-script", f"bash {ROOT / 'docker' / 'discover-hosts.sh'} {hostfile}",
        str(BIN / "hvd-dqn"), "train", "--elastic", "--run-dir", str(run),
        "--total-steps", str(total), "--no-progress", "--set", "run.threads=1",
        "--set", "run.stop_at_return=none", "--set", "run.eval_episodes=2",
        "--set", "run.checkpoint_every=0", *train_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=quiet_env(),
        cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    return proc, run


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"elastic job did not finish: {out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def check_summary(run: Path, total: int, rows: list[dict]) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    # Env steps are counted once: the total is reached exactly at an iteration boundary
    # (num_envs x ranks steps each), and every reset row's steps were committed ones.
    assert total <= summary["env_steps"] < total + 3 * 8
    assert [r["env_steps"] for r in rows] == sorted(r["env_steps"] for r in rows)
    assert summary["updates"] > rows[-1]["updates"]
    # The summary is the final checkpoint's learner: its update count, and the sha256 of
    # every variable (the same on every rank, train() fails otherwise) in their order.
    assert checkpoints(run)[-1] == summary["env_steps"]
    ckpt = run / "checkpoints" / f"ckpt-{summary['env_steps']:012d}"
    digest = hashlib.sha256()
    with np.load(ckpt / "learner.npz") as z:
        for key in sorted(z.files):
            digest.update(np.ascontiguousarray(z[key]).tobytes())
        (updates,) = [z[k] for k in z.files if k.split("/", 1)[1].startswith("updates")]
    assert int(updates) == summary["updates"]
    assert digest.hexdigest() == summary["weights_sha256"]
    return summary


def test_a_killed_worker_is_dropped_and_a_new_one_joins(tmp_path: Path) -> None:
    a, b, c, d = local_names()
    # The failure and the join come within the first ~3,000 env steps; the new worker
    # counts after ~1,000 more (its share of learning_starts at 24 env steps per iteration).
    total = 12_000
    with elastic_job(tmp_path, [a, b, c], 3, total) as (proc, run):
        (first,) = resets(run)
        assert first["reason"] == "start" and first["size"] == 3
        os.kill(first["ranks"][2]["pid"], signal.SIGKILL)
        killed_at = time.time()
        rows = wait_rows(run, 2, proc)
        lost = rows[1]
        assert (lost["reason"], lost["old_size"], lost["size"]) == ("failure", 3, 2)
        assert first["ranks"][2]["pid"] not in [r["pid"] for r in lost["ranks"]]
        # The last commit came back (commits every 100 updates), not the start.
        assert lost["updates"] > 0 and lost["env_steps"] > 0
        recovered = lost["time"] - killed_at
        # A replacement host appears (the failed one stays blacklisted by Horovod): the
        # job grows back to 3 at the next commit.
        with open(tmp_path / "hosts", "a") as f:
            f.write(f"{d}:1\n")
        rows = wait_rows(run, 3, proc)
        joined = rows[2]
        assert (joined["reason"], joined["old_size"], joined["size"]) == ("hosts", 2, 3)
        new_pids = {r["pid"] for r in joined["ranks"]} - {r["pid"] for r in lost["ranks"]}
        assert len(new_pids) == 1
        out = finish(proc)
    summary = check_summary(run, total, resets(run))
    assert summary["world_size"] == 3
    # The new worker's gradient counted only once its replay held its share of
    # learning_starts (zero weight before), after it had joined.
    *first_ranks, new = sorted(summary["elastic_ranks"], key=lambda r: r["pid"] in new_pids)
    assert new["pid"] in new_pids
    # The workers that started the run counted from the first update: none ran unweighted.
    assert [r["weighted_from"] for r in first_ranks] == [0, 0]
    assert new["joined_at"] == joined["updates"]
    assert new["weighted_from"] > new["joined_at"]
    assert new["replay_then"] >= LEARNING_STARTS // 3
    assert "elastic reset (failure): 3 -> 2" in out and "elastic reset (hosts): 2 -> 3" in out
    print(f"from the SIGKILL to training again with 2 ranks: {recovered:.1f} s")


def test_a_host_removed_from_discovery_leaves_without_a_failure(tmp_path: Path) -> None:
    a, b, c, _ = local_names()
    total = 10_000  # the host leaves at the first commit after the first row (2,500)
    with elastic_job(tmp_path, [a, b, c], 3, total) as (proc, run):
        (tmp_path / "hosts").write_text(f"{a}:1\n{b}:1\n")
        rows = wait_rows(run, 2, proc)
        assert (rows[1]["reason"], rows[1]["old_size"], rows[1]["size"]) == ("hosts", 3, 2)
        out = finish(proc)
    summary = check_summary(run, total, resets(run))
    assert summary["world_size"] == 2
    assert "failure" not in [r["reason"] for r in resets(run)], out[-2000:]


def test_one_host_of_two_slots_then_a_failure_before_the_first_commit(tmp_path: Path) -> None:
    """Horovod Elastic waits for two hosts to compare their network interfaces before it
    starts any worker, unless horovodrun names the interface: one host of 2 slots with
    `--network-interface lo` trains (without it nothing starts, for --elastic-timeout).
    Then the run continues elastic on two hosts, and a worker dies before the first
    commit: the survivors go back to the checkpoint the run resumed from, not to env
    step 0 (the state restored at the start is the first commit)."""
    a, b, _, _ = local_names()
    one_host = ("--network-interface", "lo")
    proc, run = start(tmp_path, ["localhost:2"], 2, 1_600, (1, 2), hvd_args=one_host)
    try:
        finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (row,) = resets(run)
    assert (row["size"], {r["host"] for r in row["ranks"]}) == (2, {socket.gethostname()})
    resumed = check_summary(run, 1_600, [row])

    # No commit before the end: a failure goes back to the start of this job.
    no_commit = ("--set", "run.commit_every=1000000000")
    proc, run = start(tmp_path, [a, b], 2, 8_000, (1, 2), train_args=no_commit)
    try:
        first = wait_rows(run, 2, proc)[1]
        assert first["env_steps"] == resumed["env_steps"]
        os.kill(first["ranks"][1]["pid"], signal.SIGKILL)
        lost = wait_rows(run, 3, proc)[2]
        assert (lost["reason"], lost["old_size"], lost["size"]) == ("failure", 2, 1)
        assert (lost["env_steps"], lost["updates"]) == (resumed["env_steps"], resumed["updates"])
        finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    check_summary(run, 8_000, resets(run)[1:])
