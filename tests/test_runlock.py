"""One job per run directory (runlock.py): real processes that hold a run directory, a
second start refused naming the holder, a SIGKILLed holder taken over, concurrent
starts of which exactly one wins, and a holder on another machine judged by its lease."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, WORKERS, quiet_env

from hvd_dqn import runlock
from hvd_dqn.config import ConfigError

# Leases renewed every fraction of a second and judged stale after seconds: one at a time.
pytestmark = pytest.mark.timed


def _start(run: Path) -> subprocess.Popen[str]:
    """A real process that holds `run` until its stdin closes (workers/hold_run_dir.py)."""
    return subprocess.Popen(
        [sys.executable, str(WORKERS / "hold_run_dir.py"), str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=quiet_env(),
        cwd=ROOT,
    )


def _held(proc: subprocess.Popen[str]) -> bool:
    """True once `proc` says it holds its directory, False if it ended without."""
    assert proc.stdout is not None
    line = proc.stdout.readline()  # its one line, or "" when it exits refused
    if line:
        assert line == f"holding {proc.pid}\n"
    return bool(line)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate()  # closes stdin: a holder releases and exits
    return proc.returncode, out, err


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def test_a_second_start_is_refused_naming_the_holder_and_touching_nothing(
    tmp_path: Path,
) -> None:
    run = tmp_path / "runs" / "a"
    first = _start(run)
    try:
        assert _held(first)
        (run / "metrics.jsonl").write_text("{}\n")  # the first job's work
        before = _files(run)
        code, out, err = _finish(_start(run))
        assert code == 2 and out == "", err
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"hvd-dqn: error: run directory {run}: in use by another job")
        assert f"(host {socket.gethostname()}, pid {first.pid}, since 20" in lines[0]
        assert " UTC)" in lines[0]
        assert _files(run) == before
    finally:
        code, out, err = _finish(first)
    assert code == 0 and out.endswith("released\n"), err
    assert _files(run) == {"metrics.jsonl": b"{}\n"}  # the lock went with its holder
    # An empty directory the holder made goes with it too.
    empty = tmp_path / "runs" / "b"
    assert _held(second := _start(empty))
    assert _finish(second)[0] == 0
    assert not empty.exists() and (tmp_path / "runs").exists()


def test_a_sigkilled_holder_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _start(run)
    assert _held(first)
    os.kill(first.pid, signal.SIGKILL)
    # Not reaped yet (as under a launcher that has not noticed): a zombie holds nothing.
    stat = Path(f"/proc/{first.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert (run / runlock.LOCK_NAME).exists()  # nobody released it
    second = _start(run)
    try:
        assert _held(second)
        lock = json.loads((run / runlock.LOCK_NAME).read_text())
        assert lock["pid"] == second.pid
    finally:
        code, _, err = _finish(second)
        first.wait()
    assert code == 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        f"hvd-dqn: warning: run directory {run}: taking it over from a job that is gone "
        f"(host {socket.gethostname()}, pid {first.pid}, since 20"
    ), err
    assert err.rstrip().endswith(f"pid {first.pid} no longer runs)"), err


@pytest.mark.parametrize("before", ["nothing", "a dead holder"])
def test_of_concurrent_starts_exactly_one_holds(tmp_path: Path, before: str) -> None:
    run = tmp_path / "run"
    if before == "a dead holder":
        dead = _start(run)
        assert _held(dead)
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
    starts = [_start(run) for _ in range(4)]
    try:
        holders = [p for p in starts if _held(p)]
        assert len(holders) == 1
        winner = holders[0]
        said = ""
        for proc in starts:
            code, _, err = _finish(proc)
            assert code == (0 if proc is winner else 2), err
            assert len(err.splitlines()) <= 1, err
            assert (
                proc is winner
                or f"in use by another job (host {socket.gethostname()}, pid {winner.pid}, since"
                in err
            ), err
            said += err
        if before == "a dead holder":  # the winner's warning or a refusal names it
            assert f"pid {dead.pid}, since" in said and f"pid {dead.pid} no longer runs" in said
        else:
            assert "warning" not in said
    finally:
        for proc in starts:
            _finish(proc)
    # Nothing left: no lock, no private or moved-aside file, no directory made for it.
    assert (sorted(os.listdir(run)) if run.exists() else None) == (
        None if before == "nothing" else []
    )


def test_directories_a_refused_start_made_go_when_the_holder_releases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of two starts on a directory that did not exist: A makes it, B finds it
    made and takes the lock, A is refused and cannot remove the directory B's lock is
    in. A's refusal is entered where it leaves (runlock._forget, with what A made, by a
    path relative to its own working directory)."""
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)  # by A: the holder finds it made and made nothing itself
    holder = _start(run)
    try:
        assert _held(holder)
        a_made = [Path("runs/a"), Path("runs")]
        monkeypatch.chdir(tmp_path)
        runlock._forget(a_made, a_made[0])  # A, refused, made runs/ and runs/a
        marks = [p.name for p in run.iterdir() if p.name.startswith(runlock.MARK_PREFIX)]
        assert len(marks) == 1 and (run / runlock.LOCK_NAME).exists()
    finally:
        code, _, err = _finish(holder)
    assert code == 0, err
    assert not (tmp_path / "runs").exists()


def _foreign_lock(run: Path, age: float) -> bytes:
    """The lock of a job on another machine, last renewed `age` seconds ago."""
    run.mkdir()
    lock = run / runlock.LOCK_NAME
    started = time.time() - 3600
    holder = {
        "host": "node7",
        "pid": 4242,
        "started": started,
        "boot_id": "0c3f7a52-boot-of-another-machine",
        "pid_ns": "pid:[4026531836]",
        "pid_start": 123,
        "token": "theirs",
    }
    lock.write_text(json.dumps(holder))
    renewed = time.time() - age
    os.utime(lock, (renewed, renewed))
    return lock.read_bytes()


def test_a_holder_on_another_machine_holds_while_it_renews_its_lease(tmp_path: Path) -> None:
    """A holder that cannot be checked from here: the start waits out its lease once (a
    requeue after a node loss), and is refused because the holder renewed it meanwhile."""
    run = tmp_path / "run"
    content = _foreign_lock(run, age=1)
    stop = threading.Event()

    def renew() -> None:  # the holder on "node7", touching its lock as runlock does
        while not stop.wait(0.3):
            os.utime(run / runlock.LOCK_NAME)

    renewer = threading.Thread(target=renew)
    renewer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ConfigError) as refused:
            runlock.hold(run, stale_after=3)
    finally:
        stop.set()
        renewer.join()
    assert time.monotonic() - t0 >= 2  # it waited for the lease
    assert "in use by another job (host node7, pid 4242, since " in str(refused.value)
    assert re.search(r"its lock was renewed \d s ago", str(refused.value))
    assert _files(run) == {runlock.LOCK_NAME: content}


def test_a_lease_not_renewed_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    _foreign_lock(run, age=120)
    with runlock.hold(run, stale_after=60) as held:
        assert json.loads((run / runlock.LOCK_NAME).read_text())["token"] == held.token
    err = capsys.readouterr().err
    assert err.startswith(
        f"hvd-dqn: warning: run directory {run}: taking it over from a job that is gone "
        f"(host node7, pid 4242, since "
    )
    assert err.endswith(": its lock was not renewed for 120 s)\n"), err
    assert list(run.iterdir()) == []


def test_a_reused_pid_is_not_the_holder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # This machine, this pid namespace, a pid that runs (this one) but started at
    # another time than the holder did: the holder is gone.
    run = tmp_path / "run"
    held = runlock.hold(run)
    holder = dict(held.holder, pid_start=held.holder["pid_start"] - 1, token="old")
    held.release()
    run.mkdir()
    (run / runlock.LOCK_NAME).write_text(json.dumps(holder))
    with runlock.hold(run):
        pass
    assert f"pid {os.getpid()} no longer runs)" in capsys.readouterr().err
    # The same pid with its own start time is a live holder.
    with runlock.hold(run), pytest.raises(ConfigError, match=f"pid {os.getpid()}, since"):
        runlock.hold(run)


def test_the_holder_renews_its_lock_and_learns_when_it_lost_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lock = run / runlock.LOCK_NAME
    with runlock.hold(run, beat_every=0.05) as held:
        first = lock.stat().st_mtime_ns
        os.utime(lock, ns=(first - 10**10, first - 10**10))  # as if renewed 10 s ago
        deadline = time.monotonic() + 60
        while lock.stat().st_mtime_ns < first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.stat().st_mtime_ns >= first  # renewed since
        # Another job takes the lock over (this one was thought gone).
        lock.write_text(json.dumps(dict(held.holder, token="another job")))
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.lost
    assert json.loads(lock.read_text())["token"] == "another job"  # theirs stays


def test_a_run_directory_that_cannot_be_held_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"file: exists and is not a directory$"):
        runlock.hold(tmp_path / "file")
    long = tmp_path / ("x" * 300) / "run"
    with pytest.raises(ConfigError) as refused:
        runlock.hold(long)
    message = str(refused.value)
    assert "cannot write there (File name too long)" in message
    assert len(message) < 200 and f"({len(str(long))} characters)" in message
