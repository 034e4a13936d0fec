"""`hvd-dqn bench efficiency`: real runs at two world sizes, the table, the JSON, the chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import hvd_dqn


@pytest.mark.distributed
def test_efficiency_runs_every_world_size_and_rule_at_equal_env_steps(tmp_path: Path) -> None:
    out = tmp_path / "eff.json"
    args = ["bench", "efficiency", "--ranks", "1,2", "--rules", "none,linear", "--seeds", "0"]
    sets = ["--set", "run.eval_episodes=2", "--set", "learner.learning_starts=500"]
    proc = hvd_dqn([*args, "--total-steps", "2000", *sets, "--json", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    # One rank: one run for every rule (they are the same); two ranks: one per rule.
    assert [(r["ranks"], r["rule"]) for r in result["rows"]] == [
        (1, "(any)"),
        (2, "none"),
        (2, "linear"),
    ]
    for run in result["runs"]:  # 5 evaluations, the last at the full budget
        steps = [s for s, _ in run["evals"]]
        assert len(steps) == 5 and steps[-1] == 2000, run
    assert "final_mean" in proc.stdout and "curve_mean" in proc.stdout

    # and its chart: one line per (ranks, rule), drawn from this JSON
    proc = hvd_dqn(["plot", "--efficiency", str(out), "--out", str(tmp_path / "eff.png")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = tmp_path / "eff-efficiency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
