"""How much memory this job may still use on this host, and who says so.

Three limits can end a job that allocates too much, and the smallest one counts:
- the host: MemAvailable in /proc/meminfo (what the kernel can hand out without
  swapping);
- the job's cgroup (a container's `--memory`, SLURM's task/cgroup plugin, systemd): its
  limit minus its working set, at its own level and at every ancestor's (the tightest
  wins). cgroup v2: memory.max - (memory.current - inactive_file); v1:
  memory.limit_in_bytes - (memory.usage_in_bytes - total_inactive_file). Inactive file
  cache is subtracted from the usage because the kernel reclaims it before it kills
  anything (the "working set" that container runtimes report). "max" and v1's
  unlimited value (about 2**63) mean no limit;
- SLURM's memory for the job on this node: SLURM_MEM_PER_NODE (MB), or
  SLURM_MEM_PER_CPU x SLURM_CPUS_ON_NODE (--mem / --mem-per-cpu); 0 means the whole
  node. Where SLURM enforces it by a cgroup, the cgroup's figure (which also counts what
  the job already uses) is usually the smaller one.

The files are read under `proc` and `cgroup` roots that a test can point at a directory
tree laid out like /proc and /sys/fs/cgroup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

UNLIMITED = 1 << 60  # cgroup v1 says "no limit" with 2**63 rounded down to a page


def memory_limit(
    environ: Mapping[str, str] | None = None,
    proc: Path = Path("/proc"),
    cgroup: Path = Path("/sys/fs/cgroup"),
) -> tuple[int, str]:
    """(bytes this job may still use on this host, which limit that is), the smallest of
    the host's, the cgroup's and SLURM's; (0, "") when none is known.

    The source completes "the N GiB ...", e.g. "the cgroup limit leaves free
    (memory.max - memory.current in /sys/fs/cgroup/job_1)".
    """
    found = [
        limit
        for limit in (
            _host(proc),
            _cgroup(proc, cgroup),
            _slurm(os.environ if environ is None else environ),
        )
        if limit is not None and limit[0] > 0
    ]
    return min(found, key=lambda limit: limit[0]) if found else (0, "")


def _host(proc: Path) -> tuple[int, str] | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "this host has available (MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _number(path: Path) -> int | None:
    """A cgroup file's number, None for "max", unlimited, missing or unreadable."""
    try:
        text = path.read_text().strip()
        value = int(text)
    except (OSError, ValueError):
        return None
    return value if value < UNLIMITED else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup(proc: Path, root: Path) -> tuple[int, str] | None:
    """The tightest headroom over this process's memory cgroup and its ancestors."""
    try:
        lines = (proc / "self/cgroup").read_text().splitlines()
    except OSError:
        return None
    entries = [line.split(":", 2) for line in lines if line.count(":") >= 2]
    v1 = [e for e in entries if "memory" in e[1].split(",")]
    v2 = [e for e in entries if e[0] == "0" and e[1] == ""]
    if v1:  # a memory controller on v1 (also on hybrid hosts, where v2 has none)
        base, own = root / "memory", v1[0][2]
        files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    elif v2:
        base, own = root, v2[0][2]
        files = ("memory.max", "memory.current", "inactive_file")
    else:
        return None
    here = base / own.strip("/")
    if not here.is_dir():  # a container sees its own cgroup as the root of the mount
        here = base
    best: tuple[int, str] | None = None
    level = here
    while True:
        limit = _number(level / files[0])
        if limit is not None:
            usage = _number(level / files[1]) or 0
            working = max(0, usage - _stat(level / "memory.stat", files[2]))
            free = max(0, limit - working)
            if best is None or free < best[0]:
                best = (
                    free,
                    f"the cgroup limit leaves free ({files[0]} - {files[1]} in {level})",
                )
        if level == base or base not in level.parents:
            break
        level = level.parent
    return best


def _slurm(environ: Mapping[str, str]) -> tuple[int, str] | None:
    per_node = environ.get("SLURM_MEM_PER_NODE", "").strip()
    if per_node.isdigit() and int(per_node) > 0:
        return int(
            per_node
        ) << 20, f"SLURM gives this job on this node (SLURM_MEM_PER_NODE={per_node})"
    per_cpu = environ.get("SLURM_MEM_PER_CPU", "").strip()
    cpus = environ.get("SLURM_CPUS_ON_NODE", "").strip()
    if per_cpu.isdigit() and cpus.isdigit() and int(per_cpu) * int(cpus) > 0:
        return int(per_cpu) * int(cpus) << 20, (
            f"SLURM gives this job on this node (SLURM_MEM_PER_CPU={per_cpu} x "
            f"SLURM_CPUS_ON_NODE={cpus})"
        )
    return None
