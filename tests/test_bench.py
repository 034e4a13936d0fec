"""`hvd-dqn bench`: efficiency and scaling-to-score with real runs at two world sizes (the
table, the JSON, the chart), and the start-up and two-jobs trials of `bench faults`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import hvd_dqn


@pytest.mark.slow
@pytest.mark.distributed
def test_efficiency_runs_every_world_size_and_rule_at_equal_env_steps(tmp_path: Path) -> None:
    out = tmp_path / "eff.json"
    # One rule: which runs a list of rules makes is test_the_benches_plan_one_run_per_case.
    args = ["bench", "efficiency", "--ranks", "1,2", "--rules", "linear", "--seeds", "0"]
    sets = ["--set", "run.eval_episodes=2", "--set", "learner.learning_starts=500"]
    proc = hvd_dqn([*args, "--total-steps", "2000", *sets, "--json", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["ranks"], r["rule"]) for r in result["rows"]] == [(1, "(any)"), (2, "linear")]
    assert [(r["ranks"], r["rule"]) for r in result["runs"]] == [(1, "linear"), (2, "linear")]
    for run in result["runs"]:  # 5 evaluations, the last at the full budget
        steps = [s for s, _ in run["evals"]]
        assert len(steps) == 5 and steps[-1] == 2000, run
    assert "final_mean" in proc.stdout and "curve_mean" in proc.stdout

    # and its chart: one line per (ranks, rule), drawn from this JSON
    proc = hvd_dqn(["plot", "--efficiency", str(out), "--out", str(tmp_path / "eff.png")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = tmp_path / "eff-efficiency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.distributed
def test_scaling_to_score_runs_each_world_and_batch_scope_on_a_core_per_rank(
    tmp_path: Path,
) -> None:
    out = tmp_path / "to-score.json"
    args = ["bench", "scaling-to-score", "--config", "cartpole", "--ranks", "1,2", "--seeds", "0"]
    args += ["--rules", "sqrt"]  # the rank scope with it; global takes none
    # A score CartPole cannot reach (its episodes end at 500): every run takes the budget.
    sets = ["run.total_steps=2000", "run.stop_at_return=1000", "run.eval_every=1000"]
    sets += ["run.eval_episodes=2", "learner.learning_starts=500"]
    sets += ["learner.adam_eps_scaling=inverse"]  # the rank scope's; global runs without it
    proc = hvd_dqn([*args, *(f"--set={s}" for s in sets), "--json", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["ranks"], r["mode"]) for r in result["rows"]] == [
        (1, "(any)"),
        (2, "rank+sqrt"),
        (2, "global"),
    ]
    for run in result["runs"]:  # a core per rank here (2 cores), the whole budget, 2 evals
        scope, _, rule = run["mode"].partition("+")
        assert (run["batch_scope"], run["lr_scaling"]) == (scope, rule or "none"), run
        assert run["adam_eps_scaling"] == ("none" if scope == "global" else "inverse"), run
        assert run["pinned"] and not run["solved"] and run["env_steps"] == 2000, run
        (first, _, _), (last, _, _) = run["evals"]  # at the iteration reaching 1000, at the end
        assert 1000 <= first < 1000 + 16 and last == 2000, run
    assert result["rows"][0]["time"] == "measured"
    assert "time_vs_1" in proc.stdout
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_benches_plan_one_run_per_case() -> None:
    """One rank runs once whatever the rules (the same run); more ranks once per rule, and
    scaling-to-score's global scope once, without a rule. (The real runs above take one
    rule each; these lists are what they iterate.)"""
    from hvd_dqn.bench import efficiency_cases, to_score_cases

    assert efficiency_cases([1, 2, 4], ["none", "linear"]) == [
        (1, "none"), (2, "none"), (2, "linear"), (4, "none"), (4, "linear"),
    ]  # fmt: skip
    assert to_score_cases([2, 1, 2], ["rank", "global"], ["none", "sqrt"]) == [
        (1, "rank"), (2, "rank"), (2, "rank+sqrt"), (2, "global"),
    ]  # fmt: skip
    assert to_score_cases([4], ["global", "rank"], ["linear"]) == [
        (4, "global"),
        (4, "rank+linear"),
    ]


def test_a_world_larger_than_the_cores_gets_a_projected_time_from_the_measured_rate() -> None:
    from hvd_dqn.bench import _to_score_row

    def run(ranks: int, mode: str, pinned: bool, steps: int, rate: float) -> dict:
        return {"ranks": ranks, "mode": mode, "seed": 0, "pinned": pinned, "solved": True,
                "env_steps": steps, "train_seconds": steps / rate, "env_steps_per_s": rate}  # fmt: skip

    runs = [run(1, "rank", True, 100_000, 500.0), run(2, "global", True, 100_000, 800.0)]
    runs.append(run(4, "global", False, 120_000, 300.0))  # oversubscribed: its rate is not real
    base = _to_score_row(1, "rank", runs, None)
    assert base["seconds"] == 200.0 and base["time"] == "measured"
    four = _to_score_row(4, "global", runs, base)
    # 120k steps at 4 x the 2-rank run's 400 env steps/s per rank
    assert four["seconds"] == 120_000 / 1600 and four["time"] == "projected from 2 ranks"
    assert four["speedup"] == 200.0 / 75.0


@pytest.mark.slow
@pytest.mark.timed  # SIGTERM 0.5 s after the process appears
def test_faults_bench_stops_at_start_up_and_refuses_a_second_job(tmp_path: Path) -> None:
    """`bench faults`' start-up and two-jobs trials, one process: SIGTERM 0.5 s after the
    process appears exits 75 (before this was handled: 143); a second job on a run
    directory a live job holds exits 2 and the first trains on (fault_trial raises
    otherwise; before the run lock: both trained)."""
    from hvd_dqn import bench

    startup = bench.fault_trial("none", bench.STARTUP, tmp_path / "startup")
    assert (startup["exit_code"], startup["logged_env_steps"]) == (75, 0), startup
    # fault_trial raises unless the first job logs another row after the second ended.
    second = bench.fault_trial("none", bench.SECOND_JOB, tmp_path / "second")
    assert second["exit_code"] == 2, second
    assert second["said"].startswith("hvd-dqn: error: run directory "), second
    assert "in use by another job" in second["said"], second
