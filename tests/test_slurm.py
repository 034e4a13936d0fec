"""slurm/train.sbatch on a real SLURM: a one-node cluster (munged, slurmctld, slurmd from
Debian's slurm-wlm) started in a temporary directory for these tests and stopped by
process id after them. A 2-task job that is preempted (SIGUSR1 to its batch shell, as
`#SBATCH --signal=B:USR1@N` sends, or requeued) checkpoints, requeues itself and
completes from that checkpoint; a 1-task job takes the shape of its command line; a suspended job resumes and completes; a killed rank ends the job
FAILED with the run resumable. A second SLURM of two nodes (each node a network namespace
with its own host name and slurmd, joined to slurmctld by a bridge) runs a job of one
rank per node across them and requeues it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, ROOT, checkpoints, ip, logged_steps, quiet_env, rank_pids, veth_bytes

pytestmark = [pytest.mark.distributed, pytest.mark.slurm, pytest.mark.cluster]

# What both test clusters run with: plugins, scheduling every 2 s, requeue, no accounting.
COMMON = """\
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobRequeue=1
SchedulerParameters=sched_interval=2,bf_interval=1
ReturnToService=2
KillWait=30
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
"""
CONF = """\
ClusterName=hvdtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10,socket={munge}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
TmpFS={dir}/tmp
SlurmctldPort=16817
SlurmdPort=16818
{common}NodeName={host} CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory={mem}
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM by process id, newest first: only what these tests started."""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _munged() -> Iterator[Path]:
    """A munged of these tests' own on a socket of its own (not the system's
    /run/munge, which may be stale or absent); yields the socket once it answers, so
    slurmd never registers before munge can sign its messages. The socket's directory
    must be reachable by every user (munged checks), so it is under /run, not the
    private pytest temporary directory."""
    d = Path(tempfile.mkdtemp(prefix="hvdt-munge-", dir="/run"))
    d.chmod(0o755)
    shutil.chown(d, "munge")
    sock = d / "munge.socket"
    cmd = [
        "runuser", "-u", "munge", "--", "munged", "--foreground", f"--socket={sock}",
        f"--pid-file={d / 'munged.pid'}", f"--seed-file={d / 'seed'}", f"--log-file={d / 'log'}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True).returncode:
            assert proc.poll() is None, f"munged ended: {proc.communicate()[0]}"
            assert time.monotonic() < deadline, "munged never answered"
            time.sleep(0.1)
        yield sock
    finally:
        _stop([proc])
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running one-node SLURM; yields the environment its clients need."""
    if not shutil.which("slurmctld") or not shutil.which("munged") or os.geteuid() != 0:
        pytest.skip("needs root and Debian's slurm-wlm and munge (make test installs them)")
    d = tmp_path_factory.mktemp("slurm")
    # TmpFS in the test's own directory: PMIx makes spmix_appdir_<uid>_<job>.<step> there,
    # and job ids start at 1 in every new SLURM, so a directory left in /tmp by an earlier
    # (killed) run failed this run's step launch ("File exists").
    for sub in ("state", "spool", "tmp"):
        (d / sub).mkdir()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 9 // 10
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    env = dict(quiet_env(), SLURM_CONF=str(conf))
    procs: list[subprocess.Popen] = []
    with _munged() as munge:
        conf.write_text(CONF.format(host=host, dir=d, mem=mem, munge=munge, common=COMMON))
        try:
            procs.append(subprocess.Popen(["slurmctld", "-D", "-f", str(conf)], env=env))
            procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], env=env))
            deadline = time.monotonic() + 60
            while (
                "idle"
                not in subprocess.run(
                    ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env
                ).stdout
            ):
                assert time.monotonic() < deadline, (d / "slurmctld.log").read_text()[-2000:]
                time.sleep(0.5)
            yield env
        finally:
            _stop(procs)


def _sbatch(
    env: dict[str, str], run: Path, log: Path, *args: str, options: tuple[str, ...] = ()
) -> str:
    """Submit slurm/train.sbatch from the run's parent directory, as a user outside the
    checkout would: the script finds the checkout's .venv itself. `options` are sbatch's,
    `args` hvd-dqn train's."""
    export = f"ALL,RUN_DIR={run}"
    if BIN.parent != ROOT / ".venv":  # another venv than the checkout's (compat stack)
        export += f",VENV={BIN.parent}"
    cmd = [
        "sbatch",
        "--parsable",
        f"--output={log}",
        f"--export={export}",
        *options,
        str(ROOT / "slurm" / "train.sbatch"),
        "--no-progress",
        "--set=run.stop_at_return=none",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=run.parent)
    return out.stdout.strip().split(";")[0]


def _job(env: dict[str, str], job: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", job], capture_output=True, text=True, env=env
    ).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _wait_state(env: dict[str, str], job: str, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (state := _job(env, job).get("JobState", "")) not in states:
        assert time.monotonic() < deadline, f"job {job} still {state}"
        time.sleep(0.5)
    return state


def _wait_logged(run: Path, log: Path, timeout: float = 300) -> None:
    """Until the job's run has logged its first training row (the job's log on failure)."""
    deadline = time.monotonic() + timeout
    while not logged_steps(run):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.2)


def test_the_command_line_shape_overrides_the_scripts(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    """`sbatch -N 1 --ntasks-per-node=1` gets the world it asks for, one rank: the
    script's defaults are --nodes and --ntasks-per-node, which the command line replaces
    (an `#SBATCH --ntasks=2` took precedence over them, and this job was refused)."""
    run, log = tmp_path / "run", tmp_path / "job.log"
    job = _sbatch(
        slurm, run, log, "--total-steps=1000", "--set=run.eval_episodes=2",
        options=("-N", "1", "--ntasks-per-node=1"),
    )  # fmt: skip
    assert _wait_state(slurm, job, {"COMPLETED", "FAILED"}, 300) == "COMPLETED", log.read_text()
    assert _job(slurm, job)["NumTasks"] == "1"
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1


PREEMPTIONS = {
    # What `#SBATCH --signal=B:USR1@120` sends before the time limit; the script
    # forwards it to the ranks and requeues the job itself.
    "USR1": (["scancel", "--signal=USR1", "--batch"], "stopped by SIGUSR1"),
    # An administrator's (or a preempting job's) requeue: SIGTERM to every process.
    "requeue": (["scontrol", "requeue"], "stopped by SIGTERM"),
}


@pytest.mark.parametrize("how", sorted(PREEMPTIONS))
def test_a_preempted_job_checkpoints_requeues_and_finishes(
    slurm: dict[str, str], tmp_path: Path, how: str
) -> None:
    command, said = PREEMPTIONS[how]
    run, log = tmp_path / "run", tmp_path / "job.log"
    total = 12000
    job = _sbatch(slurm, run, log, f"--total-steps={total}", "--set=run.checkpoint_every=0")
    _wait_logged(run, log)
    subprocess.run([*command, job], env=slurm, check=True)
    _wait_state(slurm, job, {"PENDING"}, 60)
    (stopped,) = checkpoints(run)  # checkpoint_every=0: the one written on the signal
    # Nothing the first attempt logged is redone: the checkpoint is at or after it.
    assert stopped >= logged_steps(run)[-1]
    # A requeued job starts again once its old credential expired: cred_expire=10 here
    # (SLURM's default is 120 s; starting it earlier fails with "credential revoked").
    assert _wait_state(slurm, job, {"COMPLETED", "FAILED"}, 400) == "COMPLETED", log.read_text()
    text = log.read_text()
    assert "attempt 1" in text and "attempt 2" in text  # both attempts, one log
    assert said in text and f"continuing {run} from env step {stopped}" in text
    # The script's default shape, one world of 2 ranks, trained to the end and exported.
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["world_size"], summary["env_steps"]) == (2, total)
    assert (run / "model" / "saved_model.pb").exists()
    for kind in ("train", "eval"):  # every row once: no env step was trained twice
        steps = logged_steps(run, kind)
        assert steps == sorted(steps) and len(steps) == len(set(steps)), kind
    assert _job(slurm, job)["Restarts"] == "1"


def test_a_suspended_job_resumes_and_completes(slurm: dict[str, str], tmp_path: Path) -> None:
    """`scontrol suspend` (SIGSTOP to every task) for longer than the stall timeout,
    then `scontrol resume`: the job goes on where it was and completes, not requeued."""
    run, log = tmp_path / "run", tmp_path / "job.log"
    total = 12000
    job = _sbatch(slurm, run, log, f"--total-steps={total}", "--set=run.stall_timeout=20")
    _wait_logged(run, log)
    subprocess.run(["scontrol", "suspend", job], env=slurm, check=True)
    assert _wait_state(slurm, job, {"SUSPENDED"}, 10) == "SUSPENDED"
    before = logged_steps(run)
    time.sleep(25)
    assert logged_steps(run) == before  # really stopped
    subprocess.run(["scontrol", "resume", job], env=slurm, check=True)
    assert _wait_state(slurm, job, {"COMPLETED", "FAILED"}, 300) == "COMPLETED", log.read_text()
    assert json.loads((run / "summary.json").read_text())["env_steps"] == total
    assert "attempt 2" not in log.read_text() and _job(slurm, job)["Restarts"] == "0"


def test_a_killed_rank_fails_the_job_within_seconds_and_leaves_it_resumable(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    run, log = tmp_path / "run", tmp_path / "job.log"
    job = _sbatch(slurm, run, log, "--total-steps=400000", "--set=run.checkpoint_every=1000")
    deadline = time.monotonic() + 120
    while not checkpoints(run) or len(rank_pids(run)) < 2:
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.2)
    t0 = time.monotonic()
    os.kill(rank_pids(run)[1], signal.SIGKILL)
    while rank_pids(run):
        assert time.monotonic() - t0 < 20, "ranks still running 20 s after one died"
        time.sleep(0.05)
    gone = time.monotonic() - t0
    assert _wait_state(slurm, job, {"FAILED", "COMPLETED"}, 60) == "FAILED"
    assert gone < 10
    assert checkpoints(run) and not (run / "summary.json").exists()


def test_the_elastic_discovery_script_lists_the_jobs_nodes(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    """slurm/discover-hosts.sh inside a real job: its node with the tasks per node."""
    out = tmp_path / "hosts.txt"
    script = f"#!/bin/bash\nbash {ROOT / 'slurm' / 'discover-hosts.sh'} > {out}\n"
    (tmp_path / "job.sh").write_text(script)
    subprocess.run(
        ["sbatch", "--wait", "--ntasks-per-node=2", f"--output={tmp_path / 'log'}",
         str(tmp_path / "job.sh")],
        env=slurm, check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.read_text() == f"{socket.gethostname().split('.')[0]}:2\n"


NODES = {"nodea": "10.78.0.2", "nodeb": "10.78.0.3"}
CONTROLLER = "10.78.0.1"
CONF2 = """\
ClusterName=hvdtest2
SlurmctldHost={host}({controller})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10,socket={munge}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/log/slurmd-%n.log
TmpFS={dir}/tmp/%n
SlurmctldPort=16827
SlurmdPort=16828
{common}{nodes}
PartitionName=two Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running SLURM of two nodes on this machine: each node a network namespace
    joined by a veth pair to a bridge in this namespace (where slurmctld runs), with its
    own host name (a UTS namespace), slurmd, spool and TmpFS (PMIx's files of the two
    nodes would collide in one /tmp). slurmd starts through nsenter, not `ip netns
    exec`, whose new mount namespace hides /sys/fs/cgroup from it. Yields the
    environment of the clients, plus NS_<node> naming each node's namespace. Stops the
    daemons by process id and removes the namespaces, the bridge and the directory."""
    if not all(map(shutil.which, ("slurmctld", "munged", "ip"))) or os.geteuid() != 0:
        pytest.skip("needs root, iproute2, munge and slurm-wlm (make test installs them)")
    d = tmp_path_factory.mktemp("slurm2")
    for sub in ("state", "run", "log"):
        (d / sub).mkdir()
    tag = f"hvds{os.getpid()}"
    ns = {node: f"{tag}{node[-1]}" for node in NODES}
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 4 // 10
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    env = dict(quiet_env(), SLURM_CONF=str(conf))
    procs: list[subprocess.Popen] = []
    try:
        # Bridged frames skip iptables (a host's FORWARD policy, e.g. Docker's DROP).
        ip("link", "add", f"{tag}br", "type", "bridge", "nf_call_iptables", "0")
        ip("addr", "add", f"{CONTROLLER}/24", "dev", f"{tag}br")
        ip("link", "set", f"{tag}br", "up")
        for i, (node, address) in enumerate(NODES.items()):
            ip("netns", "add", ns[node])
            ip("link", "add", f"{tag}v{i}", "type", "veth", "peer", "name", f"{tag}p{i}")
            ip("link", "set", f"{tag}v{i}", "master", f"{tag}br", "up")
            ip("link", "set", f"{tag}p{i}", "netns", ns[node])
            ip("-n", ns[node], "link", "set", f"{tag}p{i}", "name", "veth0")
            ip("-n", ns[node], "addr", "add", f"{address}/24", "dev", "veth0")
            ip("-n", ns[node], "link", "set", "veth0", "up")
            ip("-n", ns[node], "link", "set", "lo", "up")
            (d / "spool" / node).mkdir(parents=True)
            (d / "tmp" / node).mkdir(parents=True)
        nodes = "\n".join(
            f"NodeName={node} NodeAddr={address} NodeHostname={node} CPUs=2 Boards=1 "
            f"SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory={mem}"
            for node, address in NODES.items()
        )
        with _munged() as munge:
            conf.write_text(
                CONF2.format(
                    host=host, controller=CONTROLLER, munge=munge, dir=d, nodes=nodes, common=COMMON,
                    names=",".join(NODES),
                )
            )  # fmt: skip
            try:
                procs.append(subprocess.Popen(["slurmctld", "-D", "-f", str(conf)], env=env))
                for node in NODES:
                    cmd = [
                        "nsenter", f"--net=/run/netns/{ns[node]}", "unshare", "--uts", "bash",
                        "-c", f'hostname {node} && exec slurmd -D -N {node} -f "$0"', str(conf),
                    ]  # fmt: skip
                    procs.append(subprocess.Popen(cmd, env=env))
                deadline = time.monotonic() + 60
                while subprocess.run(
                    ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env
                ).stdout.split() != ["idle"]:
                    assert all(p.poll() is None for p in procs), "a SLURM daemon ended"
                    assert time.monotonic() < deadline, (d / "slurmctld.log").read_text()[-2000:]
                    time.sleep(0.5)
                yield dict(env, **{f"NS_{node}": ns[node] for node in NODES})
            finally:
                _stop(procs)  # while munged still runs
    finally:
        for i, n in enumerate(ns.values()):
            # What still runs on the node (a failed test's job steps): SIGKILL by pid.
            pids = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{tag}v{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{tag}br"], capture_output=True)


def test_a_two_node_job_trains_across_the_nodes_and_finishes_after_a_requeue(
    slurm2: dict[str, str], tmp_path: Path
) -> None:
    """`sbatch -N 2 --ntasks-per-node=1 slurm/train.sbatch`: one rank on each node, a
    world of 2 whose allreduces cross the veth pairs; `scontrol requeue` stops it with a
    checkpoint and the requeued job finishes COMPLETED from it."""
    run, log = tmp_path / "run", tmp_path / "job.log"
    total = 6000
    before = veth_bytes(slurm2["NS_nodeb"])
    job = _sbatch(
        slurm2, run, log, f"--total-steps={total}", "--set=run.checkpoint_every=0",
        "--set=run.eval_episodes=2", options=("-N", "2", "--ntasks-per-node=1"),
    )  # fmt: skip
    _wait_logged(run, log)
    assert _job(slurm2, job)["NumNodes"] == "2"
    subprocess.run(["scontrol", "requeue", job], env=slurm2, check=True)
    _wait_state(slurm2, job, {"PENDING"}, 60)
    (stopped,) = checkpoints(run)
    assert _wait_state(slurm2, job, {"COMPLETED", "FAILED"}, 400) == "COMPLETED", log.read_text()
    crossed = veth_bytes(slurm2["NS_nodeb"]) - before
    text = log.read_text()
    assert text.count("2 rank(s) on 2 host(s) (nodea, nodeb)") == 2, text[-3000:]
    assert f"continuing {run} from env step {stopped}" in text
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["world_size"], summary["env_steps"]) == (2, total)
    parts = run / "checkpoints" / f"ckpt-{total:012d}"
    assert sorted(p.name for p in parts.glob("rank-*.npz")) == ["rank-0.npz", "rank-1.npz"]
    # Every update allreduces the MLP's 35k float32 parameters (140 kB; a ring of 2 moves
    # half each way): that traffic went through nodeb's veth.
    print(f"{crossed} bytes through nodeb's veth for {summary['updates']} updates")
    assert crossed > summary["updates"] * 35_000
