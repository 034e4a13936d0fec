"""`hvd-dqn plot`: learning curves of runs and the bench charts, as PNG (matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from hvd_dqn.config import ConfigError, load
from hvd_dqn.files import read_rows


def _rows(run: Path) -> dict[str, list[dict]]:
    """A run's metrics.jsonl rows by kind: {"train": [...], "eval": [...]}."""
    if not (run / "metrics.jsonl").exists():
        raise ConfigError(f"{run}: not a run directory (no metrics.jsonl)")
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    for row in read_rows(run):
        rows.setdefault(row["kind"], []).append(row)
    return rows


def plot_runs(runs: Sequence[str], out: str) -> None:
    """Greedy evaluation return against env steps and against wall-clock, one line per run."""
    fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        rows = _rows(Path(run))["eval"]
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


def plot_efficiency(bench_json: str, out: str) -> None:
    """Sample efficiency as ranks grow: the greedy return against total env steps, one
    line per (ranks, lr_scaling rule), the mean over the seeds (their range shaded when there
    are 3 lines or fewer)."""
    try:
        bench = json.loads(Path(bench_json).read_text())
        runs = bench["runs"]
        cases = sorted({(r["ranks"], r["rule"]) for r in runs})
        curves = {  # (ranks, rule): [seed, evaluation, (env steps, return)]
            case: np.array([r["evals"] for r in runs if (r["ranks"], r["rule"]) == case], float)
            for case in cases
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{bench_json}: not a `hvd-dqn bench efficiency` JSON ({exc})") from None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {p: f"C{i}" for i, p in enumerate(sorted({p for p, _ in cases}))}
    styles = {"none": "-", "linear": "--", "sqrt": ":"}
    shaded = len(curves) <= 3  # the seeds' range, where it stays readable
    for (p, rule), seeds in curves.items():
        steps, returns = seeds[0, :, 0], seeds[:, :, 1]
        label = f"{p} rank{'s' if p > 1 else ''}" + (f", {rule}" if p > 1 else "")
        style = styles.get(rule, "-")
        ax.plot(steps, returns.mean(0), style, color=colors[p], marker="o", ms=3, label=label)
        if shaded:
            ax.fill_between(steps, returns.min(0), returns.max(0), color=colors[p], alpha=0.1)
    seeds_of = len(next(iter(curves.values()), []))
    ax.set(
        xlabel="env steps, all ranks together",
        ylabel="greedy evaluation return",
        title=f"{bench.get('config', '')}: mean of {seeds_of} seeds"
        + (" (range shaded)" if shaded else ""),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def plot_to_score(bench: dict, out: str) -> None:
    """A `bench scaling-to-score` result: the greedy return against training wall-clock,
    one line per (ranks, batch scope), each run of the first seed."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    first_seed = min(r["seed"] for r in bench["runs"])
    for i, run in enumerate(r for r in bench["runs"] if r["seed"] == first_seed):
        _, seconds, returns = zip(*run["evals"], strict=True) if run["evals"] else ((), (), ())
        label = f"{run['ranks']} rank{'s' if run['ranks'] > 1 else ''}"
        label += f", {run['mode']}" if run["ranks"] > 1 else ""
        label += "" if run["pinned"] else " (oversubscribed: time not comparable)"
        ax.plot(seconds, returns, marker="o", ms=3, color=f"C{i}", label=label)
    ax.set(
        xlabel="training wall-clock (s), a core per rank",
        ylabel="greedy evaluation return",
        title=f"{bench.get('config', '')}: seed {first_seed}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def _game(run: Path) -> str:
    """The game of a run's env id: MinAtar/Breakout-v1 -> Breakout."""
    if not (run / "config.yaml").exists():
        raise ConfigError(f"{run}: not a run directory (no config.yaml)")
    return load(str(run / "config.yaml")).env.id.split("/")[-1].split("-")[0]


def plot_against_reference(runs: Sequence[str], reference_json: str, out: str) -> None:
    """Each run's curves beside a published curve of the same game, one panel per run.

    The reference JSON holds {"games": {GAME: {"frames": [...], "return": [...]}},
    "label": ...} (docs/bench/minatar-paper-dqn.json: the MinAtar paper's DQN). Drawn
    per run: the greedy evaluations, and the mean return of the training episodes in each
    metrics window (epsilon-greedy, the measure the MinAtar paper plots).
    """
    try:
        reference = json.loads(Path(reference_json).read_text())
        games = {
            g: list(zip(c["frames"], c["return"], strict=True))
            for g, c in reference["games"].items()
        }
        label = reference.get("label", "published curve")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{reference_json}: not a reference curve JSON ({exc})") from None
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, run_name in zip(axes[0], runs, strict=True):
        run = Path(run_name)
        game = _game(run)
        if game not in games:
            raise ConfigError(f"{run}: {reference_json} has no curve for {game}")
        rows = _rows(run)
        train = [r for r in rows["train"] if r.get("episode_return") is not None]
        evals = rows["eval"]
        last = max((r["env_steps"] for r in evals + train), default=0) * 1.03
        ref = [(f, v) for f, v in games[game] if f <= last]
        ax.plot(
            [f / 1e6 for f, _ in ref], [v for _, v in ref], color="tab:gray", lw=2, label=label
        )  # the published curve up to the run's frames only
        ax.plot(
            [r["env_steps"] / 1e6 for r in train], [r["episode_return"] for r in train],
            color="tab:blue", alpha=0.45, lw=1, label="hvd_dqn, training episodes",
        )  # fmt: skip
        ax.plot(
            [r["env_steps"] / 1e6 for r in evals], [r["return_mean"] for r in evals],
            color="tab:blue", marker="o", ms=4, lw=2, label="hvd_dqn, greedy evaluation",
        )  # fmt: skip
        ax.set(title=game, xlabel="frames = env steps, all ranks (millions)", ylabel="return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
