"""One job per run directory: a lock file that a live job holds for its whole run.

    RUN_DIR/run.lock    JSON {host, pid, started, boot_id, pid_ns, pid_start, token},
                        its mtime renewed by the holder every 10 s

    with runlock.hold(run_dir):      # rank 0, before it looks at the run directory
        ...                          # the whole run

A second job that starts on a held directory is refused: `hold` raises ConfigError (one
line naming the holder's host, pid and start time; exit 2 from the CLI) and nothing in
the directory is left changed (if two starts made the directory at once, the refused one
leaves a mark and the holder removes the directory at release if it is then empty). A lock
whose holder is gone is taken over with a
one-line warning on stderr. Gone means:
- same machine (the same kernel boot id) and the same pid namespace: the holder's pid
  no longer runs, or now belongs to a process started at another time (the start time
  in /proc/PID/stat, so a reused pid does not count as the holder). A holder that runs
  holds, however long it has been quiet (e.g. stopped by SIGSTOP).
- another machine (or another pid namespace, where its pid means nothing here): the lock
  was not renewed for `stale_after` seconds (60; the holder renews it every 10 from a
  daemon thread), as when its node died or lost the file system.

Why a lock file and not fcntl/flock: on clusters run directories live on NFS or Lustre.
There flock/fcntl locks are either local to one client (Lustre mounted without
`-o flock`, or with `-o localflock`: two nodes both "hold" the lock), or depend on
the NLM lock daemons (NFSv3 lockd/statd, often missing or firewalled in containers), and
the lock of a node that died is released only when the server notices, or never. Making
a name is atomic on all of them: link(2) fails with EEXIST when the name exists, on
local file systems, on NFS (the server does it in one operation; the classic NFS-safe
lock) and on Lustre (the metadata server serialises names). The lock's content is
written to a private file first and linked into place, so no one ever reads a
half-written lock; where hard links are not supported, O_CREAT|O_EXCL (atomic on NFSv3
and later, and Lustre) is the fallback. A lost NFS reply to a link that worked answers
EEXIST on the retry: the lock's token then says it is ours.

Time is measured with one clock, the file server's: the lock's mtime (the holder's
utime(NULL), which NFS sends as "set to server time") against the mtime of a file this
process has just touched in the same directory, so clock skew between nodes does not
matter. Files are opened before their mtime is read (close-to-open consistency: NFS
revalidates its attribute cache at open, which may otherwise be up to 60 s old).

Takeover is race-safe: the stale lock is renamed aside to a name of this process's own
(of two processes taking over at once, one moves the file, the other gets ENOENT and
looks again); the taker then checks that what it moved is the lock it judged stale
(same token, same mtime), and if it moved a live lock instead (renewed meanwhile, or a
third job's), links it straight back. Then it makes its own lock as at a first start,
which a concurrent start may still win: then this one is refused, and its line names
the gone job instead of the winner's warning (the winner never saw the stale lock).

Limits: a holder on a node cut off from the file system for longer than `stale_after`
may be taken over while it still runs; its next renewal finds another token
(RunLock.lost, a warning on stderr), so it can stop writing. The same happens, within one
renewal period, to a new holder whose fresh lock another start moved aside (it had judged
the lock before, stale) and could not put back because a third start made its own lock
in between: three starts racing within microseconds over a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from hvd_dqn.config import ConfigError, shorten

LOCK_NAME = "run.lock"
MARK_PREFIX = ".made-by-a-refused-start."
"""A refused start that made the run directory leaves this mark if it cannot remove it."""
BEAT_EVERY = 10.0
"""Seconds between renewals of the lock's mtime by its holder."""
STALE_AFTER = 60.0
"""Seconds without a renewal after which a holder on another machine is gone."""
_PROC = Path("/proc")


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _boot_id() -> str:
    """This kernel's boot id: equal for every process (and container) on this machine
    since its last boot, different on any other machine or after a reboot."""
    return _read_text(_PROC / "sys/kernel/random/boot_id")


def _pid_ns() -> str:
    try:
        return os.readlink(_PROC / "self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat field 22), or
    None if no such process runs (a zombie, killed but not yet reaped, does not)."""
    stat = _read_text(_PROC / str(pid) / "stat")
    if not stat:
        return None
    try:  # the command name (field 2) may hold spaces and ")": split after the last ")"
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def _runs(pid: int, start: int | None) -> bool:
    """Process `pid` runs and is the one that started at `start` (if known)."""
    now = _start_time(pid)
    if now is not None:
        return start is None or now == start
    if (_PROC / str(pid)).exists():  # a zombie
        return False
    try:  # no /proc entry to read (no /proc, or hidepid): ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _since(started: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))


def describe(holder: dict[str, Any]) -> str:
    """The holder a lock's content names: "host H, pid P, since T"."""
    try:
        since = _since(float(holder["started"]))
    except (KeyError, TypeError, ValueError):
        since = "an unknown time"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {since}"


def _read(path: Path) -> tuple[dict[str, Any] | None, int] | None:
    """(the lock's content, or None if it is not a lock's JSON; its mtime in ns), or
    None if there is no lock. Opened before its mtime is read (NFS revalidates at open)."""
    try:
        with open(path, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime_ns
            raw = f.read(65536)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None, mtime
    return (data if isinstance(data, dict) else None), mtime


def _server_now(probe: Path) -> int:
    """Now, by the clock of the file system `probe` is on (its mtime after a touch)."""
    os.utime(probe)
    with open(probe, "rb") as f:
        return os.fstat(f.fileno()).st_mtime_ns


def _same_pids(holder: dict[str, Any] | None) -> bool:
    """The holder ran on this machine (same kernel boot) in this pid namespace, so its
    pid can be looked up here."""
    return (
        holder is not None
        and bool(holder.get("boot_id"))
        and holder.get("boot_id") == _boot_id()
        and holder.get("pid_ns") == _pid_ns()
        and isinstance(holder.get("pid"), int)
    )


def _gone(holder: dict[str, Any] | None, mtime: int, now: int, stale_after: float) -> str:
    """Why the holder of a lock is gone ("" if it may still run). `now` and `mtime` are
    the file server's times in ns."""
    if holder is not None and _same_pids(holder):
        start = holder.get("pid_start")
        if _runs(holder["pid"], start if isinstance(start, int) else None):
            return ""
        return f"pid {holder['pid']} no longer runs"
    age = (now - mtime) / 1e9
    if age > stale_after:
        what = "lock" if holder is not None else "unreadable lock"
        return f"its {what} was not renewed for {age:.0f} s"
    return ""


def _warn(message: str) -> None:
    print(f"hvd-dqn: warning: {message}", file=sys.stderr, flush=True)


class RunLock:
    """A held run directory; renews its lock until `release` (or the end of a `with`)."""

    def __init__(
        self, path: Path, token: str, holder: dict[str, Any], made: list[Path], beat: float
    ) -> None:
        self.path = path
        self.token = token
        self.holder = holder
        self.lost = False  # another job took the lock over (this one was thought gone)
        self._made = made  # directories `hold` created (removed again if left empty)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, args=(beat,), name="hvd-dqn run lock", daemon=True
        )
        self._thread.start()

    def _ours(self) -> bool:
        found = _read(self.path)
        return found is not None and found[0] is not None and found[0].get("token") == self.token

    def _renew(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not self._ours():
                    self.lost = True
                    _warn(
                        f"run directory {shorten(self.path.parent)}: another job took over "
                        f"its lock (this job was thought gone); its writes may now collide"
                    )
                    return
                os.utime(self.path)
            except OSError:  # a passing file-server error: try again at the next beat
                continue

    def release(self) -> None:
        """Stop renewing and remove the lock (if still ours) and the directories `hold`
        made that stayed empty."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            if self._ours():
                self.path.unlink()
        _remove_marked(self.path.parent)
        _remove_empty(self._made)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _link(private: Path, lock: Path, token: str) -> bool:
    """Make `lock` (the content of `private`) if no lock exists; True if it is ours."""
    try:
        os.link(private, lock)
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        try:  # no hard links here: create the name exclusively, then write it
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(private.read_bytes())
                f.flush()
                os.fsync(f.fileno())
            return True
    found = _read(lock)  # a retried NFS link whose first reply was lost says EEXIST
    return found is not None and found[0] is not None and found[0].get("token") == token


def _move_aside(lock: Path, judged: tuple[dict[str, Any] | None, int], token: str) -> bool:
    """Remove the stale lock `judged` (content, mtime) and nothing else; True if done."""
    aside = lock.with_name(f".{LOCK_NAME}.stale.{token}")
    if _read(lock) != judged:  # renewed or replaced since: look again
        return False
    try:
        os.rename(lock, aside)
    except FileNotFoundError:  # another process moved it first
        return False
    moved = _read(aside)
    if moved == judged:
        aside.unlink()
        return True
    # A live lock was moved (renewed since it was judged, or a newer holder's): back.
    with contextlib.suppress(FileExistsError):
        os.link(aside, lock)
    aside.unlink()
    return False


def hold(
    run_dir: Path, stale_after: float = STALE_AFTER, beat_every: float = BEAT_EVERY
) -> RunLock:
    """Hold `run_dir` for this process (creating it if needed), or raise ConfigError
    naming the live job that holds it. See the module docstring."""
    shown = shorten(run_dir)
    made: list[Path] = []  # the directories made here, deepest first
    parent = run_dir
    try:
        while not parent.exists() and parent != parent.parent:
            made.append(parent)
            parent = parent.parent
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"run directory {shown}: exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"run directory {shown}: cannot write there ({exc.strerror})") from None
    held: RunLock | None = None
    try:
        held = _take(run_dir, shown, stale_after, beat_every, made)
    except OSError as exc:
        raise ConfigError(
            f"run directory {shown}: cannot hold its {LOCK_NAME} ({exc.strerror})"
        ) from None
    finally:
        if held is None:  # refused: leave nothing behind
            _forget(made, run_dir)
    return held


def _remove_empty(directories: list[Path]) -> bool:
    """rmdir each (deepest first; one already gone counts as removed) until one is not
    empty; True if all went."""
    for directory in directories:
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return True


def _forget(made: list[Path], run_dir: Path) -> None:
    """Remove the directories a refused start made (`run_dir` and the k - 1 parents above
    it). If another job made its lock in `run_dir` meanwhile (two starts on a directory
    that did not exist), it is not empty: a mark file says k, and whoever releases the
    lock removes those directories if they are empty by then (`_remove_marked`). The
    lock is looked at again after the mark is written, so a lock released meanwhile is
    seen gone here and the mark is removed by this process instead."""
    if not made or _remove_empty(made):
        return
    mark = run_dir / f"{MARK_PREFIX}{uuid.uuid4().hex}"
    try:
        fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, str(len(made)).encode())  # a few bytes: one write
        finally:
            os.close(fd)
    except OSError:  # no mark (the directory went meanwhile, or the disk is full)
        with contextlib.suppress(OSError):
            mark.unlink()
        _remove_empty(made)
        return
    if _read(run_dir / LOCK_NAME) is None:  # opened, not stat'ed: NFS revalidates
        _remove_marked(run_dir)


def _remove_marked(run_dir: Path) -> None:
    """Remove the marks refused starts left in `run_dir`, and the k directories each
    names (the run directory and its parents, walked up from the real path) that are
    empty. A mark that cannot be read names no directory."""
    with contextlib.suppress(OSError):
        here = run_dir.resolve()
        for mark in run_dir.glob(f"{MARK_PREFIX}*"):
            try:
                k = int(mark.read_text() or 0)
            except (OSError, ValueError):
                k = 0
            try:
                mark.unlink()  # of two processes removing it at once, one goes on
            except OSError:
                continue
            _remove_empty([here, *here.parents][:k])


def _wait_out_lease(
    holder: dict[str, Any], renewed: int, now: int, stale_after: float, shown: str
) -> bool:
    """Sleep until the lease of `holder`'s lock (renewed at `renewed`, ns) has run out,
    plus a second; a live holder renews it meanwhile. Returns True (waited)."""
    left = max(0.0, stale_after - (now - renewed) / 1e9) + 1.0
    _warn(
        f"run directory {shown}: held by {describe(holder)}, which cannot be checked from "
        f"here; waiting {left:.0f} s for its lease (renewed every {BEAT_EVERY:g} s) to run out"
    )
    time.sleep(left)
    return True


def _refusal(shown: str, holder: dict[str, Any] | None, why: str = "") -> ConfigError:
    who = describe(holder) if holder is not None else "its lock cannot be read"
    return ConfigError(
        f"run directory {shown}: in use by another job ({who}{why}); stop it, wait for "
        f"it to end or choose another --run-dir"
    )


def _this_job(token: str) -> dict[str, Any]:
    """What the lock file says of its holder: where, which process, since when."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        "boot_id": _boot_id(),
        "pid_ns": _pid_ns(),
        "pid_start": _start_time(os.getpid()),
        "token": token,
    }


def _take(
    run_dir: Path, shown: str, stale_after: float, beat_every: float, made: list[Path]
) -> RunLock:
    lock = run_dir / LOCK_NAME
    token = uuid.uuid4().hex
    me = _this_job(token)

    refuse = functools.partial(_refusal, shown)

    # A live holder on this machine is refused before anything is written here.
    found = _read(lock)
    if found is not None and _same_pids(found[0]) and not _gone(found[0], 0, 0, stale_after):
        raise refuse(found[0])
    private = run_dir / f".{LOCK_NAME}.{token}"
    try:
        with open(private, "x") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        taken: tuple[dict[str, Any] | None, str] | None = None
        waited = False
        for _ in range(20):
            if _link(private, lock, token):
                if taken is not None:
                    who = describe(taken[0]) if taken[0] is not None else "an unknown job"
                    _warn(
                        f"run directory {shown}: taking it over from a job that is gone "
                        f"({who}: {taken[1]})"
                    )
                return RunLock(lock, token, me, made, beat_every)
            found = _read(lock)
            if found is None:  # released or moved aside meanwhile: look again
                continue
            now = _server_now(private)
            why = _gone(found[0], found[1], now, stale_after)
            if not why and not waited and found[0] is not None and not _same_pids(found[0]):
                # A holder on another host (or pid namespace) cannot be checked from here:
                # a requeued job after a node loss waits for its lease to run out once.
                waited = _wait_out_lease(found[0], found[1], now, stale_after, shown)
                continue
            if not why:
                renewed = (
                    ""
                    if _same_pids(found[0])
                    else f"; its lock was renewed {max(0, now - found[1]) / 1e9:.0f} s ago"
                )
                if taken is not None:  # a concurrent start used the lock this one freed
                    was = describe(taken[0]) if taken[0] is not None else "an unknown job"
                    renewed += f"; it took over from a job that is gone ({was}: {taken[1]})"
                raise refuse(found[0], renewed)
            if _move_aside(lock, found, token):
                taken = (found[0], why)
        raise ConfigError(
            f"run directory {shown}: its lock changed hands 20 times while this job tried "
            f"to take it; another job is starting there"
        )
    finally:
        private.unlink(missing_ok=True)
