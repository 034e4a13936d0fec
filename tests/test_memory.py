"""memory.memory_limit: the smallest of the host's, the cgroup's and SLURM's memory.

The cgroup and /proc files are read from a directory tree laid out like /proc and
/sys/fs/cgroup (test data: the files are the kernel's formats, written by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, quiet_env

from hvd_dqn.memory import memory_limit

GiB = 1 << 30
V1_UNLIMITED = "9223372036854771712"  # what v1 says in memory.limit_in_bytes


def _tree(tmp: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """proc/ and cgroup/ roots under `tmp` holding `files` ({"proc/meminfo": text})."""
    for name, text in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp / "proc", tmp / "cgroup"


MEMINFO = {"proc/meminfo": "MemTotal: 16000000 kB\nMemFree: 1000 kB\nMemAvailable: 8388608 kB\n"}
V2_JOB = {
    "proc/self/cgroup": "0::/job_1/step_0\n",
    "cgroup/job_1/memory.max": f"{2 * GiB}\n",
    "cgroup/job_1/memory.current": f"{GiB}\n",
    "cgroup/job_1/memory.stat": f"anon 1000\nfile 2000\ninactive_file {GiB // 2}\n",
    "cgroup/job_1/step_0/memory.max": "max\n",
    "cgroup/job_1/step_0/memory.current": f"{GiB // 4}\n",
}


@pytest.mark.parametrize(
    ("files", "environ", "expected"),
    [
        pytest.param(
            {**MEMINFO, "proc/self/cgroup": "0::/\n"},
            {},
            (8 * GiB, "this host has available (MemAvailable)"),
            id="host",
        ),
        pytest.param(  # 2 GiB limit at the job's level, 1 GiB used of which 0.5 is cache
            {**MEMINFO, **V2_JOB},
            {},
            (
                int(1.5 * GiB),
                "the cgroup limit leaves free (memory.max - memory.current in {cgroup}/job_1)",
            ),
            id="cgroup-v2-ancestor",
        ),
        pytest.param(  # the step's own limit is tighter than the job's
            {**MEMINFO, **V2_JOB, "cgroup/job_1/step_0/memory.max": f"{GiB}\n"},
            {},
            (
                int(0.75 * GiB),
                "the cgroup limit leaves free (memory.max - memory.current in "
                "{cgroup}/job_1/step_0)",
            ),
            id="cgroup-v2-own",
        ),
        pytest.param(  # hybrid host (v1 memory controller, v2 without one), as here
            {
                **MEMINFO,
                "proc/self/cgroup": "4:memory:/process_api/abc\n3:cpuset:/\n0::/\n",
                "cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
                "cgroup/memory/process_api/abc/memory.limit_in_bytes": f"{3 * GiB}\n",
                "cgroup/memory/process_api/abc/memory.usage_in_bytes": f"{GiB}\n",
                "cgroup/memory/process_api/abc/memory.stat": f"cache 5\ntotal_inactive_file {GiB}\n",
                "cgroup/unified/cgroup.procs": "",
            },
            {},
            (
                3 * GiB,
                "the cgroup limit leaves free (memory.limit_in_bytes - memory.usage_in_bytes "
                "in {cgroup}/memory/process_api/abc)",
            ),
            id="cgroup-v1",
        ),
        pytest.param(  # no limit anywhere in the cgroup: the host's
            {
                **MEMINFO,
                "proc/self/cgroup": "9:cpu,memory:/a\n",
                "cgroup/memory/a/memory.limit_in_bytes": V1_UNLIMITED,
                "cgroup/memory/a/memory.usage_in_bytes": f"{GiB}\n",
            },
            {},
            (8 * GiB, "this host has available (MemAvailable)"),
            id="cgroup-v1-unlimited",
        ),
        pytest.param(  # a container: its cgroup is the root of its mount
            {
                **MEMINFO,
                "proc/self/cgroup": "0::/machine.slice/libpod-1234.scope\n",
                "cgroup/memory.max": f"{GiB}\n",
                "cgroup/memory.current": "0\n",
            },
            {},
            (GiB, "the cgroup limit leaves free (memory.max - memory.current in {cgroup})"),
            id="container",
        ),
        pytest.param(
            {**MEMINFO, **V2_JOB},
            {"SLURM_MEM_PER_NODE": "1024"},
            (GiB, "SLURM gives this job on this node (SLURM_MEM_PER_NODE=1024)"),
            id="slurm-mem",
        ),
        pytest.param(
            MEMINFO,
            {"SLURM_MEM_PER_CPU": "1536", "SLURM_CPUS_ON_NODE": "2"},
            (
                3 * GiB,
                "SLURM gives this job on this node (SLURM_MEM_PER_CPU=1536 x SLURM_CPUS_ON_NODE=2)",
            ),
            id="slurm-mem-per-cpu",
        ),
        pytest.param(  # --mem=0: the whole node
            MEMINFO,
            {"SLURM_MEM_PER_NODE": "0"},
            (8 * GiB, "this host has available (MemAvailable)"),
            id="slurm-whole-node",
        ),
        pytest.param({}, {}, (0, ""), id="nothing-known"),
    ],
)
def test_the_smallest_limit_counts_and_is_named(
    tmp_path: Path, files: dict[str, str], environ: dict[str, str], expected: tuple[int, str]
) -> None:
    proc, cgroup = _tree(tmp_path, files)
    size, source = memory_limit(environ, proc=proc, cgroup=cgroup)
    assert (size, source) == (expected[0], expected[1].format(cgroup=cgroup))


def test_this_machines_limit() -> None:
    # The real files of this machine, in a process of its own with SLURM's variable set.
    code = "from hvd_dqn.memory import memory_limit; print(*memory_limit(), sep='|')"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    size, source = run.stdout.strip().split("|")
    assert int(size) > 0 and source, run.stdout
    env = quiet_env(SLURM_MEM_PER_NODE="1")  # 1 MB: smaller than anything else here
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    assert (
        run.stdout.strip() == f"{1 << 20}|SLURM gives this job on this node (SLURM_MEM_PER_NODE=1)"
    )
