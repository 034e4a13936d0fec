"""The Horovod layer: pure decisions, then real 2-process worlds under MPI and Gloo."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import BIN, WORKERS, horovodrun, hvd_dqn, mpirun, quiet_env

from hvd_dqn.distributed import WorldError, choose_gpu, cpu_threads_per_rank, expected_world_size

# -- pure logic --------------------------------------------------------------------------


def test_choose_gpu_single_visible_gpu_is_used_by_any_local_rank() -> None:
    assert choose_gpu(1, local_rank=0) == 0
    assert choose_gpu(1, local_rank=3) == 0  # the launcher already gave each rank its own


def test_choose_gpu_several_visible_uses_local_rank() -> None:
    assert choose_gpu(4, local_rank=0) == 0
    assert choose_gpu(4, local_rank=3) == 3


def test_choose_gpu_none_visible_means_cpu() -> None:
    assert choose_gpu(0, local_rank=5) is None


def test_choose_gpu_too_few_gpus_is_a_clear_error() -> None:
    with pytest.raises(WorldError, match="local rank 2 has no GPU: 2 are visible"):
        choose_gpu(2, local_rank=2)


def test_cpu_threads_divide_a_shared_cpu_set_among_local_ranks() -> None:
    # (affinity, allowed, local ranks): the affinity set is all the host (or container,
    # or SLURM step) allows, so the host's ranks share it.
    assert cpu_threads_per_rank(2, 2, 2) == 1
    assert cpu_threads_per_rank(2, 2, 1) == 2
    assert cpu_threads_per_rank(64, 64, 8) == 8
    assert cpu_threads_per_rank(2, 2, 8) == 1  # never zero
    assert cpu_threads_per_rank(8, 8, 4) == 2  # a container's cpuset of 8 for 4 ranks


def test_cpu_threads_take_a_cpu_set_srun_gave_the_task_as_it_is() -> None:
    # `sbatch -N 2 --ntasks-per-node=4 --cpus-per-task=4` on 16-core nodes, srun binding
    # each task to its 4 CPUs: 4 threads per rank, not 4 / 4 local ranks = 1.
    assert cpu_threads_per_rank(4, 16, 4) == 4
    assert cpu_threads_per_rank(1, 64, 8) == 1
    assert cpu_threads_per_rank(6, 64, 1) == 6  # taskset -c 0-5


def test_allowed_cpus_reads_the_cpuset_cgroup(tmp_path: Path) -> None:
    from hvd_dqn.distributed import allowed_cpus, cpu_list_size

    assert cpu_list_size("0-3,8,10-11\n") == 7
    assert cpu_list_size("5") == 1
    assert cpu_list_size("") == 0
    v1 = tmp_path / "v1"
    (v1 / "cpuset" / "slurm" / "job_7").mkdir(parents=True)
    (v1 / "cpuset" / "slurm" / "job_7" / "cpuset.effective_cpus").write_text("0-7\n")
    (tmp_path / "cgroup-v1").write_text("9:memory:/slurm/job_7\n5:cpuset:/slurm/job_7\n")
    assert allowed_cpus(str(tmp_path / "cgroup-v1"), str(v1)) == 8
    v2 = tmp_path / "v2"
    (v2 / "docker" / "abc").mkdir(parents=True)
    (v2 / "docker" / "abc" / "cpuset.cpus.effective").write_text("2-3\n")
    (tmp_path / "cgroup-v2").write_text("0::/docker/abc\n")
    assert allowed_cpus(str(tmp_path / "cgroup-v2"), str(v2)) == 2
    # Nothing to read: the host's CPUs.
    assert allowed_cpus(str(tmp_path / "missing"), str(v2)) == os.cpu_count()


@pytest.mark.parametrize(
    ("environ", "flag", "expected"),
    [
        ({}, None, None),
        ({}, 4, 4),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, None, 2),
        ({"HOROVOD_SIZE": "3", "OMPI_COMM_WORLD_SIZE": "2"}, None, 3),
        ({"SLURM_STEP_NUM_TASKS": "8"}, None, 8),
        ({"PMI_SIZE": "6"}, None, 6),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, 5, 5),  # the flag wins
        ({"SLURM_NTASKS": "8"}, None, None),  # the batch script's allocation, not a launch
        ({"OMPI_COMM_WORLD_SIZE": "x"}, None, None),
    ],
)
def test_expected_world_size_from_launcher_variables(environ, flag, expected) -> None:
    found = expected_world_size(environ, flag)
    assert (found[0] if found else None) == expected


# -- real worlds -------------------------------------------------------------------------


def _results(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.distributed
@pytest.mark.compat
@pytest.mark.parametrize("gloo", [False, True], ids=["mpi", "gloo"])
def test_two_ranks_average_broadcast_and_stay_identical(tmp_path: Path, gloo: bool) -> None:
    proc = horovodrun(
        [sys.executable, str(WORKERS / "layer_worker.py"), str(tmp_path), "layer"], gloo=gloo
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _results(tmp_path)
    assert r0["size"] == r1["size"] == 2
    assert r0["controller"] == ("gloo" if gloo else "mpi")
    # The averaged gradient is the mean of the two ranks' gradients, on both ranks.
    assert r0["averaged"] == pytest.approx(r0["mean_of_ranks"])
    assert r0["averaged"] == r1["averaged"]
    assert r0["mean_of_ranks"][-1] == pytest.approx(6.0)  # (1 + 11) / 2
    # Weights and optimizer state differed, were broadcast, then stayed bit-identical.
    assert r0["differed_before"] and r1["differed_before"]
    assert r0["identical_after"] and r1["identical_after"]
    assert r0["optimizer_iterations"] == 6  # 1 local step (broadcast from rank 0) + 5
    assert r0["metric_mean"] == pytest.approx(0.5)
    assert r0["vote_any"] is True and r1["vote_any"] is True
    assert r0["vote_none"] is False and r1["vote_none"] is False
    assert (
        r0["check_same"] == r1["check_same"] == "ranks [1] resolved a different config from rank 0"
    )
    for r in (r0, r1):
        assert r["collective_error"] == "setup failed on 1 of 2 ranks: rank 1: ValueError: boom"
        # Bad input found by one rank (rank 0's file): its one line, said once, exit 2.
        assert r["usage_error"] == ["run directory R: in use by another job", True]


@pytest.mark.distributed
def test_the_elastic_mean_leaves_out_a_rank_of_weight_zero(tmp_path: Path) -> None:
    """sum_r w_r g_r / max(sum_r w_r, 1): a rank filling its replay does not dilute it."""
    proc = horovodrun(
        [sys.executable, str(WORKERS / "layer_worker.py"), str(tmp_path), "weighted"],
        gloo=True,
        env=quiet_env(HOROVOD_ELASTIC="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in _results(tmp_path):
        assert r["one_counts"] == [1.0, 2.0]  # rank 0's gradient alone
        assert r["both_count"] == [1.5, 3.0]  # the plain mean of (1, 2) and (2, 4)
        assert r["none_count"] == [0.0, 0.0]


@pytest.mark.distributed
def test_mismatched_shapes_raise_instead_of_hanging(tmp_path: Path) -> None:
    proc = mpirun(
        [sys.executable, str(WORKERS / "layer_worker.py"), str(tmp_path), "mismatch"], timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in _results(tmp_path):
        assert r["error"] is not None
        assert "shape" in r["error"].lower(), r["error"]


@pytest.mark.distributed
def test_doctor_reports_the_stack_and_both_ranks() -> None:
    proc = horovodrun([str(BIN / "hvd-dqn"), "doctor"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for word in ("tensorflow", "horovod", "TensorFlow", "MPI", "Gloo", "size 2"):
        assert word in out, out
    assert "rank 0 of 2" in out and "rank 1 of 2" in out


def test_doctor_single_process() -> None:
    proc = hvd_dqn(["doctor"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "controllers  MPI, Gloo" in proc.stdout
    assert "rank 0 of 1" in proc.stdout


def test_processes_that_each_think_they_are_alone_fail_loudly() -> None:
    # srun without an MPI plugin starts N singletons: each sees a world of 1.
    proc = hvd_dqn(["doctor"], env=quiet_env(SLURM_STEP_NUM_TASKS="2"))
    assert proc.returncode == 1
    assert "srun (SLURM_STEP_NUM_TASKS=2) started 2 processes but Horovod sees a world of 1" in (
        proc.stderr
    )
    # A world of one that was expected to be 4: what was started, what was expected.
    proc = hvd_dqn(["doctor", "--expect-world-size", "4"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert (
        "--expect-world-size 4: this job is a world of 1 process (no launcher started it)"
        in proc.stderr
    )


def test_runtime_defaults_respect_the_user_and_the_cores() -> None:
    from hvd_dqn.distributed import runtime_defaults

    two_ranks = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    # One CPU per rank: the rank and its Horovod thread share it.
    assert runtime_defaults(two_ranks, cpus_per_rank=1) == {
        "HOROVOD_CYCLE_TIME": "0.01",
        "OMPI_MCA_mpi_yield_when_idle": "1",
    }
    assert runtime_defaults(two_ranks, cpus_per_rank=4) == {"HOROVOD_CYCLE_TIME": "0.01"}
    user = {**two_ranks, "HOROVOD_CYCLE_TIME": "5", "OMPI_MCA_mpi_yield_when_idle": "0"}
    assert runtime_defaults(user, cpus_per_rank=1) == {}
    # A process alone (no launcher, or a world of one): Horovod's thread has nothing to
    # coordinate and keeps its default cycle instead of waking every 10 us.
    assert runtime_defaults({}, cpus_per_rank=1) == {"OMPI_MCA_mpi_yield_when_idle": "1"}
    assert runtime_defaults({"OMPI_COMM_WORLD_SIZE": "1"}, cpus_per_rank=4) == {}


def test_the_ranks_on_this_host_are_read_from_every_launcher() -> None:
    from hvd_dqn.distributed import local_ranks

    assert local_ranks({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == 4  # mpirun, horovodrun
    assert local_ranks({"HOROVOD_LOCAL_SIZE": "3"}) == 3  # horovodrun --gloo
    # srun (PMIx direct launch sets no OMPI_* variable): SLURM's compressed list of
    # tasks per node of the step, indexed by this node's number.
    slurm = {"SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NODEID": "0"}
    assert local_ranks(slurm) == 2
    uneven = {"SLURM_STEP_TASKS_PER_NODE": "4(x2),3,1(x2)"}
    assert [local_ranks({**uneven, "SLURM_NODEID": str(n)}) for n in range(5)] == [4, 4, 3, 1, 1]
    assert local_ranks({}) == 1
    assert local_ranks({"SLURM_STEP_TASKS_PER_NODE": "garbage", "SLURM_NODEID": "0"}) == 1
