"""End to end: `hvd-dqn train` as one process and as 2 ranks on CartPole,
MinAtar and Atari with tiny budgets; the run directory; `evaluate` on the export."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import (
    BIN,
    horovodrun,
    hvd_dqn,
    launch,
    mpirun,
    train_args,
    train_one_process,
    wait_for,
)

from hvd_dqn import checkpoint
from hvd_dqn.files import read_rows


def _check_run_dir(run: Path, env_steps: int) -> dict:
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "model/policy.json",
        "model/saved_model.pb",
    ):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] >= env_steps
    train_rows = read_rows(run, "train")
    assert train_rows and train_rows[-1]["env_steps"] == summary["env_steps"]
    for key in (
        "episode_return",
        "loss",
        "q_mean",
        "epsilon",
        "env_steps_per_s",
        "updates_per_s",
        "allreduce_share",
    ):
        assert key in train_rows[-1]
    assert read_rows(run, "eval")
    assert checkpoint.complete(run)[-1] == summary["env_steps"]  # the final checkpoint
    return summary


def test_single_process_cartpole_run_and_evaluate(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = train_one_process(
        run, 3000, "run.eval_episodes=3", "run.log_every=1000", "run.stop_at_return=none"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run_dir(run, 3000)
    assert summary["world_size"] == 1 and summary["updates"] > 0
    rows = read_rows(run, "train")
    assert len(rows) == 3 and rows[-1]["loss"] is not None
    assert rows[0]["epsilon"] > rows[-1]["epsilon"]
    proc = hvd_dqn(["evaluate", str(run), "--episodes", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.splitlines()[-1])
    # The exported policy on the same 3 seeded episodes plays as the learner did in the
    # run's final evaluation.
    assert stats["episodes"] == 3
    final = summary["final_eval"]
    assert (stats["return_mean"], stats["return_max"]) == (
        final["return_mean"],
        final["return_max"],
    )
    # A policy is evaluated only on observations of its shape.
    proc = hvd_dqn(["evaluate", str(run), "--episodes", "1", "--env", "MinAtar/Breakout-v1"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "observations have shape (10, 10, 4), the policy" in proc.stderr
    # Another config in the same run directory is refused; the run is untouched.
    before = (run / "metrics.jsonl").read_text()
    proc = hvd_dqn(["train", "--total-steps", "100", "--run-dir", str(run)])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert (
        "another config (changed: run.log_every, run.eval_episodes, run.stop_at_return)"
        in proc.stderr
    )
    assert (  # every field that may change, as config.RESUMABLE has them
        "; only run.total_steps, run.progress, run.max_wall_time, run.stall_timeout, "
        "run.keep_checkpoints, run.elastic, run.commit_every may change. Use another --run-dir, or continue it as it was with --config "
    ) in proc.stderr
    assert (run / "metrics.jsonl").read_text() == before


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("config", "steps", "extra"),
    [
        pytest.param("cartpole", 4000, [], marks=pytest.mark.compat),
        pytest.param(
            "minatar",
            3200,
            ["replay.capacity=4000", "learner.learning_starts=500", "env.max_episode_steps=200"],
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "atari",
            800,
            [
                "replay.capacity=2000",
                "learner.learning_starts=400",
                "env.max_episode_steps=150",
                "env.num_envs=2",
            ],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["cartpole", "minatar", "atari"],
)
def test_two_ranks_train_end_to_end(
    tmp_path: Path, config: str, steps: int, extra: list[str]
) -> None:
    run = tmp_path / config
    sets = [*extra, "run.eval_episodes=2", f"run.log_every={steps // 2}", "run.eval_every=0"]
    proc = mpirun(
        [str(BIN / "hvd-dqn"), *train_args(config, steps, run, *sets)],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run_dir(run, steps)
    assert summary["world_size"] == 2 and summary["updates"] > 0
    assert "[1,1]<stdout>" not in proc.stdout  # rank 1 is silent
    video = tmp_path / VIDEOS[config]
    proc = hvd_dqn(["evaluate", str(run / "model"), "--episodes", "1", "--video", str(video)])
    if config == "cartpole":  # classic control renders with pygame, not installed
        assert proc.returncode == 2 and "CartPole-v1 cannot render frames" in proc.stderr
        assert not list(tmp_path.glob("*.gif*")), "nothing half-written"
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The clip is evaluation episode 0: its length (plus the reset frame) in frames.
    length = int(json.loads(proc.stdout.splitlines()[-1])["length_mean"])
    frames, (height, width) = _video_frames(video)
    assert frames == length + 1
    assert min(height, width) >= 240  # MinAtar's 10x10 grid scaled up


VIDEOS = {"cartpole": "cartpole.gif", "minatar": "breakout.gif", "atari": "pong.mp4"}


def _video_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """Frame count and (height, width) of a GIF or MP4, read back from the file."""
    if path.suffix == ".gif":
        from PIL import Image

        # Pillow merges identical consecutive frames into one of their summed duration.
        with Image.open(path) as gif:
            total = 0
            for i in range(gif.n_frames):
                gif.seek(i)
                total += gif.info["duration"]
            return total // 40, (gif.height, gif.width)  # 25 fps
    import cv2

    cap = cv2.VideoCapture(str(path))
    count = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count, shape = count + 1, frame.shape[:2]
    cap.release()
    return count, shape


def test_stop_at_return_ends_the_run_at_the_first_good_evaluation(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = train_one_process(
        run, 50000, "run.eval_every=1000", "run.eval_episodes=2", "run.stop_at_return=5"
    )  # any policy lasts 5 steps
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_run_dir(run, 1000)
    assert summary["solved_at_env_steps"] == summary["env_steps"] == 1000
    assert read_rows(run, "eval")[-1]["return_mean"] >= 5


# -- bad input: exit 2, one line naming the field or file, nothing written -----------------


def _foreign_checkpoint(run: Path) -> None:
    run.mkdir()
    (run / "config.yaml").write_text(hvd_dqn_config_yaml(run))
    ckpt = run / "checkpoints" / "ckpt-000000001000"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text('{"format": "hvd_dqn-checkpoint-0"}')


def hvd_dqn_config_yaml(run: Path) -> str:
    from hvd_dqn.config import load, to_yaml

    return to_yaml(load("cartpole", [f"run.run_dir={run}", "run.progress=false"]))


def _tree(root: Path) -> list[tuple[Path, int]]:
    """Every path under `root` with its mtime, files only: a run directory's own mtime
    changes when the run lock (runlock.py) is made and removed again."""
    return sorted((p, p.stat().st_mtime_ns if p.is_file() else 0) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("args", "message", "make"),
    [
        (["--env", "NoSuchEnv-v0"], "env.id='NoSuchEnv-v0': not a registered gymnasium id", None),
        (["--env", "Pendulum-v1"], "env.id='Pendulum-v1': action space", None),
        (["--set", "learner.lr=1e30"], "learner.lr=1e+30: must be in (0.0, 1.0]", None),
        (
            ["--set", "replay.capacity=1000000000"],
            "replay.capacity=1000000000: the replay needs",
            None,
        ),
        (
            ["--config", "atari", "--env", "CartPole-v1"],
            "network.torso=nature: needs stacked",
            None,
        ),
        (
            ["--config", "cartpole", "--env", "ALE/Pong-v5"],
            "network.torso=mlp: needs vector observations [D]; this env's observations are "
            "images (4, 84, 84)",
            None,
        ),
        ([], "exists and is not a directory", lambda run: run.write_text("a file")),
        (
            [],
            "its config.yaml is not a config of this hvd_dqn",
            lambda run: (run.mkdir(), (run / "config.yaml").write_text("learner:\n  lrr: 1\n")),
        ),
        ([], "not a checkpoint of this hvd_dqn version", _foreign_checkpoint),
    ],
    ids=[
        "unknown-env",
        "continuous",
        "absurd-lr",
        "replay-too-big",
        "cnn-on-vectors",
        "mlp-on-images",
        "run-dir-is-a-file",
        "foreign-config",
        "foreign-checkpoint",
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message, make) -> None:
    run = tmp_path / "run"
    if make:
        make(run)
    before = _tree(tmp_path)
    proc = hvd_dqn(["train", "--run-dir", str(run), "--no-progress", *args])
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "hvd-dqn: warning" not in line]
    assert len(errors) == 1 and errors[0].startswith("hvd-dqn: error: "), proc.stderr
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_a_second_job_on_a_run_dir_is_refused_and_a_killed_ones_is_taken_over(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    args = [
        *train_args("cartpole", 200_000, run, "run.checkpoint_every=1000"),
        "--set=run.stop_at_return=none",
    ]
    first = launch(args)
    try:
        wait_for(lambda: bool(checkpoint.complete(run)), first)  # training, checkpointing
        second = hvd_dqn(args)
        assert second.returncode == 2 and second.stdout == "", second.stderr[-3000:]
        [line] = second.stderr.splitlines()
        assert line.startswith(
            f"hvd-dqn: error: run directory {run}: in use by another job (host "
            f"{socket.gethostname()}, pid {first.pid}, since "
        ), line
        assert first.poll() is None  # the first goes on
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The holder was killed: the next start takes the directory over, says so, goes on.
    third = hvd_dqn([*args, "--total-steps", str(checkpoint.complete(run)[-1] + 1000)])
    assert third.returncode == 0, third.stderr[-3000:]
    assert (
        f"hvd-dqn: warning: run directory {run}: taking it over from a job that is gone "
        f"(host {socket.gethostname()}, pid {first.pid}, since "
    ) in third.stderr
    assert f"pid {first.pid} no longer runs)" in third.stderr
    assert not (run / "run.lock").exists()  # released at the end


def test_a_run_dir_that_cannot_be_created_is_a_usage_error() -> None:
    proc = hvd_dqn(["train", "--run-dir", "/proc/hvd-dqn-run", "--no-progress"])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "run directory /proc/hvd-dqn-run: cannot write there" in proc.stderr
    assert proc.stdout == ""  # not a line about the run first


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("gloo", [False, True], ids=["mpi", "gloo"])
def test_bad_input_under_two_ranks_is_one_line_from_rank_0(tmp_path: Path, gloo: bool) -> None:
    for args, message in (
        (["--env", "NoSuchEnv-v0"], "not a registered gymnasium id"),
        (["--run-dir", str(tmp_path / "f")], "exists and is not a directory"),
    ):
        (tmp_path / "f").write_text("a file")
        cmd = [str(BIN / "hvd-dqn"), "train", "--no-progress", "--run-dir", str(tmp_path / "r")]
        proc = horovodrun([*cmd, *args], gloo=True) if gloo else mpirun([*cmd, *args])
        errors = [line for line in proc.stderr.splitlines() if "hvd-dqn: error" in line]
        assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
        assert "shut down" not in proc.stderr
        if gloo:  # Horovod's Gloo launcher ends with 1 and a traceback naming the code
            assert proc.returncode == 1 and "Exit code: 2" in proc.stderr, proc.stderr[-3000:]
        else:
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_last_checkpoint_survives(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        run = disk / "run"
        proc = train_one_process(
            run, 20000, "run.checkpoint_every=1000", "run.stop_at_return=none", "run.eval_every=0"
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "writing checkpoint" in proc.stderr and "No space left on device" in proc.stderr
        saved = checkpoint.complete(run)
        assert saved and saved[-1] < 20000
        last = run / "checkpoints" / f"ckpt-{saved[-1]:012d}"
        assert checkpoint.read_rank(run, saved[-1], 0) and (last / "learner.npz").exists()
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.slow
@pytest.mark.distributed
def test_a_global_batch_makes_one_process_updates_per_env_step(tmp_path: Path) -> None:
    """learner.batch_scope=global: 2 ranks sampling 64 each make the updates of one
    process sampling 128, per env step of all ranks (prioritized: the importance weights'
    max is taken over both ranks), and each holds half of replay.capacity;
    batch_scope=rank: half as many updates, on batches of 2 x 128, and a whole replay each.
    (That the mean gradient of 2 ranks x B equals one process's on the 2B samples:
    test_learner.test_two_ranks_with_batch_b_equal_one_process_with_batch_2b.)"""
    # replay.capacity 1,600 over 8 envs: 200 steps per env, 100 at each of 2 ranks in the
    # global scope; every rank steps each env 128 times (2,048 / 2 ranks / 8 envs).
    sets = [
        "run.stop_at_return=none",
        "run.eval_every=0",
        "run.eval_episodes=1",
        "replay.capacity=1600",
    ]
    updates = {}
    for name, np_, scope in [("one", 1, "rank"), ("global", 2, "global"), ("rank", 2, "rank")]:
        run = tmp_path / name
        args = train_args("cartpole", 2048, run, *sets, f"learner.batch_scope={scope}")
        proc = mpirun([str(BIN / "hvd-dqn"), *args], np=np_)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["env_steps"] == 2048
        updates[name] = summary["updates"]
        held = checkpoint.read_rank(run, 2048, 0)["replay/actions"].shape[0]
        assert held == {"one": 200, "global": 100, "rank": 128}[name]
    # Equal up to where the first iteration past learning_starts falls (8 updates at most:
    # one iteration of 2 ranks x 8 envs x replay_ratio 0.5).
    assert abs(updates["global"] - updates["one"]) <= 8, updates
    assert abs(2 * updates["rank"] - updates["one"]) <= 8, updates
    # A batch that 2 ranks cannot share equally is refused with one line, at once.
    run = tmp_path / "odd"
    args = train_args("cartpole", 2048, run, "learner.batch_scope=global", "learner.batch_size=127")
    proc = mpirun([str(BIN / "hvd-dqn"), *args], np=2)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert (
        "learner.batch_size=127: with batch_scope global it must be a multiple of the 2"
        in errors[0]
    )
    assert not run.exists()


def test_progress_in_a_log_file_is_plain_lines(tmp_path: Path) -> None:
    """stderr a pipe, as in a batch job's log: one line per logged row, no \\r bar."""
    run = tmp_path / "run"
    args = ["train", "--total-steps", "2000", "--run-dir", str(run)]
    sets = [
        "run.log_every=1000",
        "run.eval_every=0",
        "run.eval_episodes=1",
        "run.stop_at_return=none",
    ]
    proc = hvd_dqn(args + [f"--set={s}" for s in sets])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if " env steps (" in line]
    assert [line.split()[1] for line in lines] == ["1,000/2,000", "2,000/2,000"], proc.stderr
    assert "steps/s, return" in lines[0] and "ETA" in lines[0]
    assert "\r" not in proc.stderr
