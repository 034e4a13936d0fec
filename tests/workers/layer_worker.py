"""Run under horovodrun -np 2: exercises hvd_dqn.distributed and writes rank<r>.json.

Usage: layer_worker.py OUT_DIR MODE   (MODE: layer | mismatch | weighted)
"""

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from hvd_dqn import distributed
from hvd_dqn.config import ConfigError
from hvd_dqn.learner import Adam

out, mode = Path(sys.argv[1]), sys.argv[2]
world = distributed.init()
result: dict = {"rank": world.rank, "size": world.size, "controller": world.controller}

if mode == "weighted":
    # The elastic mean (HOROVOD_ELASTIC=1): rank 1 has weight 0, as a joining rank.
    g = tf.constant([1.0, 2.0]) * (world.rank + 1)
    weight = tf.constant(1.0 if world.rank == 0 else 0.0)
    result["one_counts"] = distributed.average_gradients([g], weight)[0].numpy().tolist()
    result["both_count"] = distributed.average_gradients([g], tf.constant(1.0))[0].numpy().tolist()
    result["none_count"] = distributed.average_gradients([g], tf.constant(0.0))[0].numpy().tolist()
elif mode == "mismatch":
    # Rank 0 sends 3 numbers, rank 1 sends 4: Horovod must refuse, not hang.
    try:
        distributed.average_gradients([tf.zeros([3 + world.rank])])
        result["error"] = None
    except Exception as exc:  # the error every rank should see
        result["error"] = f"{type(exc).__name__}: {exc}"
else:
    # 1. Gradient averaging equals the mean of the ranks' gradients.
    local = [
        tf.constant(np.arange(6, dtype=np.float32).reshape(3, 2) * (world.rank + 1)),
        tf.constant([10.0 * world.rank + 1.0]),
    ]
    averaged = distributed.average_gradients(local)
    flat = np.concatenate([g.numpy().ravel() for g in local])
    every = distributed.allgather(flat[None, :])  # [ranks, n]
    result["averaged"] = np.concatenate([g.numpy().ravel() for g in averaged]).tolist()
    result["mean_of_ranks"] = every.mean(axis=0).tolist()

    # 2. Different starting weights and optimizer state on each rank...
    rng = np.random.default_rng(100 + world.rank)
    w = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))
    b = tf.Variable(rng.normal(size=(3,)).astype(np.float32))
    opt = Adam([w, b], lr=0.05)
    x0 = tf.constant(rng.normal(size=(8, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((x0 @ w + b) ** 2)
    opt.apply(tape.gradient(loss, [w, b]), [w, b])  # a local step: states now differ
    before = [v.numpy().tobytes() for v in [w, b, *opt.state]]
    result["differed_before"] = len(set(distributed.allgather_object(before[0]))) > 1
    # ...then broadcast of weights and optimizer state from rank 0...
    distributed.broadcast_variables([w, b, *opt.state])

    # ...then several averaged steps on different data per rank.
    @tf.function
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((x @ w + b - y) ** 2)
        grads = distributed.average_gradients(tape.gradient(loss, [w, b]))
        opt.apply(grads, [w, b])
        return loss

    for _ in range(5):
        step(
            rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32)
        )
    state = [v.numpy().tobytes() for v in [w, b, *opt.state]]
    every_state = distributed.allgather_object(state)
    result["identical_after"] = all(s == every_state[0] for s in every_state)
    result["optimizer_iterations"] = int(opt.iterations.numpy())
    result["metric_mean"] = distributed.mean_over_ranks({"x": float(world.rank)})["x"]
    result["vote_any"] = distributed.any_rank(world.rank == 1)
    result["vote_none"] = distributed.any_rank(False)
    try:
        distributed.check_same("config", f"cfg-{world.rank}")
        result["check_same"] = None
    except distributed.WorldError as exc:
        result["check_same"] = str(exc)
    try:

        def fail_on_one() -> None:
            if world.rank == 1:
                raise ValueError("boom")

        distributed.run_collectively(fail_on_one, "setup")
        result["collective_error"] = None
    except distributed.WorldError as exc:
        result["collective_error"] = str(exc)
    try:

        def refuse_on_chief() -> None:  # a rank-0-only action (a file) refused
            if world.is_chief:
                raise ConfigError("run directory R: in use by another job")

        distributed.run_collectively(refuse_on_chief, "run directory R")
        result["usage_error"] = None
    except distributed.WorldError as exc:
        result["usage_error"] = [str(exc), exc.usage]

(out / f"rank{world.rank}.json").write_text(json.dumps(result))
distributed.shutdown()
