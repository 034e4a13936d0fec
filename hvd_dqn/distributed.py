"""The Horovod layer: the only module of hvd_dqn that imports Horovod.

Every rank runs the same program on its own data. This module makes those programs one
job: it starts Horovod, pins each rank to its device and its share of the CPU, checks
that the world is the one the launcher started, averages gradients with ring-allreduce,
broadcasts state from rank 0, averages metrics, and takes collective yes/no votes.

Remove the Horovod calls (a world of one) and the rest of hvd_dqn is plain
single-process DQN: `init()` without a launcher gives exactly that.

Host-side checks that are not tensors (the config every rank resolved, a rank's error
message) go through mpi4py when the controller is MPI, and through Horovod's object
collectives under Gloo, where there is no MPI world. The loop's per-iteration vote
goes through Horovod under both (see `vote`), and so does the last collective before a
run ends (see `leave_together`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf
from horovod.common.elastic import State

T = TypeVar("T")

# The launcher variables that say how many processes were started, in the order they
# are trusted. SLURM's count applies only inside an srun step: in the batch script
# itself SLURM_NTASKS is the allocation, not the number of processes running.
_SIZE_VARIABLES = (
    ("HOROVOD_SIZE", "horovodrun (Gloo)"),
    ("OMPI_COMM_WORLD_SIZE", "mpirun/horovodrun (Open MPI)"),
    ("PMIX_SIZE", "a PMIx launcher"),
    ("PMI_SIZE", "a PMI launcher (srun --mpi=pmi2, MPICH)"),
    ("SLURM_STEP_NUM_TASKS", "srun"),
)


class WorldError(RuntimeError):
    """The processes do not form the world they should, or an action failed on a rank.

    usage: the failure was bad input (exit code 2) rather than a fault (exit code 1).
    """

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class World:
    """Where this process sits in the job."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    controller: str  # "mpi", "gloo" or "none" (a world of one without a launcher)
    device: str  # "/GPU:0" or "/CPU:0": the device this rank's tensors live on

    @property
    def is_chief(self) -> bool:
        """Rank 0 writes files, logs and checkpoints; the others stay silent."""
        return self.rank == 0


# ---------------------------------------------------------------------------------------
# Pure decisions (no world needed; unit-tested directly)
# ---------------------------------------------------------------------------------------


def expected_world_size(
    environ: Mapping[str, str], flag: int | None = None
) -> tuple[int, str] | None:
    """How many processes the launcher started, and which launcher said so.

    `flag` (--expect-world-size) wins; then the launcher variables in `_SIZE_VARIABLES`.
    None when nothing says (a plain `python` start: a world of one is expected).
    """
    if flag is not None:
        return flag, "--expect-world-size"
    for name, launcher in _SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), f"{launcher} ({name}={value})"
    return None


def choose_gpu(num_visible: int, local_rank: int) -> int | None:
    """The index of the GPU this rank uses among the visible ones, or None for CPU.

    One visible GPU: use it (the launcher or CUDA_VISIBLE_DEVICES already gave each
    rank its own). Several: the one at `local_rank`, which must exist.
    """
    if num_visible == 0:
        return None
    if num_visible == 1:
        return 0
    if local_rank >= num_visible:
        raise WorldError(
            f"local rank {local_rank} has no GPU: {num_visible} are visible on "
            f"{socket.gethostname()}; start at most {num_visible} ranks per host"
        )
    return local_rank


def cpu_threads_per_rank(affinity: int, allowed: int, local_size: int) -> int:
    """TensorFlow intra-op threads for one rank: the CPUs it may run on, shared with no
    other rank of this job.

    affinity: CPUs in this process's affinity set (`os.sched_getaffinity`).
    allowed: CPUs its host, container or SLURM step allows at all (`allowed_cpus`).
    local_size: this job's ranks on this host.
    An affinity set as large as what is allowed was not narrowed for this rank (mpirun
    -bind-to none, horovodrun, srun without task binding, a container with several
    ranks): the host's ranks share it, so each takes its part. A smaller set is the
    share the launcher already gave this task (srun binding each task to its
    --cpus-per-task CPUs, taskset): it is used as it is, not divided again. Two ranks
    with default threads on 2 cores ran 3x slower than with one thread each (docs:
    ../shared/notes/stack.md), so a shared set is divided, never oversubscribed.
    """
    if affinity >= allowed:
        return max(1, affinity // max(1, local_size))
    return max(1, affinity)


def cpu_list_size(text: str) -> int:
    """The number of CPUs in a Linux CPU list: "0-3,8,10-11" is 7, "" is 0."""
    count = 0
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            count += int(high or low) - int(low) + 1
    return count


def allowed_cpus(cgroup_file: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process's cpuset cgroup allows (a container's cpuset, a SLURM step's
    under task/cgroup), or the host's when there is none to read."""
    try:
        with open(cgroup_file) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(","):  # cgroup v1
            candidates += [
                f"{root}/cpuset{path}/cpuset.effective_cpus",
                f"{root}/cpuset{path}/cpuset.cpus",
            ]
        elif controllers == "":  # cgroup v2
            candidates.append(f"{root}{path}/cpuset.cpus.effective")
    for name in candidates:
        try:
            with open(name) as f:
                count = cpu_list_size(f.read())
        except (OSError, ValueError):
            continue
        if count > 0:
            return count
    return os.cpu_count() or 1


def usable_cpus() -> int:
    """Cores this process may run on (respects cpusets from SLURM, taskset, containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_ranks(environ: Mapping[str, str]) -> int:
    """This job's ranks on this host, from the launcher's environment (1 if unknown),
    before MPI starts: mpirun and horovodrun set OMPI_COMM_WORLD_LOCAL_SIZE, horovodrun
    --gloo HOROVOD_LOCAL_SIZE; srun sets neither, but SLURM_STEP_TASKS_PER_NODE, the
    step's tasks per node compressed ("4(x2),3" is 4, 4, 3), indexed by SLURM_NODEID."""
    local = environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or environ.get("HOROVOD_LOCAL_SIZE")
    if local is None and "SLURM_STEP_TASKS_PER_NODE" in environ:
        per_node = []
        for group in environ["SLURM_STEP_TASKS_PER_NODE"].split(","):
            match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", group)
            if match is None:
                return 1
            per_node += [int(match[1])] * int(match[2] or 1)
        node = environ.get("SLURM_NODEID", "0")
        if node.isdigit() and int(node) < len(per_node):
            return per_node[int(node)]
    return int(local) if local and local.isdigit() else 1


def runtime_defaults(
    environ: Mapping[str, str], cpus_per_rank: int, expect_size: int | None = None
) -> dict[str, str]:
    """Horovod and Open MPI settings to use where the user has not set them.

    HOROVOD_CYCLE_TIME=0.01 (ms), in a world of more than one process: Horovod's
    background thread starts a coordination round at most this long after a tensor is
    ready (default 1 ms). A DQN update is ~1 ms, so the default cycle nearly doubled
    each update; measured on 2 cores. A process alone (by the launcher's variables or
    --expect-world-size; an elastic job that starts alone keeps it) has nothing to
    coordinate, and
    there the short cycle only wakes the thread every 10 us on the core the training
    needs: MinAtar's update took 6.1 instead of 3.0 ms on one core.
    OMPI_MCA_mpi_yield_when_idle=1 when a rank and its Horovod thread outnumber the
    CPUs it has (`cpus_per_rank`, from cpu_threads_per_rank): a rank waiting in MPI then
    yields the core instead of spinning on it while the other rank on that core still
    computes (3x faster here).
    """
    out: dict[str, str] = {}
    alone = (expected_world_size(environ, expect_size) or (1, ""))[0] == 1
    if "HOROVOD_CYCLE_TIME" not in environ and not alone:
        out["HOROVOD_CYCLE_TIME"] = "0.01"
    if "OMPI_MCA_mpi_yield_when_idle" not in environ and cpus_per_rank < 2:
        out["OMPI_MCA_mpi_yield_when_idle"] = "1"
    return out


def config_digest(text: str) -> str:
    """A short hash of a resolved config, compared across ranks."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Starting the world
# ---------------------------------------------------------------------------------------

_comm: Any = None  # the mpi4py communicator Horovod runs on, under the MPI controller


def init(comm: Any = None, expect_size: int | None = None, threads: int | None = None) -> World:
    """Start Horovod, pin this rank's device and threads, and check the world's size.

    comm: an mpi4py communicator to run Horovod on (default: COMM_WORLD under MPI).
    expect_size: the number of processes the user says were started.
    threads: intra-op threads per rank (default: the CPUs this rank has to itself, see
    cpu_threads_per_rank).
    Must run before TensorFlow creates any tensor (device and thread settings are fixed
    at TensorFlow's first use).
    """
    global _comm
    share = cpu_threads_per_rank(usable_cpus(), allowed_cpus(), local_ranks(os.environ))
    os.environ.update(runtime_defaults(os.environ, share, expect_size))  # read by hvd.init
    # Horovod: start the background thread that coordinates collectives. With an mpi4py
    # communicator, Horovod's world is that communicator (e.g. a split of COMM_WORLD).
    hvd.init(comm=comm)
    if hvd.mpi_enabled():
        controller = "mpi"
        from mpi4py import MPI

        _comm = comm if comm is not None else MPI.COMM_WORLD
    elif hvd.gloo_enabled():
        controller = "gloo"
    else:  # pragma: no cover - a Horovod built with neither cannot start
        controller = "none"
    if hvd.size() == 1 and expected_world_size(os.environ) is None:
        controller = "none"

    world = _world(controller, device=_pin_device_and_threads(threads))
    _check_size(world, expect_size)
    return world


def _pin_device_and_threads(threads: int | None) -> str:
    """This rank's TensorFlow device ("/GPU:0" or "/CPU:0") and intra-op threads."""
    # Horovod: one device per rank. Each rank sees only its GPU, with memory growth so
    # it takes what it needs rather than the whole card.
    gpus = tf.config.list_physical_devices("GPU")
    index = choose_gpu(len(gpus), hvd.local_rank())
    if index is not None:
        tf.config.set_visible_devices(gpus[index], "GPU")
        tf.config.experimental.set_memory_growth(gpus[index], True)
    # Horovod: ranks on one host share its cores; give each its share of threads (once:
    # a CPU set srun already narrowed to this task is its share).
    n = threads or cpu_threads_per_rank(usable_cpus(), allowed_cpus(), hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(1)  # small graphs: 1 is fastest
    return "/GPU:0" if index is not None else "/CPU:0"


def _world(controller: str, device: str) -> World:
    """This process's place in Horovod's world as it is now."""
    return World(
        rank=hvd.rank(),
        size=hvd.size(),
        local_rank=hvd.local_rank(),
        local_size=hvd.local_size(),
        controller=controller,
        device=device,
    )


def _check_size(world: World, expect_size: int | None) -> None:
    """WorldError unless the world is as large as the launcher and the user say."""
    launched = expected_world_size(os.environ)
    if launched is not None and launched[0] != world.size:
        # N processes that each think they are alone would train N separate copies.
        raise WorldError(
            f"{launched[1]} started {launched[0]} processes but Horovod sees a world of "
            f"{world.size}: Horovod and the launcher do not share an MPI/Gloo world "
            f"(check `hvd-dqn doctor`: was Horovod built with MPI for this launcher?)"
        )
    if expect_size is not None and expect_size != world.size:
        # The world is what the launcher started; the user expected another (exit 2).
        how = f"{launched[1]} started {world.size}" if launched else "no launcher started it"
        raise WorldError(
            f"--expect-world-size {expect_size}: this job is a world of {world.size} "
            f"process{'es' if world.size != 1 else ''} ({how}); start {expect_size} with "
            f"horovodrun -np {expect_size}, mpirun -np {expect_size} or srun -n {expect_size}",
            usage=True,
        )


def current_world(previous: World) -> World:
    """The world after an elastic reset: Horovod re-assigned ranks and sizes; the device
    and the controller stay."""
    return _world(previous.controller, previous.device)


class ElasticCommit(State):
    """Horovod Elastic: the shared part of a run (`variables`: weights, target, optimizer,
    update count; `read()`/`write()`: the counters) as of its last commit, in host memory.

    commit()  (Horovod) saves it, then checks whether the discovery script changed the
              hosts; if so every rank raises HostsUpdatedInterrupt at this same commit.
    restore() after a failed collective (a worker died): back to the last commit, the
              same on every survivor; the work since then is redone.
    sync()    after every reset and at the start: rank 0's state to every rank, so a
              worker that joins starts from the run's current weights and counters.
    """

    def __init__(
        self,
        variables: Sequence[tf.Variable],
        read: Callable[[], dict[str, Any]],
        write: Callable[[dict[str, Any]], None],
    ) -> None:
        self.variables, self.read, self.write = list(variables), read, write
        self.failures = 0  # restores so far: resets after a failure rather than a change
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)
        self.save()

    def save(self) -> None:
        self._saved = ([v.numpy() for v in self.variables], self.read())

    def restore(self) -> None:
        values, counters = self._saved
        for v, x in zip(self.variables, values, strict=True):
            v.assign(x)
        self.write(counters)
        self.failures += 1

    def sync(self) -> None:
        # Horovod: broadcast the variables, then the counters (pickled), from rank 0.
        broadcast_variables(self.variables)
        self.write(hvd.broadcast_object(self.read(), root_rank=0))
        self.save()


def run_elastic(fn: Callable[[ElasticCommit], T], commit: ElasticCommit) -> T:
    """Horovod Elastic: call fn(commit) until it returns. When a worker fails (a
    collective raises) or the hosts change (at a commit), Horovod shuts down and
    re-initializes with the workers there are now, restores the last commit after a
    failure, syncs from rank 0, and calls fn again.

    Any failed Horovod op counts as a lost worker here: hvd.elastic.run recognizes only
    errors naming HorovodAllreduce/Allgather/Broadcast and returns None for the rest,
    so a failed grouped allreduce ("HorovodGroupedAllreduce") would end the loop as if
    training were done (seen here with Horovod 0.28.1).
    """
    from horovod.common.exceptions import HorovodInternalError

    def guarded(state: ElasticCommit) -> T:
        try:
            return fn(state)
        except tf.errors.OpError as exc:
            if "Horovod" in (exc.message or ""):
                raise HorovodInternalError(exc) from exc
            raise

    return hvd.elastic.run(guarded)(commit)


def shutdown() -> None:
    """Horovod: stop the background thread (idempotent). It waits for the thread, which
    frees Horovod's MPI communicators (never MPI itself: mpi4py initialized it). After
    it, hvd.rank()/size() and Horovod's ops raise; World keeps rank and size."""
    if hvd.is_initialized():
        hvd.shutdown()


# ---------------------------------------------------------------------------------------
# Tensor collectives (usable inside tf.function)
# ---------------------------------------------------------------------------------------


def elastic() -> bool:
    """True in a Horovod Elastic job (horovodrun --min-np/--max-np/--host-discovery-script
    sets HOROVOD_ELASTIC=1 for its workers): the world may change while the run goes on."""
    return os.environ.get("HOROVOD_ELASTIC", "0") == "1"


def average_gradients(
    grads: Sequence[tf.Tensor], weight: tf.Tensor | None = None, fp16: bool = False
) -> list[tf.Tensor]:
    """The mean of each gradient over all ranks, g = (1/p) sum_r g_r.

    Horovod: one grouped ring-allreduce for the whole list, so all tensors go out in a
    single fused buffer and a single coordination round. fp16 halves the bytes on the
    wire (values are cast back to their dtype after the sum).

    Elastic: the weighted mean g = sum_r w_r g_r / max(sum_r w_r, 1), with `weight` w_r
    1 for a rank that contributes and 0 for one that joined and is still filling its
    replay: it takes part in the allreduce (no rank ever waits on another) but its zero
    gradient does not dilute the mean. The sum of the weights travels in the same
    allreduce, and nothing depends on the world size at trace time (no size-1 shortcut:
    a world of one may grow).
    """
    compression = hvd.Compression.fp16 if fp16 else hvd.Compression.none
    if elastic():
        w = tf.constant(1.0) if weight is None else tf.convert_to_tensor(weight)
        scaled = [g * tf.cast(w, g.dtype) for g in grads]
        *sums, total = hvd.grouped_allreduce(
            [*scaled, tf.reshape(w, [1])], op=hvd.Sum, compression=compression
        )
        count = tf.maximum(total[0], 1.0)
        return [x / tf.cast(count, x.dtype) for x in sums]
    if hvd.size() == 1:
        return list(grads)
    return list(hvd.grouped_allreduce(list(grads), op=hvd.Average, compression=compression))


def broadcast_variables(variables: Sequence[tf.Variable], root_rank: int = 0) -> None:
    """Give every rank rank 0's values of `variables` (weights and optimizer state).

    Horovod: broadcast each value eagerly and assign it. This works for plain
    tf.Variables on Keras 2 and Keras 3 alike (hvd.broadcast_variables breaks on Keras 3
    variables, horovod#4290), and it is never traced into a tf.function.
    """
    if hvd.size() == 1:
        return
    for i, v in enumerate(variables):
        v.assign(hvd.broadcast(tf.convert_to_tensor(v), root_rank, name=f"bcast_{i}"))


def allgather(value: np.ndarray) -> np.ndarray:
    """Concatenate each rank's array along axis 0 (all ranks get the result)."""
    if hvd.size() == 1:
        return np.asarray(value)
    # Horovod: allgather; rank r's rows land at its position in rank order.
    return np.asarray(hvd.allgather(tf.convert_to_tensor(value)))


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Each scalar averaged over ranks (one allreduce for the whole dict).

    A NaN on one rank stays NaN in the mean, which is what a NaN check wants.
    """
    keys = sorted(values)
    vec = np.array([values[k] for k in keys], dtype=np.float64)
    if hvd.size() > 1:
        # Horovod: allreduce-average of the packed vector.
        vec = hvd.allreduce(tf.constant(vec), op=hvd.Average).numpy()
    return dict(zip(keys, vec.tolist(), strict=True))


def max_over_ranks(value: float) -> float:
    """The largest of every rank's `value` (collective)."""
    if hvd.size() == 1:
        return value
    # Horovod: allreduce-max of one scalar.
    return float(hvd.allreduce(tf.constant(value, dtype=tf.float64), op=hvd.Max).numpy())


def any_rank(flag: bool) -> bool:
    """A collective yes/no: True on every rank if it is True on at least one."""
    return bool(vote([int(flag)])[0])


# ---------------------------------------------------------------------------------------
# Host-side (non-tensor) collectives: mpi4py under MPI, Horovod objects under Gloo
# ---------------------------------------------------------------------------------------


def allgather_object(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if hvd.size() == 1:
        return [obj]
    if _comm is not None:
        return list(_comm.allgather(obj))  # mpi4py: pickled allgather on Horovod's comm
    return list(hvd.allgather_object(obj))  # Horovod (Gloo): pickled allgather


def leave_together() -> None:
    """Every rank, after the run's last mpi4py collective (before it ends or raises the
    error every rank found): one Horovod op, which completes on no rank before every rank
    has left that collective. Without it, a rank could still be inside an mpi4py gather
    when a faster peer had left it and stopped Horovod; the peer's stop tore down this
    rank's Horovod thread and the communicators beside that call, and the rank died of
    SIGSEGV now and then. Horovod completes an op on every rank before it acts on a
    shutdown, so after this no rank is inside an MPI call while a Horovod thread stops.
    (Under Gloo every host-side collective is a Horovod op already.)"""
    if hvd.size() > 1 and _comm is not None:
        vote([0])


def check_same(what: str, value: str) -> None:
    """Raise WorldError on every rank unless all ranks hold the same `value`."""
    values = allgather_object(value)
    if len(set(values)) > 1:
        differing = [r for r, v in enumerate(values) if v != values[0]]
        leave_together()
        raise WorldError(f"ranks {differing} resolved a different {what} from rank 0")


def run_collectively(fn: Callable[[], T], what: str) -> T:
    """Run `fn` on every rank; if it fails on any rank, fail on all, naming the ranks.

    Without this, a rank that fails while the others wait in a collective leaves them
    hanging (or ends them with Horovod's shutdown traceback). Here every rank reaches
    the same gather and raises the same one-line WorldError; `usage` is True when every
    failure was a usage error (a config value, a file), so the exit code can say so.
    Rank-0-only actions (files, directories, checkpoints) run through this too, as
    `fn` that does nothing on the other ranks.
    """
    result: T | None = None
    error = None
    try:
        result = fn()
    except Exception as exc:  # reported below, on every rank
        usage = type(exc).__name__ in _USAGE_ERRORS
        error = (usage, str(exc) if usage else f"{type(exc).__name__}: {exc}")
        if os.environ.get("HVD_DQN_DEBUG"):
            traceback.print_exc()
    errors = allgather_object(error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        messages = {e[1] for _, e in failed}
        usage = all(e[0] for _, e in failed)
        if len(messages) == 1 and (len(failed) == len(errors) or usage):
            # Bad input names its field or file: said once, whichever ranks found it
            # (often rank 0 alone, for the files only it touches).
            line = messages.pop() if usage else f"{what}: {messages.pop()}"
        else:
            parts = "; ".join(f"rank {r}: {e[1]}" for r, e in failed)
            line = f"{what} failed on {len(failed)} of {len(errors)} ranks: {parts}"
        leave_together()
        raise WorldError(line, usage=usage)
    return result  # type: ignore[return-value]


def on_chief(fn: Callable[[], T], what: str, world: World) -> T | None:
    """`fn` on rank 0 alone (None on the other ranks), collectively: a failure there (a
    full disk, a bad directory) ends every rank with one line instead of leaving the
    others waiting (run_collectively)."""
    return run_collectively(lambda: fn() if world.is_chief else None, what)


# Exceptions that mean bad input (exit 2): by name, so this module needs no other import.
_USAGE_ERRORS = {"ConfigError", "CheckpointError"}


def vote(flags: Sequence[int]) -> list[int]:
    """The element-wise maximum of small integer flags over all ranks (collective).

    The training loop's one vote per iteration: every decision that stops, saves or
    changes the run (a signal, the wall-time limit, a non-finite loss and on which rank,
    an evaluation that reached the target) travels in this one call, so all ranks take
    the same branch at the same iteration.
    """
    if hvd.size() == 1:
        return list(flags)
    # Horovod's allreduce-max under every controller. Not mpi4py, although a lone
    # MPI_Allreduce takes ~15 us: called every iteration from this thread while Horovod's
    # background thread ran its own MPI collective every cycle (HOROVOD_CYCLE_TIME), the
    # two threads' waits spun against each other and the training for the cores. MinAtar
    # at 2 ranks on 2 cores: 4,110 env steps/s acting alone and 1,501 training through
    # mpi4py; 6,942 and 2,029 through Horovod (one process on one core: 8,793 and 1,902).
    local = tf.constant(np.asarray(flags, dtype=np.int64))
    return hvd.allreduce(local, op=hvd.Max).numpy().tolist()


# ---------------------------------------------------------------------------------------
# What Horovod was built with (for `hvd-dqn doctor`)
# ---------------------------------------------------------------------------------------


def build_info() -> dict[str, Any]:
    """Frameworks, controllers and tensor operations this Horovod was compiled with."""
    import horovod

    operations = [
        name
        for name, built in (
            ("NCCL", hvd.nccl_built()),
            ("DDL", hvd.ddl_built()),
            ("CCL", hvd.ccl_built()),
            ("MPI", hvd.mpi_built()),
            ("Gloo", hvd.gloo_built()),
        )
        if built
    ]
    return {
        "horovod": horovod.__version__,
        "frameworks": ["TensorFlow"],  # this module imported horovod.tensorflow
        "controllers": [n for n, b in (("MPI", hvd.mpi_built()), ("Gloo", hvd.gloo_built())) if b],
        "tensor_operations": operations,
        "cuda": bool(hvd.cuda_built()),
    }


def describe_rank(world: World) -> dict[str, Any]:
    """One line of facts about this rank, gathered by `doctor`."""
    return {
        "rank": world.rank,
        "size": world.size,
        "local_rank": world.local_rank,
        "host": socket.gethostname(),
        "device": world.device,
        "controller": world.controller,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
    }
