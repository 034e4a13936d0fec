"""The learner: Adam against its formula, one update by hand, target sync, and
data-parallel equivalence under a real 2-rank Horovod world."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import WORKERS, mpirun

from hvd_dqn.config import LearnerConfig, NetworkConfig
from hvd_dqn.learner import Adam, Learner
from hvd_dqn.replay import Batch


def test_adam_first_steps_match_the_formula() -> None:
    w = tf.Variable([1.0, -2.0])
    opt = Adam([w], lr=0.1, eps=1e-8)
    opt.apply([tf.constant([0.5, -1.0])], [w])
    # step 1: m = .1 g, v = .001 g^2, bias-corrected m/sqrt(v) = sign(g): w -= 0.1 sign(g)
    np.testing.assert_allclose(w.numpy(), [0.9, -1.9], rtol=1e-6)
    opt.apply([tf.constant([0.5, 0.0])], [w])
    m = 0.9 * 0.1 * np.array([0.5, -1.0]) + 0.1 * np.array([0.5, 0.0])
    v = 0.999 * 0.001 * np.array([0.25, 1.0]) + 0.001 * np.array([0.25, 0.0])
    step = 0.1 * np.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    np.testing.assert_allclose(
        w.numpy(), np.array([0.9, -1.9]) - step * m / (np.sqrt(v) + 1e-8), rtol=1e-5
    )
    assert int(opt.iterations.numpy()) == 2


def _batch(size: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    return Batch(
        rng.normal(size=(size, 4)).astype(np.float32),
        rng.integers(2, size=size).astype(np.int32),
        rng.normal(size=size).astype(np.float32),
        np.full(size, 0.99, np.float32),
        rng.normal(size=(size, 4)).astype(np.float32),
        np.ones(size, np.float32),
        np.zeros(size, np.int64),
    )


def test_target_network_syncs_every_period_and_fused_updates_count() -> None:
    cfg = LearnerConfig(target_update_period=3, lr=0.05)
    learner = Learner((4,), np.float32, 2, NetworkConfig(hidden=(8, 8)), cfg, seed=0)

    def same() -> bool:
        return all(
            np.array_equal(a.numpy(), b.numpy())
            for a, b in zip(learner.online.weights, learner.target.weights, strict=True)
        )

    assert same()
    learner.update([_batch(8, 1), _batch(8, 2)])  # 2 fused updates
    assert int(learner.updates.numpy()) == 2 and not same()
    learner.update([_batch(8, 3)])  # the 3rd: sync
    assert same()
    learner.update([_batch(8, 4)])
    assert not same()


def test_the_rules_set_lr_and_epsilon_for_the_world_and_epsilon_enters_the_step() -> None:
    cfg = LearnerConfig(lr=1e-3, lr_scaling="linear", adam_eps=0.4, adam_eps_scaling="inverse")
    net = NetworkConfig(hidden=(8, 8))
    learner = Learner((4,), np.float32, 2, net, cfg, seed=0, world_size=4)
    lr_eps = (learner.optimizer.lr.numpy(), learner.optimizer.eps.numpy())
    np.testing.assert_allclose(lr_eps, [4e-3, 0.1], rtol=1e-6)
    learner.set_world_size(2)  # an elastic reset: read by the compiled update, not baked in
    np.testing.assert_allclose(learner.optimizer.eps.numpy(), 0.2, rtol=1e-6)
    steps = []
    for eps in (0.2, 1e-8):  # the same batch from the same weights: a larger eps, a smaller step
        fresh = Learner((4,), np.float32, 2, net, LearnerConfig(lr=1e-3), seed=0)
        fresh.update([_batch(8)])  # traced with eps 1e-8 ...
        fresh.optimizer.eps.assign(eps)  # ... and run with this one
        before = [w.numpy() for w in fresh.online.weights]
        fresh.update([_batch(8, 1)])
        steps.append(
            sum(
                np.abs(w.numpy() - b).sum()
                for w, b in zip(fresh.online.weights, before, strict=True)
            )
        )
    assert steps[0] < 0.5 * steps[1], steps


def test_one_update_lowers_the_loss_on_its_batch() -> None:
    cfg = LearnerConfig(lr=1e-2, target_update_period=1000)
    learner = Learner((4,), np.float32, 2, NetworkConfig(hidden=(16, 16)), cfg, seed=0)
    batch = _batch(32)
    first = learner.update([batch]).loss
    for _ in range(20):
        last = learner.update([batch]).loss
    assert last < 0.5 * first


def test_same_seed_same_initial_weights_on_every_rank() -> None:
    a = Learner(
        (10, 10, 4), bool, 3, NetworkConfig(torso="minatar", hidden=(128,)), LearnerConfig(), seed=7
    )
    b = Learner(
        (10, 10, 4), bool, 3, NetworkConfig(torso="minatar", hidden=(128,)), LearnerConfig(), seed=7
    )
    for x, y in zip(a.online.weights, b.online.weights, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    q = a.q_values(np.zeros((5, 10, 10, 4), bool))
    assert q.shape == (5, 3)


@pytest.mark.distributed
@pytest.mark.compat
def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path: Path) -> None:
    proc = mpirun([sys.executable, str(WORKERS / "equivalence_worker.py"), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in range(2):
        result = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert result["updates"] == 4
        assert result["moved"] > 1e-3  # the weights really changed...
        assert result["max_diff"] < 1e-5  # ...exactly as one process with 2B would


def test_an_update_reports_whether_the_weights_are_finite_after_its_last_step() -> None:
    cfg = LearnerConfig(lr=1e-2, target_update_period=1000)
    learner = Learner((4,), np.float32, 2, NetworkConfig(hidden=(8, 8)), cfg, seed=0)
    assert learner.update([_batch(8, 1), _batch(8, 2)]).weights_finite
    w = learner.online.weights[0]
    w.assign(np.where(np.arange(w.shape[-1]) == 0, np.inf, w.numpy()).astype(np.float32))
    assert not learner.update([_batch(8, 3)]).weights_finite
