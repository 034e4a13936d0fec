"""Two hosts on this machine: network namespaces joined by a veth pair, each with its own
host name (a UTS namespace), its own /etc/hosts (`ip netns exec` mounts /etc/netns/NS/)
and a real sshd. `horovodrun -H a:1,b:1` trains across them over TCP, and the AWS Batch
multi-node entrypoint runs on them as Batch runs it (main node and child node). The
tests remove the namespaces, the /etc/netns entries and the ssh servers they made."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BIN, ROOT, checkpoints, ip, logged_steps, quiet_env, veth_bytes

pytestmark = [pytest.mark.distributed, pytest.mark.hosts, pytest.mark.cluster]

NAMES = ("hvd-a", "hvd-b")
ADDRESSES = ("10.231.0.1", "10.231.0.2")
SSHD = """\
ListenAddress {address}
Port 22
HostKey {dir}/host_key
PidFile {dir}/sshd-{name}.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
UsePAM no
"""
SSH = """\
Host *
  IdentityFile {dir}/id_ed25519
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  BatchMode yes
"""


@dataclass
class Hosts:
    """Two hosts: namespaces `ns`, host names NAMES, addresses ADDRESSES, ssh set up in
    `dir` (a client config on PATH as `ssh`, one sshd config per host)."""

    ns: tuple[str, str]
    dir: Path
    env: dict[str, str]

    def popen(self, host: int, cmd: list[str], **env: str) -> subprocess.Popen[str]:
        """Run `cmd` on host 0 or 1: in its network namespace, under its host name."""
        wrapped = [
            "ip", "netns", "exec", self.ns[host], "unshare", "--uts", "sh", "-c",
            f'hostname {NAMES[host]} && exec "$@"', "sh", *cmd,
        ]  # fmt: skip
        return subprocess.Popen(
            wrapped,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(self.env, **env),
            cwd=ROOT,
            start_new_session=True,
        )

    def sshd_config(self, host: int) -> Path:
        return self.dir / f"sshd-{NAMES[host]}.conf"

    def veth_bytes(self, host: int) -> int:
        """Bytes received plus sent on the host's end of the veth pair."""
        return veth_bytes(self.ns[host])


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if os.geteuid() != 0 or not shutil.which("sshd") or not shutil.which("ip"):
        pytest.skip("needs root, iproute2 and openssh-server (make test installs them)")
    d = tmp_path_factory.mktemp("hosts")
    tag = f"hvdt{os.getpid()}"
    ns = (f"{tag}a", f"{tag}b")
    etc = [Path("/etc/netns") / n for n in ns]
    made_etc = not Path("/etc/netns").exists()
    try:
        for n in ns:
            ip("netns", "add", n)
        ip("link", "add", f"{tag}x", "type", "veth", "peer", "name", f"{tag}y")
        for n, end, address in zip(ns, ("x", "y"), ADDRESSES, strict=True):
            ip("link", "set", f"{tag}{end}", "netns", n)
            ip("-n", n, "link", "set", f"{tag}{end}", "name", "veth0")
            ip("-n", n, "addr", "add", f"{address}/24", "dev", "veth0")
            ip("-n", n, "link", "set", "veth0", "up")
            ip("-n", n, "link", "set", "lo", "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{a} {name}\n" for a, name in zip(ADDRESSES, NAMES, strict=True)
        )
        for e in etc:
            e.mkdir(parents=True)
            (e / "hosts").write_text(hosts_file)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "id_ed25519"], check=True
        )
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host_key"], check=True
        )
        shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
        for i, name in enumerate(NAMES):
            (d / f"sshd-{name}.conf").write_text(
                SSHD.format(address=ADDRESSES[i], dir=d, name=name)
            )
        (d / "ssh_config").write_text(SSH.format(dir=d))
        # `ssh` on PATH with this config: horovodrun and Open MPI call `ssh` by name.
        (d / "bin").mkdir()
        (d / "bin" / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {d}/ssh_config "$@"\n')
        (d / "bin" / "ssh").chmod(0o755)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        env = quiet_env(PATH=f"{d / 'bin'}:{BIN}:{os.environ['PATH']}")
        yield Hosts(ns, d, env)
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        for e in etc:
            shutil.rmtree(e, ignore_errors=True)
        if made_etc:
            shutil.rmtree("/etc/netns", ignore_errors=True)


def stop(proc: subprocess.Popen[str]) -> str:
    """End `proc`'s process group (it runs in its own session) and return its output."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def wait_until_ssh_answers(hosts: Hosts, procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 30
    while True:
        probe = hosts.popen(0, ["ssh", NAMES[1], "hostname"])
        out, _ = probe.communicate(timeout=30)
        if probe.returncode == 0 and out.strip() == NAMES[1]:
            return
        for p in procs:
            assert p.poll() is None, f"sshd ended: {p.communicate()[0]}"
        assert time.monotonic() < deadline, f"ssh to {NAMES[1]} never answered: {out}"
        time.sleep(0.5)


def launch_command(launcher: str, tmp_path: Path) -> list[str]:
    """The README's commands for two hosts of one slot each."""
    if launcher == "horovodrun":
        return [str(BIN / "horovodrun"), "-np", "2", "-H", f"{NAMES[0]}:1,{NAMES[1]}:1"]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{name} slots=1\n" for name in NAMES))
    return [
        "mpirun", "--allow-run-as-root", "-np", "2", "--hostfile", str(hostfile),
        "-x", "PATH", "-x", "TF_CPP_MIN_LOG_LEVEL",
    ]  # fmt: skip


@pytest.mark.parametrize("launcher", ["horovodrun", "mpirun"])
def test_a_run_trains_across_two_hosts_over_the_veth(
    hosts: Hosts, tmp_path: Path, launcher: str
) -> None:
    sshds = [
        hosts.popen(i, ["/usr/sbin/sshd", "-D", "-e", "-f", str(hosts.sshd_config(i))])
        for i in (0, 1)
    ]
    try:
        wait_until_ssh_answers(hosts, sshds)
        before = hosts.veth_bytes(1)
        run = tmp_path / "run"
        cmd = [
            *launch_command(launcher, tmp_path), str(BIN / "hvd-dqn"), "train", "--run-dir", str(run), "--total-steps", "4000",
            "--no-progress", "--set", "run.eval_episodes=2", "--set", "run.stop_at_return=none",
        ]  # fmt: skip
        proc = hosts.popen(0, cmd)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        crossed = hosts.veth_bytes(1) - before
    finally:
        logs = [stop(p) for p in sshds]
    assert f"2 rank(s) on 2 host(s) ({NAMES[0]}, {NAMES[1]})" in out, (out[-2000:], logs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] == 4000
    assert sorted(p.name for p in (run / "checkpoints").glob("*/rank-*.npz"))[-2:] == [
        "rank-0.npz",
        "rank-1.npz",
    ]
    # Every update allreduces the gradient (the default MLP's 35k float32 parameters,
    # 140 kB; a ring of 2 moves half of it each way): that traffic went through the veth.
    updates = summary["updates"]
    assert updates > 100
    print(f"{launcher}: {crossed} bytes through the veth for {updates} updates")
    assert crossed > updates * 35_000, (crossed, updates)


def test_aws_batch_entrypoint_runs_a_two_node_job_and_stops_on_sigterm(
    hosts: Hosts, tmp_path: Path
) -> None:
    """docker/aws-batch-entrypoint.sh with the variables AWS Batch sets on each node of a
    multi-node parallel job: the child reports to the main node, which trains on both.
    Batch stops a job with SIGTERM to the container's first process, the entrypoint: the
    main node passes the stop to the ranks, which checkpoint, and exits with their 75
    (what a retry rule on exit 75 matches); the child node then ends cleanly."""
    entry = str(ROOT / "docker" / "aws-batch-entrypoint.sh")
    run = tmp_path / "run"
    batch = {
        "AWS_BATCH_JOB_ID": "0d6c4a2e-test#0",
        "AWS_BATCH_JOB_NUM_NODES": "2",
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
        "RUN_DIR": str(run),
        "SLOTS": "1",
        "HOSTFILE": str(tmp_path / "hostfile"),
        "NODE_WAIT": "60",
    }
    args = [
        "--total-steps", "500000", "--no-progress", "--set", "run.checkpoint_every=0",
        "--set", "run.stop_at_return=none", "--set", "run.log_every=500",
    ]  # fmt: skip
    main = hosts.popen(
        0, ["bash", entry, *args], AWS_BATCH_JOB_NODE_INDEX="0",
        SSHD_CONFIG=str(hosts.sshd_config(0)), **batch,
    )  # fmt: skip
    child = hosts.popen(
        1, ["bash", entry, *args], AWS_BATCH_JOB_NODE_INDEX="1",
        AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS=ADDRESSES[0],
        SSHD_CONFIG=str(hosts.sshd_config(1)), **dict(batch, AWS_BATCH_JOB_ID="0d6c4a2e-test#1"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not logged_steps(run):  # training on both nodes
            if main.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"main node: {stop(main)[-2000:]}\nchild: {stop(child)[-2000:]}")
            time.sleep(0.2)
        os.kill(main.pid, signal.SIGTERM)  # the entrypoint itself (exec'd by Hosts.popen)
        main_out, _ = main.communicate(timeout=120)
        child_out, _ = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out; main node: {stop(main)[-2000:]}\nchild: {stop(child)[-2000:]}")
    finally:
        for proc in (main, child):
            if proc.poll() is None:
                stop(proc)
    assert main.returncode == 75, main_out[-3000:]
    assert "SIGTERM: stopping the ranks" in main_out and "training exited with 75" in main_out
    assert child.returncode == 0, child_out[-2000:]
    assert f"reporting {ADDRESSES[1]} slots=1" in child_out
    assert "main node gone" in child_out
    assert (tmp_path / "hostfile").read_text().split("\n")[:2] == [
        f"{ADDRESSES[0]} slots=1",
        f"{ADDRESSES[1]} slots=1",
    ]
    assert f"2 rank(s) on 2 host(s) ({NAMES[0]}, {NAMES[1]})" in main_out, main_out[-2000:]
    # checkpoint_every=0: the checkpoint written on the stop, with both nodes' parts.
    (stopped,) = checkpoints(run)
    assert stopped >= logged_steps(run)[-1]
    parts = run / "checkpoints" / f"ckpt-{stopped:012d}"
    assert sorted(p.name for p in parts.glob("rank-*.npz")) == ["rank-0.npz", "rank-1.npz"]
    assert not (run / "summary.json").exists()
