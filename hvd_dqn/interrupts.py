"""Why a run stops before its end: signals, the wall-time limit, a lost launcher, a stall.

Nothing here stops the run by itself, except the stall watchdog. Signals and the rest
only raise a flag on this rank; the training loop puts the flags into its one vote per
iteration (distributed.vote), so every rank stops at the same iteration, rank 0 writes a
checkpoint, and every rank exits with EXIT_PREEMPTED: "stopped cleanly, run the same
command again to continue".

- SIGTERM, SIGUSR1, SIGINT: what SLURM (`scancel`, `--signal=B:USR1@N`, a time limit),
  Kubernetes (pod deletion), AWS Batch (job termination), mpirun (it forwards SIGUSR1
  and SIGTERM to the ranks) and Ctrl-C send. Taken by a thread of ours (sigwait),
  so they arrive even while the main thread waits inside TensorFlow or MPI; a repeat is
  ignored, so a signal that reaches a rank by two paths (the terminal and mpirun) is
  one stop.
- `run.max_wall_time`: stop while there is still time to write the checkpoint (the
  limit minus twice the last checkpoint's duration, and 10 s).
- A lost launcher: `horovodrun` runs mpirun under `/bin/sh`; a SIGTERM to horovodrun
  kills only that shell, and mpirun and the ranks went on as orphans (they would race a
  resubmitted job). A rank started by mpirun therefore watches its parent (mpirun or
  orted): when the parent is gone or has itself been orphaned, the launch was killed,
  and the rank stops as if signalled.
- A signal during start-up (Python and TensorFlow loading, Horovod starting, a restore)
  or during a long phase of the loop (the update's trace: seconds without a vote; an
  evaluation, where a rank whose episodes ended waits in the gather for the others'
  longer ones; rank 0's write of a metrics row, which the others wait for): it waits
  for the next vote, which stops the run with a checkpoint and exit 75 like any other;
  the grace below is then STARTUP_GRACE (a checkpoint's write: no bound). A signal at
  the end of a run, after its last vote (the envs closed, the last gather, rank 0's
  report and export), waits for that end too, and the run exits with its own code.
- A signal while the other ranks are gone: srun (--kill-on-bad-exit), mpirun and
  Kubernetes send SIGTERM to the survivors of a rank that died, and those wait in a
  collective the dead rank never joins. So once a stop signal has arrived, a rank that
  makes no progress for SIGNAL_GRACE seconds (outside start-up and the long phases) exits
  at once with 128 + the signal's number, as it would have without a handler; the run
  goes on from its previous checkpoint.
- A signal while exiting: once the run has ended with its checkpoint (or results)
  written, a stop signal ends the process at once with the run's own exit code (75 or
  0). srun --kill-on-bad-exit sends SIGTERM to the other ranks the moment one rank
  exits 75; a rank still shutting down Horovod then must not turn a clean stop into
  a failed job.
- The stall watchdog: if the loop makes no progress for `run.stall_timeout` seconds
  (a rank stopped with SIGSTOP, a hung filesystem, a peer that vanished without its
  connection closing), this rank prints one line and exits with code 1; the launcher
  (mpirun, srun --kill-on-bad-exit) then ends the others. Horovod's own stall check does
  not fire in that case: it runs in the coordinator's background loop, which is itself
  blocked in the MPI/Gloo exchange with the stopped rank (the same loop that runs our
  per-iteration vote). Time this process itself spent stopped
  (a suspended job: SIGSTOP to every rank, then SIGCONT) does not count, and in the
  phases of this rank's own long work (`busy`: the update's trace, the end of a run)
  the timeout is at least STARTUP_GRACE.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: stopped cleanly, checkpoint written; resume me
SIGNAL_GRACE = 3.0  # seconds a signalled rank waits for the loop to reach the vote
STARTUP_GRACE = 120.0  # the same in start-up, a trace and an evaluation
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
SIGNALS_SET = set(SIGNALS)
SUSPENDED = 5.0  # seconds the watch thread did not run: this process was stopped
_LAUNCHED_BY_MPI = ("OMPI_COMM_WORLD_SIZE",)  # Open MPI's mpirun/orted (and horovodrun)


def launcher_rank(environ: Mapping[str, str]) -> int:
    """This process's rank as the launcher set it (before Horovod starts), 0 if none."""
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` from /proc, None if `pid` is gone (or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # "pid (comm) state ppid ...": comm may hold spaces; split after its ')'
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Interrupts:
    """This rank's stop flags, the launcher watch and the stall watchdog."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.signal = 0  # the first stop signal received (0: none)
        self._signal_time = 0.0
        self.grace = STARTUP_GRACE  # seconds a signalled rank waits for the next vote
        self.launcher_lost = False
        self.deadline: float | None = None  # time.monotonic() by which to stop
        self.exit_code: int | None = None  # set by close(): the run has ended with it
        self.stall_timeout = 0.0
        self._stall_floor = 0.0  # the least stall timeout now (a trace: STARTUP_GRACE)
        self._beat = time.monotonic()
        environ = os.environ if environ is None else environ
        self._rank = launcher_rank(environ)  # Horovod's, once configure() is called
        self._parent = os.getppid()
        # Only a rank that an MPI launcher started directly watches it: a plain
        # `python`/`hvd-dqn` start may outlive its shell (nohup, a subshell) on purpose.
        watch = any(k in environ for k in _LAUNCHED_BY_MPI) and self._parent > 1
        self._grandparent = _parent_of(self._parent) if watch else None
        # The stop signals are blocked in every thread (threads that TensorFlow, Horovod
        # and MPI start later inherit the mask) and taken by the watch thread with
        # sigwait. A Python signal handler would run only when the main thread
        # returns to the interpreter, never while it waits inside an allreduce whose
        # peer died.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="hvd-dqn-watch", daemon=True)
        self._thread.start()

    def close(self, exit_code: int | None = None) -> None:
        """The run has ended; called before Horovod and TensorFlow shut down.

        exit_code: the run ended with everything it must write written (0, or
        EXIT_PREEMPTED after its checkpoint); a stop signal from now on ends this
        process at once with this code. srun --kill-on-bad-exit sends SIGTERM to the
        other ranks as soon as one rank exits 75, while they may still be shutting
        down; dying of that SIGTERM (143) would end the job FAILED, not requeued.
        None: stop the watch thread and give the stop signals back their default
        action (end the process)."""
        if exit_code is not None:
            self.exit_code = exit_code
            return
        self._closing.set()
        self._thread.join(timeout=2)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    def _on_signal(self, signum: int) -> None:
        if not self.signal:  # a repeat (the same signal by two paths) is one stop
            self.signal = signum
            self._signal_time = time.monotonic()

    def configure(self, rank: int, max_wall_time: float, stall_timeout: float) -> None:
        """Start the wall-time clock and the stall watchdog (seconds; 0: off). Called
        again when an elastic world re-forms: start-up's grace holds again until the loop
        runs."""
        self._rank = rank
        self.grace = STARTUP_GRACE
        self.deadline = time.monotonic() + max_wall_time if max_wall_time else None
        self.stall_timeout = stall_timeout
        self.beat()

    def running(self) -> None:
        """The loop runs: from now on a signal that no vote follows within SIGNAL_GRACE
        means the other ranks are gone (outside a long phase)."""
        self.grace = SIGNAL_GRACE
        self.beat()

    @contextlib.contextmanager
    def long_phase(self, grace: float = STARTUP_GRACE) -> Iterator[None]:
        """A phase of the loop longer than SIGNAL_GRACE without a vote, whose end a
        stop signal waits for up to `grace` seconds: the update's trace, an evaluation,
        a metrics row's write, the end of a run (STARTUP_GRACE), a checkpoint's write
        (math.inf: a half-written checkpoint is worth waiting for). The stall watchdog
        still applies (see `busy` for the phases of this rank's own long work)."""
        before = self.grace
        self.grace = max(before, grace)
        try:
            yield
        finally:
            self.grace = before
            self.beat()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """A long phase of this rank's own work without a beat: the update's trace (over
        20 s on a loaded 2-core machine) with its first call, and the end of a run (rank
        0's policy export, another trace). The stall timeout in it is at least
        STARTUP_GRACE: slow work is not a stall. (A peer that stops during the first
        update is then found after STARTUP_GRACE, not run.stall_timeout.)"""
        before = self._stall_floor
        self._stall_floor = STARTUP_GRACE
        try:
            with self.long_phase():
                yield
        finally:
            self._stall_floor = before

    def beat(self) -> None:
        """The loop made progress (every iteration, every evaluation step, and at the
        end of a long phase)."""
        self._beat = time.monotonic()

    def out_of_time(self, save_seconds: float) -> bool:
        """True once less time is left than a checkpoint needs (2x the last one, +10 s)."""
        if self.deadline is None:
            return False
        return time.monotonic() > self.deadline - 2 * save_seconds - 10

    def reason(self, code: int) -> str:
        """Words for a vote's stop code (see `codes`)."""
        if code >= 3:
            return signal.Signals(code - 3).name
        return {1: "the wall-time limit (run.max_wall_time)", 2: "the loss of the launcher"}.get(
            code, "?"
        )

    def code(self, save_seconds: float) -> int:
        """This rank's stop code for the vote: 0 none, 1 wall time, 2 launcher lost,
        3 + signal number for a signal (the highest code wins the vote)."""
        if self.signal:
            return 3 + self.signal
        if self.launcher_lost:
            return 2
        return 1 if self.out_of_time(save_seconds) else 0

    def _wait_for_signal(self, timeout: float) -> int:
        """A pending stop signal's number, taken from the process (0: none within
        `timeout` seconds).

        Not signal.sigtimedwait: when the process is stopped (SIGSTOP, `scontrol
        suspend`, Ctrl-Z) during its wait and continued after its timeout, CPython 3.11
        returns a siginfo it never filled in, and its garbage read as a signal stopped
        the run. sigpending and sigwait have no timeout path to get wrong."""
        if not SIGNALS_SET & signal.sigpending():
            self._closing.wait(timeout)
            if not SIGNALS_SET & signal.sigpending():
                return 0
        return int(signal.sigwait(SIGNALS))

    def _watch(self) -> None:
        tick = time.monotonic()
        while not self._closing.is_set():
            received = self._wait_for_signal(0.25)
            now = time.monotonic()
            if now - tick > SUSPENDED:
                # This thread did not run for that long: the process itself was stopped
                # (SIGSTOP, `scontrol suspend`) and continued. Time spent stopped is not
                # another rank's stall (its peers were most likely stopped with it).
                self._beat += now - tick
            tick = now
            if self.exit_code is not None:  # ended and saved: only exiting is left
                if received:
                    sys.stdout.flush()
                    os._exit(self.exit_code)
                continue
            if received:
                self._on_signal(received)
            if self._grandparent is not None and not self.launcher_lost:
                grandparent = _parent_of(self._parent)
                if grandparent is None or grandparent != self._grandparent:
                    self.launcher_lost = True
            idle = now - self._beat
            if self.signal:
                waited = now - max(self._signal_time, self._beat)
                grace = self.grace
                if waited > grace:
                    name = signal.Signals(self.signal).name
                    print(
                        f"hvd-dqn: error: rank {self._rank}: {name} received but the other "
                        f"ranks did not reach the next vote within {grace:g} s (one "
                        f"died?); exiting without a checkpoint",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(128 + self.signal)
            stall = max(self.stall_timeout, self._stall_floor) if self.stall_timeout else 0
            if stall and idle > stall:
                print(
                    f"hvd-dqn: error: rank {self._rank}: no progress for {idle:.0f} s "
                    f"(run.stall_timeout={self.stall_timeout:g}): another rank stalled or "
                    f"its host is unreachable; exiting so the launcher ends the job",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)
