"""The training loop's exact output, recorded before the loop was redesigned.

A deterministic CartPole run of 8,000 env steps at 1 and 2 ranks must end with the same
learner variables (SHA-256 of every array of the final checkpoint's learner.npz) and write
the same metrics rows (every value that does not measure time) as the run recorded in
tests/golden/cartpole-8000.json. Any change to the loop's order of random draws, updates,
evaluations, logging or checkpoints shows up here as a difference.

oneDNN is switched off (TF_ENABLE_ONEDNN_OPTS=0), yet the numbers still depend on the
CPU: a machine with AVX-512 rounds differently from one without in the first updates, and
the runs part from there. So each world size keeps one recording per kind of CPU it was
made on, and a run must equal one of them bit for bit (a change to the loop equals none).
Record (only when a change of the numbers is meant, or on a new kind of CPU) with
HVD_DQN_RECORD_GOLDEN=1: it replaces the recordings, or adds this CPU's with
HVD_DQN_RECORD_GOLDEN=add.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, mpirun, quiet_env, train_args

from hvd_dqn import checkpoint

GOLDEN = Path(__file__).parent / "golden" / "cartpole-8000.json"
# Recording (HVD_DQN_RECORD_GOLDEN) rewrites GOLDEN from each case: one worker, in turn.
pytestmark = pytest.mark.xdist_group("golden")
TIMING = {"wall_seconds", "env_steps_per_s", "updates_per_s", "ms_per_update", "allreduce_share"}
SETS = (
    "run.deterministic=true",
    "run.stop_at_return=none",
    "run.log_every=1000",
    "run.eval_every=4000",
    "run.eval_episodes=4",
    "run.checkpoint_every=4000",
)


def _fingerprint(run: Path) -> dict:
    final = checkpoint.complete(run)[-1]
    ckpt = run / "checkpoints" / f"ckpt-{final:012d}"
    with np.load(ckpt / "learner.npz") as z:
        learner = {k: hashlib.sha256(z[k].tobytes()).hexdigest() for k in sorted(z.files)}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in rows]
    return {"final_checkpoint": final, "learner": learner, "rows": rows}


@pytest.mark.distributed
@pytest.mark.parametrize(
    "np_", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["1rank", "2ranks"]
)
def test_the_loop_reproduces_the_recorded_run_bit_for_bit(tmp_path: Path, np_: int) -> None:
    run = tmp_path / "run"
    env = quiet_env(TF_ENABLE_ONEDNN_OPTS="0")
    proc = mpirun(
        [str(BIN / "hvd-dqn"), *train_args("cartpole", 8000, run, *SETS)], np=np_, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _fingerprint(run)
    key = f"{np_}rank"
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    record = os.environ.get("HVD_DQN_RECORD_GOLDEN")
    if record in ("1", "add"):
        kept = recorded.get(key, []) if record == "add" else []
        recorded[key] = [*(r for r in kept if r != got), got]
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    assert got["final_checkpoint"] == 8000
    # The recording of this CPU's kind: the one whose first rows match (they part within
    # the first 2,000 env steps), then every row and every variable bit for bit.
    want = max(recorded[key], key=lambda r: _common_prefix(r["rows"], got["rows"]))
    assert got["rows"] == want["rows"]
    assert got["learner"] == want["learner"]


def _common_prefix(a: list, b: list) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
