"""`hvd-dqn plot`: learning curves of runs and the scaling chart, as PNG (matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from hvd_dqn.config import ConfigError


def _evals(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise ConfigError(f"{run}: not a run directory (no metrics.jsonl)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "eval"]


def plot_runs(runs: Sequence[str], out: str) -> None:
    """Greedy evaluation return against env steps and against wall-clock, one line per run."""
    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        rows = _evals(Path(run))
        label = Path(run).name
        steps = [r["env_steps"] for r in rows]
        seconds = [r["wall_seconds"] for r in rows]
        mean = [r["return_mean"] for r in rows]
        by_steps.plot(steps, mean, marker="o", ms=3, label=label)
        by_time.plot(seconds, mean, marker="o", ms=3, label=label)
    by_steps.set(xlabel="env steps (all ranks)", ylabel="greedy evaluation return (mean)")
    by_time.set(xlabel="training wall-clock (s)", ylabel="greedy evaluation return (mean)")
    for ax in (by_steps, by_time):
        ax.grid(alpha=0.3)
    by_steps.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def plot_scaling(bench_json: str, out: str) -> None:
    """Aggregate env steps/s and weak-scaling efficiency by number of ranks."""
    try:
        rows = json.loads(Path(bench_json).read_text())["rows"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{bench_json}: not a `hvd-dqn bench scaling` JSON ({exc})") from None
    ranks = [r["ranks"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar([str(r) for r in ranks], [r["env_steps_per_s"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.annotate(
            f"{r['weak_scaling_efficiency']:.0%}",
            (i, r["env_steps_per_s"]),
            ha="center",
            va="bottom",
        )
    ax.set(
        xlabel="ranks",
        ylabel="aggregate env steps/s (training)",
        title="weak scaling (label: efficiency)",
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
