"""Run outputs on rank 0: metrics.jsonl, TensorBoard events, a progress bar.

Only rank 0 creates a `RunLog`; other ranks write nothing. Each `write` appends one JSON
line (flushed, so a crash loses at most the line being written) and the same scalars
to TensorBoard under train/ or eval/.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import tensorflow as tf
from tqdm import tqdm


class RunLog:
    """metrics.jsonl + TensorBoard + progress bar, for rank 0."""

    def __init__(
        self, run_dir: Path, total_steps: int, progress: bool, wall_offset: float = 0.0
    ) -> None:
        """wall_offset: seconds already logged in run_dir (a resumed run goes on from them)."""
        self.run_dir = run_dir
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self.tb = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
        self.bar = tqdm(
            total=total_steps,
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            disable=not progress,
            mininterval=1.0,
        )
        self.start = time.perf_counter() - wall_offset

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        row = {
            "kind": kind,
            "env_steps": step,
            "wall_seconds": round(time.perf_counter() - self.start, 3),
            **values,
        }
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()
        }
        self.file.write(json.dumps(clean) + "\n")
        with self.tb.as_default(step=step):
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tf.summary.scalar(f"{kind}/{key}", value)
        self.tb.flush()

    def eval_row(self, step: int, stats: dict[str, Any]) -> None:
        self.write("eval", step, stats)
        self.message(
            f"eval @ {step} env steps: mean return "
            f"{stats['return_mean']:.1f} over {stats['episodes']} ep."
        )

    def train_row(self, step: int, row: dict[str, Any]) -> None:
        self.write("train", step, row)
        self.progress(step, ret=row["episode_return"], sps=row["env_steps_per_s"])

    def progress(self, step: int, **postfix: Any) -> None:
        self.bar.update(step - self.bar.n)
        if postfix:
            self.bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()},
                refresh=False,
            )

    def message(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        self.tb.close()
