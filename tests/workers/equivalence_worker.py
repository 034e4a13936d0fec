"""Under horovodrun -np 2: two ranks with batch B on S1 and S2 make exactly the update
that one process makes with batch 2B on S1+S2. Writes rank<r>.json.

Usage: equivalence_worker.py OUT_DIR
"""

import json
import sys
from pathlib import Path

import numpy as np

from hvd_dqn import distributed
from hvd_dqn.config import LearnerConfig, NetworkConfig
from hvd_dqn.learner import Learner
from hvd_dqn.replay import Batch

out = Path(sys.argv[1])
world = distributed.init()
B, steps = 16, 4
net = NetworkConfig(torso="mlp", hidden=(32, 32), dueling=True)
cfg = LearnerConfig(lr=1e-2, batch_size=B, target_update_period=2, max_grad_norm=1.0)


def data(step: int, size: int) -> Batch:
    rng = np.random.default_rng(1000 + step)  # the same on every rank
    return Batch(
        obs_tm1=rng.normal(size=(size, 4)).astype(np.float32),
        a_tm1=rng.integers(2, size=size).astype(np.int32),
        r_t=rng.normal(size=size).astype(np.float32),
        discount_t=(0.99 * (rng.random(size) > 0.2)).astype(np.float32),
        obs_t=rng.normal(size=(size, 4)).astype(np.float32),
        weights=np.ones(size, np.float32),
        indices=np.zeros(size, np.int64),
    )


def half(batch: Batch, r: int) -> Batch:
    return Batch(*(x[r * B : (r + 1) * B] for x in batch))


parallel = Learner(
    (4,),
    np.float32,
    2,
    net,
    cfg,
    seed=3,
    world_size=world.size,
    reduce_gradients=distributed.average_gradients,
)
distributed.broadcast_variables(parallel.state)
single = Learner((4,), np.float32, 2, net, cfg, seed=3)  # no allreduce: one process, 2B
for step in range(steps):
    full = data(step, 2 * B)
    parallel.update([half(full, world.rank)])  # ranks: B each, S1 / S2
    single.update([full])  # one process: 2B on S1 + S2
max_diff = max(
    float(np.abs(a.numpy() - b.numpy()).max())
    for a, b in zip(parallel.state, single.state, strict=True)
)
moved = max(
    float(np.abs(a.numpy() - b.numpy()).max())
    for a, b in zip(
        parallel.online.weights,
        Learner((4,), np.float32, 2, net, cfg, seed=3).online.weights,
        strict=True,
    )
)
(out / f"rank{world.rank}.json").write_text(
    json.dumps({"max_diff": max_diff, "moved": moved, "updates": int(parallel.updates.numpy())})
)
distributed.shutdown()
