"""`hvd-dqn plot` draws PNGs from real run directories and bench JSON; bad paths fail cleanly."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import hvd_dqn, train_one_process


def test_plot_curves_and_scaling(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = train_one_process(run, 1500, "run.eval_every=500", "run.eval_episodes=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    scaling = tmp_path / "scaling.json"
    scaling.write_text(
        json.dumps(
            {
                "rows": [
                    {"ranks": 1, "env_steps_per_s": 1000.0, "weak_scaling_efficiency": 1.0},
                    {"ranks": 2, "env_steps_per_s": 1800.0, "weak_scaling_efficiency": 0.9},
                ]
            }
        )
    )
    out = tmp_path / "curves.png"
    proc = hvd_dqn(["plot", str(run), "--scaling", str(scaling), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    for png in (out, tmp_path / "curves-scaling.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # --reference: the run beside a published curve of its game, found by its env id
    reference = tmp_path / "paper.json"
    beside = tmp_path / "beside.png"
    reference.write_text(json.dumps({"games": {"CartPole": {"frames": [0, 1]}}}))
    proc = hvd_dqn(["plot", str(run), "--reference", str(reference), "--out", str(beside)])
    assert proc.returncode == 2 and "not a reference curve JSON" in proc.stderr
    reference.write_text(json.dumps({"games": {"Breakout": {"frames": [0], "return": [0.0]}}}))
    proc = hvd_dqn(["plot", str(run), "--reference", str(reference), "--out", str(beside)])
    assert proc.returncode == 2 and "has no curve for CartPole" in proc.stderr
    assert not beside.exists()
    games = {"CartPole": {"frames": [0, 1000, 1500], "return": [20.0, 100.0, 200.0]}}
    reference.write_text(json.dumps({"games": games}))
    proc = hvd_dqn(["plot", str(run), "--reference", str(reference), "--out", str(beside)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert beside.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and beside.stat().st_size > 10_000


def test_plot_and_bench_refuse_bad_input(tmp_path: Path) -> None:
    proc = hvd_dqn(["plot", str(tmp_path)])
    assert proc.returncode == 2 and "not a run directory (no metrics.jsonl)" in proc.stderr
    scaling = tmp_path / "scaling.json"
    scaling.write_text(json.dumps({"bench": "scaling", "rows": []}))
    proc = hvd_dqn(["plot", "--efficiency", str(scaling), "--out", str(tmp_path / "x.png")])
    assert proc.returncode == 2 and "not a `hvd-dqn bench efficiency` JSON" in proc.stderr
    assert not (tmp_path / "x-efficiency.png").exists()
    proc = hvd_dqn(["bench", "solve", "--seeds", "a,b"])
    assert proc.returncode == 2 and "--seeds 'a,b': expected comma-separated integers" in (
        proc.stderr
    )
    proc = hvd_dqn(["bench", "efficiency", "--ranks", "0,2"])
    assert proc.returncode == 2 and "--ranks '0,2': expected comma-separated integers >= 1" in (
        proc.stderr
    )
    proc = hvd_dqn(["bench", "efficiency", "--rules", "none,cubic"])
    assert proc.returncode == 2 and "learner.lr_scaling" in proc.stderr
    proc = hvd_dqn(["bench", "solve", "--set", "learner.lr=0"])
    assert proc.returncode == 2 and "learner.lr=0.0: must be in (0.0, 1.0]" in proc.stderr
