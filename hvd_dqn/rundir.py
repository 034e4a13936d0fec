"""The run directory and its outputs, written by rank 0.

    RUN_DIR/
      config.yaml        the resolved config (load it with --config to rerun)
      metrics.jsonl      one JSON line per log/eval point, averaged over ranks
      tensorboard/       the same scalars as TensorBoard events
      checkpoints/       the newest complete checkpoints (checkpoint.py lists the files)
      resets.jsonl       elastic runs: one line per (re)forming of the world
      model/             the exported greedy policy (`hvd-dqn evaluate RUN_DIR`)
      summary.json       written last: final evaluation, steps, wall-clock
      run.lock           while a job runs: its host, pid and start (runlock.py)

The same command starts a run and continues it: `inspect` tells which, once, before the
run begins; `prepare` makes the directory ready only after a checkpoint has loaded, so
a failed restore changes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hvd_dqn import checkpoint
from hvd_dqn.config import RESUMABLE, Config, ConfigError, changed_fields, load, to_yaml
from hvd_dqn.files import atomic_write

NEW, CONTINUE, FINISHED = "new", "continue", "finished"
_OURS = ("metrics.jsonl", "checkpoints", "summary.json", "model")


def inspect(out: Path, cfg: Config) -> str:
    """What `out` holds: NEW (nothing yet, or a run that never checkpointed), CONTINUE
    (a run of this config with a complete checkpoint) or FINISHED (its summary.json
    says it reached total_steps or its stop_at_return). A run dir that is a file, holds
    another config or something that is not a run is refused (ConfigError)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run directory {out}: exists and is not a directory")
    saved = out / "config.yaml"
    if not saved.is_file():
        ours = [n for n in _OURS if (out / n).exists()]
        if ours:
            raise ConfigError(
                f"run directory {out}: holds {ours[0]} but no config.yaml (not an hvd_dqn "
                f"run, or a damaged one); choose another directory"
            )
        return NEW
    try:
        old = load(str(saved))
    except ConfigError as exc:
        raise ConfigError(
            f"run directory {out}: its config.yaml is not a config of this hvd_dqn ({exc})"
        ) from None
    changed = changed_fields(old, cfg)
    if changed:
        raise ConfigError(
            f"run directory {out} holds a run with another config (changed: "
            f"{', '.join(changed)}); only {', '.join(f for f in RESUMABLE if f != 'run.run_dir')} "
            f"may change. Use another --run-dir, or continue it as it was with --config "
            f"{saved}"
        )
    summary = read_summary(out)
    if summary is not None and (
        summary.get("solved_at_env_steps") is not None
        or summary["env_steps"] >= cfg.run.total_steps
    ):
        return FINISHED
    return CONTINUE if checkpoint.complete(out) else NEW


def prepare(out: Path, cfg: Config, plan: str) -> None:
    """Create the run dir, (re)write config.yaml, drop leftovers of interrupted saves and
    a stale summary. Nothing a run needs is removed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(13, "Permission denied", str(out))
        atomic_write(out / "config.yaml", to_yaml(cfg))  # a grown total_steps is recorded
    except OSError as exc:
        raise ConfigError(f"run directory {out}: cannot write there ({exc.strerror})") from None
    checkpoint.clean(out, cfg.run.keep_checkpoints)
    if plan == CONTINUE:
        (out / "summary.json").unlink(missing_ok=True)  # written again at the end


def drop_rows_after(out: Path, step: int) -> None:
    """Keep the metrics.jsonl rows up to env step `step` (the later ones are written
    again by the resumed run)."""
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        return
    kept = [
        line
        for line in metrics.read_text().splitlines()
        if line.strip() and json.loads(line)["env_steps"] <= step
    ]
    atomic_write(metrics, "".join(line + "\n" for line in kept))


def read_summary(out: Path) -> dict[str, Any] | None:
    """summary.json of a finished run, None if there is none."""
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def append_reset(out: Path, row: dict[str, Any]) -> None:
    """One line of resets.jsonl (elastic: the world formed or re-formed)."""
    with open(out / "resets.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def write_results(out: Path, policy: Any, env_cfg: Any, summary: dict[str, Any]) -> None:
    """The exported greedy policy (model/), then summary.json, written last. A failure
    is one line naming the run directory (ConfigError)."""
    from hvd_dqn.evaluate import export_policy  # TensorFlow, only once a run has ended

    try:
        export_policy(policy, env_cfg, out / "model")
        atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    except OSError as exc:
        raise ConfigError(f"writing the results to {out}: {exc}") from None
