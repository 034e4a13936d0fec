"""Run outputs on rank 0: metrics.jsonl, TensorBoard events, progress.

Progress is a bar on a terminal; where stderr is not one (a batch job's log, a rank under
horovodrun or srun), one plain line per logged row instead: env steps, rate, return, ETA.

Only rank 0 creates a `RunLog`; other ranks write nothing. Each `write` appends one JSON
line (flushed, so a crash loses at most the line being written) and the same scalars
to TensorBoard under train/ or eval/.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import tensorflow as tf
from tqdm import tqdm

_FLOAT32_MAX = 3.4028234663852886e38


class RunLog:
    """metrics.jsonl + TensorBoard + progress bar, for rank 0."""

    def __init__(
        self, run_dir: Path, total_steps: int, progress: bool, wall_offset: float = 0.0
    ) -> None:
        """wall_offset: seconds already logged in run_dir (a resumed run goes on from them)."""
        self.run_dir, self.total = run_dir, total_steps
        self.plain = progress and not sys.stderr.isatty()  # a log file, not a terminal
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self.tb = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
        self.bar = tqdm(
            total=total_steps,
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            disable=not progress or self.plain,
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
                # TensorBoard stores float32: a value beyond its range (a return of 1e41
                # from an env whose rewards are huge) is in metrics.jsonl only.
                if isinstance(value, (int, float)) and abs(value) <= _FLOAT32_MAX:
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
        if self.plain:
            rate, ret = row["env_steps_per_s"], row["episode_return"]
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            print(
                f"hvd-dqn: {step:,}/{self.total:,} env steps ({100 * step / self.total:.0f} %), "
                f"{rate:,.0f} steps/s, return {ret:.1f}, ETA {_duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

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


def _duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s; ? when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = round(max(seconds, 0.0))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
