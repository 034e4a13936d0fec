"""The cloud recipes that cannot run here, checked as far as this machine can: the AWS
Batch job definition against the Batch API model botocore ships (the same parameter
validation the AWS SDK runs before a request), the Kubernetes MPIJob for consistency
with the image and the launcher, the Apptainer definition for its form. The entrypoint
they start runs for real in test_hosts.py; the image in `make image-test`."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

DOCKER = ROOT / "docker"
# One worker runs all of these in turn when tests run 2 at once (make test): the pods are
# PID namespaces whose first processes (an mpirun, an sshd) get the same pids in each, and
# would share Open MPI's /tmp/ompi.<host>.<uid>/pid.<n> session directory.
pytestmark = pytest.mark.xdist_group("pid-namespaces")


def batch_errors(params: dict) -> str:
    """Botocore's report for RegisterJobDefinition(**params); empty when valid."""
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    model = botocore_session.get_session().get_service_model("batch")
    shape = model.operation_model("RegisterJobDefinition").input_shape
    return ParamValidator().validate(params, shape).generate_report()


def test_the_aws_batch_job_definition_is_valid_for_the_batch_api() -> None:
    job = json.loads((DOCKER / "aws-batch" / "job-definition.json").read_text())
    assert batch_errors(job) == ""
    # The validation is real: a misspelt field and a wrong type are reported.
    broken = copy.deepcopy(job)
    broken["nodeProperties"]["numNodes"] = "2"
    broken["retryStrategy"]["attemps"] = 3
    report = batch_errors(broken)
    assert "numNodes" in report and "attemps" in report


def test_the_aws_batch_job_runs_the_entrypoint_and_retries_a_checkpointed_stop() -> None:
    job = json.loads((DOCKER / "aws-batch" / "job-definition.json").read_text())
    (node,) = job["nodeProperties"]["nodeRangeProperties"]
    command = node["container"]["command"]
    # The image copies docker/ into /opt/hvd_dqn/docker (docker/Dockerfile).
    assert command[:2] == ["bash", "/opt/hvd_dqn/docker/aws-batch-entrypoint.sh"]
    assert "COPY docker/aws-batch-entrypoint.sh" in (DOCKER / "Dockerfile").read_text()
    env = {e["name"]: e["value"] for e in node["container"]["environment"]}
    assert env["SSH_PORT"] == "2222"  # the image's ssh server (docker/ssh-user.sh)
    retry = job["retryStrategy"]["evaluateOnExit"]
    assert {"onExitCode": "75", "action": "RETRY"} in retry  # stopped with a checkpoint
    assert node["container"]["mountPoints"][0]["containerPath"] == "/runs"


def mpijob() -> tuple[dict, dict]:
    pvc, job = yaml.safe_load_all((DOCKER / "k8s" / "mpijob.yaml").read_text())
    return pvc, job


def replica(name: str) -> dict:
    return mpijob()[1]["spec"]["mpiReplicaSpecs"][name]


def test_the_mpijob_launches_one_rank_per_slot_on_shared_storage() -> None:
    pvc, job = mpijob()
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v2beta1", "MPIJob")
    spec = job["spec"]
    launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
    command = launcher["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["bash", "-c"] and command[3:5] == ["launcher", "mpirun"]
    np = int(command[command.index("-np") + 1])
    assert np == spec["slotsPerWorker"] * worker["replicas"]
    assert command[command.index("--hostfile") + 1] == "/etc/mpi/hostfile"  # the operator's
    # The port comes from the image's ssh client settings (the operator's key mount at
    # sshAuthMountPath replaces ~/.ssh, not /etc/ssh).
    assert "Port $port" in (DOCKER / "ssh-user.sh").read_text()
    assert command[command.index("hvd-dqn") + 1] == "train"
    run_dir = command[command.index("--run-dir") + 1]
    for replica_ in (launcher, worker):
        pod = replica_["template"]["spec"]
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert run_dir.startswith(mounts["runs"]["mountPath"] + "/")
        assert pod["securityContext"]["runAsUser"] == 1000  # the image's user hvd
    # NCCL and Open MPI's shared memory on the workers: a memory volume, not Docker's 64 MB.
    worker_pod = worker["template"]["spec"]
    (shm,) = [v for v in worker_pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in worker_pod["containers"][0]["volumeMounts"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # every rank writes its part
    assert pvc["spec"]["storageClassName"]  # a placeholder the user must replace
    # Exit codes: 1-127 are not retried (2: bad input), 128-255 are (203: stopped with a
    # checkpoint); the launcher script maps 75 to 203 (see the launcher test below).
    assert launcher["restartPolicy"] == "ExitCode" and 0 < spec["runPolicy"]["backoffLimit"] <= 10
    assert spec["sshAuthMountPath"] == "/home/hvd/.ssh"
    # launcherCreationPolicy exists from MPI operator v0.5.0 on; the file says so.
    assert "launcherCreationPolicy" in spec
    assert "v0.5.0" in (DOCKER / "k8s" / "mpijob.yaml").read_text().split("apiVersion")[0]


def test_the_mpijob_scripts_pass_shellcheck() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    for name in ("Launcher", "Worker"):
        script = replica(name)["template"]["spec"]["containers"][0]["command"][2]
        lint = subprocess.run(
            ["shellcheck", "-s", "bash", "-"], input=script, capture_output=True, text=True
        )
        assert lint.returncode == 0, (name, lint.stdout)


# A stand-in for one rank: a process named hvd-dqn (a script of that name, as pip
# installs it) whose command line reads `.../hvd-dqn train --run-dir DIR`. It notes the
# first stop signal it gets, and exits once the test creates DIR/release: 75 after a
# signal (stopped with a checkpoint), 2 without (bad input).
FAKE_RANK = """\
import pathlib, signal, sys, time
d = pathlib.Path(sys.argv[sys.argv.index("--run-dir") + 1])
def stop(signum, frame):
    if not (d / "signal").exists():
        (d / "signal").write_text(signal.Signals(signum).name)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
(d / "started").write_text("")
while not (d / "release").exists():
    time.sleep(0.05)
sys.exit(75 if (d / "signal").exists() else 2)
"""


def fake_rank(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "hvd-dqn"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\n{FAKE_RANK}")
    path.chmod(0o755)
    return path


def wait_for_file(path: Path, *procs: subprocess.Popen[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            assert p.poll() is None, f"{p.args} ended: {p.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


class Pod:
    """`bash -c SCRIPT ARGS` as the first process (PID 1) of a PID namespace of its own
    with its own /proc, as a container's command runs: it sees only its own processes
    (not other training runs on this machine), and it gets only the signals it traps."""

    def __init__(self, script: str, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", script, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, **env), start_new_session=True,
        )  # fmt: skip
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split():
            assert time.monotonic() < deadline and self.proc.poll() is None
            time.sleep(0.01)
        self.pid1 = int(children.read_text().split()[0])  # the bash, seen from outside

    def start(self, cmd: list[str]) -> subprocess.Popen[str]:
        """Start `cmd` inside the namespace (as mpirun's daemon starts a rank there)."""
        return subprocess.Popen(
            ["nsenter", "--target", str(self.pid1), "--pid", "--mount", "--", *cmd],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def close(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            return self.proc.communicate(timeout=30)[0]
        except ValueError:  # already read, for a failed assertion's message
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sshd_config(tmp_path: Path) -> tuple[Path, int]:
    """A config for a real sshd on a free port of 127.0.0.1, and that port."""
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory (root)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "host_key"],
                   check=True)  # fmt: skip
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {tmp_path}/host_key\n"
        f"PidFile {tmp_path}/sshd.pid\nUsePAM no\nPasswordAuthentication no\n"
    )
    return config, port


def test_the_mpijob_worker_stops_its_ranks_on_sigterm_and_waits_for_them(
    tmp_path: Path,
) -> None:
    """The worker's command, run for real as PID 1 with a real sshd: a SIGTERM reaches
    the rank, and the script ends once the rank has exited, not before. A wait that
    matched the script's own text (`pgrep -f "hvd-dqn train"` finds PID 1's `bash -c`)
    would never end, and this test would time out."""
    container = replica("Worker")["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["bash", "-c"]
    script = container["command"][2]
    assert "SSHD_CONFIG=/home/hvd/.sshd/sshd_config" in (DOCKER / "Dockerfile").read_text()
    config, port = sshd_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    pod = Pod(script, [], {"SSHD_CONFIG": str(config)})
    rank = None
    try:
        deadline = time.monotonic() + 30
        while True:  # the worker's sshd answers
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline and pod.proc.poll() is None, pod.close()
            time.sleep(0.1)
        rank = pod.start([str(fake_rank(tmp_path)), "train", "--run-dir", str(run)])
        wait_for_file(run / "started", rank, pod.proc)
        os.kill(pod.pid1, signal.SIGTERM)  # what the kubelet sends the container
        assert wait_for_file(run / "signal", rank, pod.proc) == "SIGTERM"
        # The rank is writing its checkpoint: the worker (and its sshd) must stay.
        with pytest.raises(subprocess.TimeoutExpired):
            pod.proc.wait(timeout=2)
        (run / "release").touch()
        assert rank.wait(timeout=30) == 75
        pod.proc.wait(timeout=30)  # the wait ended with the rank, and sshd was stopped
    finally:
        pod.close()
        if rank is not None and rank.poll() is None:
            rank.kill()


@pytest.mark.parametrize(("sigterm", "exit_code"), [(True, 203), (False, 2)])
def test_the_mpijob_launcher_turns_sigterm_into_a_checkpoint_and_a_retryable_code(
    tmp_path: Path, sigterm: bool, exit_code: int
) -> None:
    """The launcher's command, run for real as PID 1 with a real mpirun (one local rank
    instead of the operator's host file): a SIGTERM to it reaches the rank as SIGUSR1
    through mpirun; the rank's 75 leaves as 203 (retried under restartPolicy ExitCode),
    and a bad input's 2 leaves as 2 (not retried)."""
    command = replica("Launcher")["template"]["spec"]["containers"][0]["command"]
    script = command[2]
    run = tmp_path / "run"
    run.mkdir()
    args = [
        "launcher", "mpirun", "--allow-run-as-root", "-np", "1",
        str(fake_rank(tmp_path)), "train", "--run-dir", str(run),
    ]  # fmt: skip
    pod = Pod(script, args, {})
    try:
        wait_for_file(run / "started", pod.proc)
        if sigterm:
            os.kill(pod.pid1, signal.SIGTERM)
            assert wait_for_file(run / "signal", pod.proc) == "SIGUSR1"
        (run / "release").touch()
        assert pod.proc.wait(timeout=60) == exit_code, pod.close()
    finally:
        log = pod.close()
    assert not (run / "signal").exists() or "exiting 203 to be retried" in log


def test_the_apptainer_definition_builds_from_the_saved_image() -> None:
    text = (DOCKER / "hvd_dqn.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(.+?)\s*$", text, re.M))
    assert header["Bootstrap"] == "oci-archive"
    # The archive is a build argument (Apptainer >= 1.2): the CPU image's by default,
    # the GPU image's with --build-arg; each is the one its instructions save.
    assert header["From"] == "{{ ARCHIVE }}"
    (default,) = re.findall(r"^%arguments\n\s+ARCHIVE=(\S+)$", text, re.M)
    assert f"-o {default} hvd-dqn:cpu" in text
    (gpu,) = re.findall(r"--build-arg ARCHIVE=(\S+)", text)
    assert f"-o {gpu} hvd-dqn:gpu" in text
    sections = re.findall(r"^%(\w+)", text, re.M)
    known = {"setup", "files", "environment", "post", "runscript", "startscript", "test",
             "labels", "help", "arguments"}  # fmt: skip
    assert sections and set(sections) <= known
    assert "exec hvd-dqn" in text
    # slurm/train.sbatch runs it with `apptainer exec IMAGE hvd-dqn`.
    assert 'apptainer exec ${nv[@]+"${nv[@]}"}' in (ROOT / "slurm" / "train.sbatch").read_text()


def test_the_sbatch_script_defaults_by_tasks_per_node_and_passes_cpus_to_srun() -> None:
    """Every #SBATCH line is one the command line replaces with what it asks for: the
    shape is --nodes x --ntasks-per-node (an --ntasks line would win over a user's -N and
    --ntasks-per-node); srun is given the job's --cpus-per-task (SLURM >= 22.05 does not
    pass it on). The shape on a real SLURM is in test_slurm.py."""
    text = (ROOT / "slurm" / "train.sbatch").read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
    assert "ntasks" not in options and "gpus-per-task" not in options
    assert options["nodes"] == "1" and options["ntasks-per-node"] == "2"
    (srun,) = [line for line in text.splitlines() if line.startswith("srun ")]
    assert '${cpus[@]+"${cpus[@]}"}' in srun  # empty-safe under set -u on bash < 4.4
    assert 'cpus=(--cpus-per-task="$SLURM_CPUS_PER_TASK")' in text
    # GPUs: every GPU of a node visible to its ranks (NCCL peer-to-peer), not one each.
    assert "--gpus-per-node=4" in text and "NVIDIA/nccl#1066" in text


def install_sh(function: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of docker/install.sh's decisions in bash, as the script runs it (sourced:
    only its functions are defined, nothing is installed)."""
    return subprocess.run(
        ["bash", "-c", f'source "{DOCKER / "install.sh"}" && {function} "$@"', "_", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


CPU_VENV = "tensorflow_cpu==2.18.1\nkeras==3.15.1\ntensorflow-io-gcs-filesystem==0.37.1"
CUDA_VENV = "tensorflow==2.18.1\nnvidia-cudnn-cu12==9.3.0.75\nnvidia-nccl-cu12==2.23.4"


@pytest.mark.parametrize(
    ("asked", "freeze", "reason"),
    [
        ("tensorflow[and-cuda]", CPU_VENV, "tensorflow-cpu 2.18.1 is installed, but tensorflow[and-cuda] was asked"),
        ("tensorflow", CPU_VENV, "tensorflow-cpu 2.18.1 is installed, but tensorflow was asked"),
        ("tensorflow-cpu", CUDA_VENV, "tensorflow 2.18.1 is installed, but tensorflow-cpu was asked"),
        ("tensorflow[and-cuda]", "tensorflow==2.18.1", "without the NVIDIA libraries"),
        ("tensorflow-cpu", "tensorflow-cpu==2.15.1", "tensorflow-cpu 2.15.1 is installed, 2.18.1 is pinned"),
        ("tensorflow-cpu", "numpy==2.0.2", "tensorflow-cpu is not installed"),
        ("tensorflow-cpu", CPU_VENV, None),
        ("tensorflow[and-cuda]", CUDA_VENV, None),
        ("tensorflow", "tensorflow==2.18.1", None),  # CUDA build, the system's CUDA libraries
    ],
)  # fmt: skip
def test_install_reinstalls_tensorflow_that_is_not_the_build_asked(
    asked: str, freeze: str, reason: str | None
) -> None:
    out = install_sh("tf_reinstall_reason", asked, "2.18.1", freeze)
    if reason is None:
        assert (out.returncode, out.stdout) == (1, ""), out
    else:
        assert out.returncode == 0 and reason in out.stdout, out


@pytest.mark.parametrize(
    ("built", "gpu_ops", "tf_changed", "reason"),
    [
        ("0.28.1 mpi gloo", "NCCL", "", "HOROVOD_GPU_OPERATIONS=NCCL was asked, but horovod was built without NCCL"),
        ("0.28.1 mpi gloo", "", "1", "TensorFlow was reinstalled"),
        ("", "", "", "no horovod that imports against this TensorFlow"),
        ("0.28.0 mpi gloo", "", "", "horovod 0.28.0 is installed, 0.28.1 is pinned"),
        ("0.28.1 gloo", "", "", "without MPI or Gloo"),
        ("0.28.1 mpi gloo", "", "", None),
        ("0.28.1 mpi gloo nccl", "NCCL", "", None),
    ],
)  # fmt: skip
def test_install_rebuilds_horovod_that_lacks_what_was_asked(
    built: str, gpu_ops: str, tf_changed: str, reason: str | None
) -> None:
    out = install_sh("horovod_rebuild_reason", "0.28.1", built, gpu_ops, tf_changed)
    if reason is None:
        assert (out.returncode, out.stdout) == (1, ""), out
    else:
        assert out.returncode == 0 and reason in out.stdout, out


def test_install_on_this_cpu_venv_would_switch_to_cuda_when_cuda_is_asked() -> None:
    """The case that stayed on the CPU: `TF_PACKAGE='tensorflow[and-cuda]'
    HOROVOD_GPU_OPERATIONS=NCCL bash docker/install.sh` over this machine's CPU virtualenv.
    The decisions, given what is really installed, reinstall TensorFlow and rebuild
    Horovod, and the build check asks for NCCL, which this Horovod does not show."""
    py = sys.executable
    freeze = subprocess.run(
        [py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout
    version = re.search(r"^tensorflow[-_]cpu==(\S+)$", freeze, re.M | re.I)
    if version is None:
        pytest.skip("this virtualenv has no CPU build of TensorFlow to convert")
    tf = install_sh("tf_reinstall_reason", "tensorflow[and-cuda]", version[1], freeze)
    assert tf.returncode == 0 and "is installed, but tensorflow[and-cuda] was asked" in tf.stdout
    assert install_sh("tf_reinstall_reason", "tensorflow-cpu", version[1], freeze).returncode == 1
    built = install_sh("horovod_built", py).stdout.strip()
    assert built.split()[1:] == ["mpi", "gloo"], built  # the CPU build here: no NCCL
    hvd = install_sh("horovod_rebuild_reason", built.split()[0], built, "NCCL", "")
    assert hvd.returncode == 0 and "built without NCCL" in hvd.stdout
    missing = install_sh("check_build_missing", CHECK_BUILD, "TensorFlow", "MPI", "Gloo", "NCCL")
    assert missing.stdout.split() == ["NCCL"]
    assert install_sh("check_build_missing", CHECK_BUILD, "TensorFlow", "MPI", "Gloo").stdout == ""


# `horovodrun --check-build` of this machine's CPU build (Horovod 0.28.1), as printed;
# running it takes 15-100 s here (it imports TensorFlow several times).
CHECK_BUILD = """\
Horovod v0.28.1:

Available Frameworks:
    [X] TensorFlow
    [X] PyTorch
    [ ] MXNet

Available Controllers:
    [X] MPI
    [X] Gloo

Available Tensor Operations:
    [ ] NCCL
    [ ] DDL
    [ ] CCL
    [X] MPI
    [X] Gloo
"""


def test_the_images_carry_the_elastic_discovery_script() -> None:
    """The README's elastic command names docker/discover-hosts.sh: the images have it
    where the rest of docker/ is (/opt/hvd_dqn/docker)."""
    for name in ("Dockerfile", "Dockerfile.gpu"):
        copies = re.findall(r"^COPY (.+) docker/$", (DOCKER / name).read_text(), re.M)
        assert any("docker/discover-hosts.sh" in c.split() for c in copies), name
    assert "/opt/hvd_dqn/docker/discover-hosts.sh" in (ROOT / "README.md").read_text()


def batch_node(tmp_path: Path, node: int, nodes: int, **env: str) -> tuple[Pod, Path]:
    """docker/aws-batch-entrypoint.sh as a Batch node's first process (PID 1 of its own
    PID namespace), with a real sshd; `hvd-dqn` on PATH is the fake rank."""
    config, port = sshd_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    rank = fake_rank(tmp_path)
    batch = {
        "AWS_BATCH_JOB_ID": "0d6c4a2e-test#0", "AWS_BATCH_JOB_NODE_INDEX": str(node),
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0", "AWS_BATCH_JOB_NUM_NODES": str(nodes),
        "RUN_DIR": str(run), "SLOTS": "1", "HOSTFILE": str(tmp_path / "hostfile"),
        "SSHD_CONFIG": str(config), "SSH_PORT": str(port), "NODE_WAIT": "60",
        "PATH": f"{rank.parent}:{os.environ['PATH']}", **env,
    }  # fmt: skip
    entry = DOCKER / "aws-batch-entrypoint.sh"
    return Pod(f'exec bash "{entry}" "$@"', ["entry", "--total-steps", "1000"], batch), run


@pytest.mark.parametrize(("sigterm", "exit_code"), [(True, 75), (False, 2)])
def test_the_batch_main_node_stops_its_ranks_on_sigterm_and_exits_with_their_code(
    tmp_path: Path, sigterm: bool, exit_code: int
) -> None:
    """A job of one node (its main node): Batch's SIGTERM to the entrypoint reaches the
    rank through mpirun as SIGUSR1, the entrypoint waits for it and exits with its 75,
    the code the retry strategy retries; without a signal, the rank's 2 (bad input)."""
    pod, run = batch_node(tmp_path, node=0, nodes=1)
    try:
        wait_for_file(run / "started", pod.proc)
        assert (tmp_path / "hostfile").read_text() == "localhost slots=1\n"
        if sigterm:
            os.kill(pod.pid1, signal.SIGTERM)
            assert wait_for_file(run / "signal", pod.proc) == "SIGUSR1"
        (run / "release").touch()
        code = pod.proc.wait(timeout=60)
    finally:
        log = pod.close()
    assert code == exit_code, log
    assert f"training exited with {exit_code}" in log


def test_a_batch_child_node_ends_cleanly_on_sigterm_once_its_ranks_have_exited(
    tmp_path: Path,
) -> None:
    """A child node still waiting for its main node (127.0.0.2: nothing answers) with a
    rank running (as the main node's mpirun would have started it): Batch's SIGTERM
    reaches the rank, the entrypoint stays while the rank writes its checkpoint, then
    exits 0."""
    pod, run = batch_node(
        tmp_path, node=1, nodes=2, AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS="127.0.0.2"
    )
    rank = pod.start([str(tmp_path / "bin" / "hvd-dqn"), "train", "--run-dir", str(run)])
    try:
        wait_for_file(run / "started", rank, pod.proc)
        os.kill(pod.pid1, signal.SIGTERM)
        assert wait_for_file(run / "signal", rank, pod.proc) == "SIGTERM"
        with pytest.raises(subprocess.TimeoutExpired):
            pod.proc.wait(timeout=2)
        (run / "release").touch()
        assert rank.wait(timeout=30) == 75
        code = pod.proc.wait(timeout=30)
    finally:
        log = pod.close()
        if rank.poll() is None:
            rank.kill()
    assert code == 0, log
    assert "reporting 127.0.0.1 slots=1 to the main node 127.0.0.2" in log
    assert "SIGTERM: stopping this node's ranks" in log


def test_the_batch_job_stops_with_a_checkpoint_before_its_timeout() -> None:
    """Batch never retries a job that hit its timeout: run.max_wall_time ends the run
    with a checkpoint (exit 75, retried) first, leaving room for the node wait."""
    job = json.loads((DOCKER / "aws-batch" / "job-definition.json").read_text())
    (node,) = job["nodeProperties"]["nodeRangeProperties"]
    command = node["container"]["command"]
    (wall,) = [a.split("=", 1)[1] for a in command if a.startswith("run.max_wall_time=")]
    env = {e["name"]: e["value"] for e in node["container"]["environment"]}
    assert 0 < float(wall) + int(env["NODE_WAIT"]) < job["timeout"]["attemptDurationSeconds"]
