"""The cloud recipes that cannot run here, checked as far as this machine can: the AWS
Batch job definition against the Batch API model botocore ships (the same parameter
validation the AWS SDK runs before a request), the Kubernetes MPIJob for consistency
with the image and the launcher, the Apptainer definition for its form. The entrypoint
they start runs for real in test_hosts.py; the image in `make image-test`."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT

DOCKER = ROOT / "docker"


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


def test_the_mpijob_launches_one_rank_per_slot_on_shared_storage() -> None:
    pvc, job = mpijob()
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v2beta1", "MPIJob")
    spec = job["spec"]
    launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
    command = launcher["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "horovodrun"
    np = int(command[command.index("-np") + 1])
    assert np == spec["slotsPerWorker"] * worker["replicas"]
    assert command[command.index("--hostfile") + 1] == "/etc/mpi/hostfile"  # the operator's
    assert command[command.index("-p") + 1] == "2222"
    run_dir = command[command.index("--run-dir") + 1]
    for replica in (launcher, worker):
        pod = replica["template"]["spec"]
        (mount,) = pod["containers"][0]["volumeMounts"]
        (volume,) = pod["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert run_dir.startswith(mount["mountPath"] + "/")
        assert pod["securityContext"]["runAsUser"] == 1000  # the image's user hvd
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # every rank writes its part
    assert launcher["restartPolicy"] == "OnFailure" and spec["runPolicy"]["backoffLimit"] > 0
    assert spec["sshAuthMountPath"] == "/home/hvd/.ssh"


def test_the_mpijob_worker_forwards_sigterm_to_its_ranks() -> None:
    _, job = mpijob()
    container = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    script = container["command"][2]
    assert container["command"][:2] == ["bash", "-c"]
    assert 'sshd -D -f "$SSHD_CONFIG"' in script
    assert "SSHD_CONFIG=/home/hvd/.sshd/sshd_config" in (DOCKER / "Dockerfile").read_text()
    assert re.search(r"trap .*pkill -TERM -f \"hvd-dqn train\".* TERM", script)
    if shutil.which("shellcheck"):
        lint = subprocess.run(
            ["shellcheck", "-s", "bash", "-"], input=script, capture_output=True, text=True
        )
        assert lint.returncode == 0, lint.stdout


def test_the_apptainer_definition_builds_from_the_saved_image() -> None:
    text = (DOCKER / "hvd_dqn.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, re.M))
    assert header["Bootstrap"] == "oci-archive"
    # The archive the definition reads is the one its instructions save.
    assert f"-o {header['From']} hvd-dqn:cpu" in text
    sections = re.findall(r"^%(\w+)", text, re.M)
    known = {"setup", "files", "environment", "post", "runscript", "startscript", "test",
             "labels", "help", "arguments"}  # fmt: skip
    assert sections and set(sections) <= known
    assert "exec hvd-dqn" in text
    # slurm/train.sbatch runs it with `apptainer exec IMAGE hvd-dqn`.
    assert 'apptainer exec "${nv[@]}"' in (ROOT / "slurm" / "train.sbatch").read_text()
