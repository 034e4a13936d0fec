"""Replay: sum-tree sampling, n-step transitions against a brute-force reference,
wrap-around, frame de-duplication on real Atari stacks, and memory."""

from __future__ import annotations

import numpy as np
import pytest

from hvd_dqn.config import EnvConfig
from hvd_dqn.envs import lives_lost, make_vector_env
from hvd_dqn.replay import Batch, Replay, SumTree, replay_bytes

# -- sum-tree ------------------------------------------------------------------------------


def test_sum_tree_find_follows_the_cumulative_sums() -> None:
    tree = SumTree(4)
    tree.set(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    assert tree.total == 10.0
    # cumulative sums 1, 3, 6, 10
    assert tree.find(np.array([0.0, 0.99, 1.0, 2.99, 3.0, 5.99, 6.0, 9.99])).tolist() == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]
    tree.set(np.array([1]), np.array([0.0]))  # a zero priority is never found
    assert tree.total == 8.0
    assert 1 not in tree.find(np.linspace(0, 7.999, 1000)).tolist()


def test_sum_tree_sampling_proportions() -> None:
    tree = SumTree(5)  # not a power of two: padded leaves hold 0
    p = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    tree.set(np.arange(5), p)
    u = np.random.default_rng(0).random(200_000) * tree.total
    counts = np.bincount(tree.find(u), minlength=5)[:5] / len(u)
    np.testing.assert_allclose(counts, p / p.sum(), atol=0.005)


def test_sum_tree_stays_consistent_under_repeated_and_random_updates() -> None:
    rng = np.random.default_rng(0)
    tree = SumTree(1000)
    values = np.zeros(1000)
    for _ in range(50):
        leaves = rng.integers(0, 1000, size=64)
        leaves[:8] = leaves[0]  # the same leaf several times: the last value counts
        new = rng.random(64)
        tree.set(leaves, new)
        for leaf, v in zip(leaves, new, strict=True):
            values[leaf] = v
    np.testing.assert_allclose(tree.get(np.arange(1000)), values)
    inner = np.arange(1, tree.capacity)
    np.testing.assert_allclose(tree.nodes[inner], tree.nodes[2 * inner] + tree.nodes[2 * inner + 1])
    assert tree.total == pytest.approx(values.sum())


def test_batch_split_interleaves_rows() -> None:
    batch = Batch(*(np.arange(12) + 100 * f for f in range(7)))
    parts = batch.split(3)
    assert [p.a_tm1.tolist() for p in parts] == [
        [100, 103, 106, 109],
        [101, 104, 107, 110],
        [102, 105, 108, 111],
    ]
    assert all(len(p.indices) == 4 for p in parts)


# -- n-step transitions against a brute-force reference -----------------------------------


def _feed(replay: Replay, steps: int, num_envs: int, seed: int) -> list[dict]:
    """Drive the replay with gymnasium's NEXT_STEP protocol; return what was stored."""
    rng = np.random.default_rng(seed)
    log = []
    prev_ended = np.zeros(num_envs, dtype=bool)
    for t in range(steps):
        obs = (t * 100 + np.arange(num_envs)).astype(np.float32)[:, None]  # unique ids
        rewards = np.where(prev_ended, 0.0, rng.integers(1, 10, num_envs)).astype(np.float32)
        terminated = ~prev_ended & (rng.random(num_envs) < 0.15)
        truncated = ~prev_ended & ~terminated & (rng.random(num_envs) < 0.1)
        actions = rng.integers(3, size=num_envs)
        replay.add(obs, actions, rewards, terminated, truncated)
        log.append(
            {
                "obs": obs[:, 0],
                "a": actions,
                "r": rewards,
                "term": terminated,
                "trunc": truncated,
                "final": prev_ended.copy(),
            }
        )
        prev_ended = terminated | truncated
    return log


def _reference(log: list[dict], t: int, e: int, n: int, gamma: float) -> tuple:
    g, k = 0.0, 0
    while True:
        g += gamma**k * log[t + k]["r"][e]
        if log[t + k]["term"][e]:
            return g, 0.0, log[t + k + 1]["obs"][e]
        k += 1
        if log[t + k - 1]["trunc"][e] or k == n:
            return g, gamma**k, log[t + k]["obs"][e]


@pytest.mark.parametrize("prioritized", [False, True])
@pytest.mark.parametrize("n_step", [1, 3])
def test_sampled_transitions_match_the_episodes_across_ends_and_envs(prioritized, n_step):
    num_envs, gamma = 3, 0.9
    replay = Replay(
        3 * 40,
        num_envs,
        (1,),
        np.float32,
        n_step=n_step,
        gamma=gamma,
        prioritized=prioritized,
        seed=1,
    )
    log = _feed(replay, 100, num_envs, seed=2)  # 100 steps into 40 slots: wrapped twice
    batch = replay.sample(2000)
    lo, hi = replay._bounds()
    for i in range(len(batch.a_tm1)):
        obs_id = int(batch.obs_tm1[i, 0])
        t, e = obs_id // 100, obs_id % 100
        assert lo <= t <= hi, "sampled a transition that is gone or incomplete"
        assert not log[t]["final"][e], "sampled from an episode's final observation"
        g, discount, next_obs = _reference(log, t, e, n_step, gamma)
        assert batch.a_tm1[i] == log[t]["a"][e]
        assert batch.r_t[i] == pytest.approx(g, rel=1e-5)
        assert batch.discount_t[i] == pytest.approx(discount, rel=1e-5)
        assert batch.obs_t[i, 0] == next_obs
    assert {int(x) // 100 for x in batch.obs_tm1[:, 0]} >= {hi, lo}  # the whole range is used


def test_prioritized_replay_follows_priorities_and_weights_them() -> None:
    replay = Replay(2 * 50, 2, (1,), np.float32, prioritized=True, alpha=1.0, seed=0)
    _feed(replay, 40, 2, seed=3)
    first = replay.sample(64)
    favorite = first.indices[0]
    td = np.where(first.indices == favorite, 100.0, 0.01)
    replay.update_priorities(first.indices, td)
    batch = replay.sample(512, beta=1.0)
    share = np.mean(batch.indices == favorite)
    assert share > 0.5  # priority 100 against at most ~70 others of ~0.01-1
    # The most sampled transition gets the smallest importance weight.
    assert batch.weights[batch.indices == favorite].max() == pytest.approx(batch.weights.min())
    assert batch.weights.max() == pytest.approx(1.0)


def test_empty_replay_refuses_to_sample() -> None:
    replay = Replay(100, 2, (1,), np.float32, n_step=3)
    with pytest.raises(ValueError, match="no complete transition"):
        replay.sample(4)


# -- Atari: frames stored once, stacks rebuilt exactly -------------------------------------


@pytest.mark.parametrize("capacity", [2 * 1000, 2 * 60])  # no wrap, and wrapped
def test_frame_dedup_rebuilds_exactly_the_observed_stacks(capacity: int) -> None:
    cfg = EnvConfig(id="ALE/Breakout-v5", num_envs=2, max_episode_steps=40, noop_max=5)
    envs = make_vector_env(cfg, 2)
    replay = Replay(capacity, 2, (4, 84, 84), np.uint8, stack=4, n_step=3, seed=0)
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=[0, 2])
    seen = []  # seen[t] = the stacked observations at step t
    for _ in range(150):  # several truncations at 40 steps, plus lost-ball terminations
        actions = rng.integers(4, size=2)
        nxt, r, term, trunc, _ = envs.step(actions)
        replay.add(obs, actions, r, term, trunc)
        seen.append(obs)
        obs = nxt
    envs.close()
    assert replay.frames.shape == (capacity // 2, 2, 84, 84)  # one frame per step
    batch = replay.sample(256)
    lane = replay.lane
    newest_slot = (replay.t - 1) % lane
    bootstrapped = young = 0
    for i, leaf in enumerate(batch.indices):
        slot, e = divmod(int(leaf), 2)
        t = replay.t - 1 - ((newest_slot - slot) % lane)
        np.testing.assert_array_equal(batch.obs_tm1[i], seen[t][e])
        steps = round(np.log(batch.discount_t[i]) / np.log(0.99)) if batch.discount_t[i] else None
        if steps:  # bootstrapped: obs_t is the observation `steps` later
            np.testing.assert_array_equal(batch.obs_t[i], seen[t + steps][e])
            bootstrapped += 1
        young += int(replay.ep_step[slot, e] < 3)  # a stack that repeats the first frame
    # Both kinds of stacks were compared: next observations, and episodes younger than
    # the stack (where the first frame is repeated).
    assert bootstrapped > 128 and young > 0


def test_a_lost_life_cuts_the_return_but_not_the_episode() -> None:
    """Episodic life (the atari preset): a lost life is a learning terminal only. The
    env did not reset, so the slot after it is the real next step (the FIRE that
    launches the next ball), sampleable, and its stack holds the frames the agent saw."""
    cfg = EnvConfig(id="ALE/Breakout-v5", num_envs=2, noop_max=5)
    envs = make_vector_env(cfg, 2)
    replay = Replay(2 * 1000, 2, (4, 84, 84), np.uint8, stack=4, n_step=3, seed=0)
    rng = np.random.default_rng(0)
    obs, info = envs.reset(seed=[0, 2])
    lives, prev_ended = np.asarray(info["lives"]), np.zeros(2, dtype=bool)
    seen, losses = [], []  # seen[t]: what the agent acted on; losses: (t, env) of a lost life
    for t in range(800):
        actions = rng.integers(4, size=2)
        nxt, r, term, trunc, info = envs.step(actions)
        lost, lives = lives_lost(lives, info, prev_ended)
        assert lost is not None
        replay.add(obs, actions, r, term, trunc, lost)
        seen.append(obs)
        losses += [(t, e) for e in np.flatnonzero(lost & ~term)]
        prev_ended = (term | trunc) & ~prev_ended
        obs = nxt
    envs.close()
    assert len(losses) >= 4
    for t, e in losses:
        assert replay.terminated[t, e]  # the n-step return stops here, no bootstrap
        assert not replay.is_final[t + 1, e]  # the step after it is a real transition
        assert replay.ep_step[t + 1, e] == replay.ep_step[t, e] + 1  # same episode
    times = np.arange(3, replay.t - 4)
    for e in (0, 1):  # every stored stack is the observation the agent acted on
        keep = ~replay.is_final[times, e]
        stacks = replay._stacked(times[keep], np.full(keep.sum(), e))
        np.testing.assert_array_equal(stacks, np.stack([seen[t][e] for t in times[keep]]))


@pytest.mark.parametrize(
    ("capacity", "envs", "shape", "dtype", "stack", "prioritized"),
    [
        (1000, 8, (4,), np.float32, 1, False),
        (1000, 8, (4,), np.float32, 1, True),  # a sum tree of 1024 leaves
        (3001, 7, (10, 10, 4), bool, 1, True),  # capacity not a multiple of the envs
        (600, 2, (4, 84, 84), np.uint8, 4, False),  # one frame per slot
    ],
)
def test_the_memory_check_counts_what_the_replay_allocates(
    capacity: int, envs: int, shape: tuple, dtype: type, stack: int, prioritized: bool
) -> None:
    need = replay_bytes(capacity, envs, shape, dtype, stack, prioritized)
    assert need == Replay(capacity, envs, shape, dtype, stack=stack, prioritized=prioritized).nbytes


def test_atari_buffer_memory_is_one_frame_per_transition() -> None:
    capacity = 100_000
    replay = Replay(capacity, 8, (4, 84, 84), np.uint8, stack=4)
    frame_bytes = capacity * 84 * 84  # 705.6 MB
    assert replay.frames.nbytes == frame_bytes
    assert replay.nbytes < 1.05 * frame_bytes  # actions, rewards, flags: a few MB

    # Touch every page and measure what the process really holds.
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    before = rss()
    replay.frames.fill(1)
    grown = rss() - before
    assert grown < 1.05 * frame_bytes
    # The 1M-transition buffer of the atari preset: 7.06 GB, not 56 GB.
    assert Replay(1_000_000, 8, (4, 84, 84), np.uint8, stack=4).frames.nbytes == 7_056_000_000
