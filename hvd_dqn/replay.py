"""Each rank's replay: a preallocated numpy ring, uniform or prioritized, with n-step returns.

Layout. The buffer keeps one "lane" per env of the rank's vector env, L = capacity //
num_envs slots long. Every vector step writes one slot in every lane: the observation
the action was taken in, the action, the reward that followed and the episode-end
flags. The next observation is simply the next slot of the same lane, so each
observation is stored once. With gymnasium's NEXT_STEP autoreset, the step after an
episode ends hands back the final observation (the action is ignored); it is stored as
a slot marked `is_final`, from which no transition starts.

Stacked frames (Atari) store only the newest frame of each observation, 84x84 uint8;
a stack is rebuilt from the k - 1 slots before it, repeating the episode's first frame
where the episode is younger than k (what gymnasium's FrameStackObservation does at a
reset). A 1M-transition Atari buffer is 1M x 84 x 84 bytes = 7.06 GB instead of the
56 GB of storing both stacked observations.

A transition at time t of lane e is sampleable when its n steps and its stack are all
still in the ring: oldest + k - 1 <= t <= newest - n.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from hvd_dqn.config import ConfigError
from hvd_dqn.dqn import importance_weights, n_step_returns
from hvd_dqn.memory import memory_limit


class Batch(NamedTuple):
    """A replay sample, shaped [B, ...]."""

    obs_tm1: np.ndarray  # [B, *obs_shape] the state the action was taken in
    a_tm1: np.ndarray  # [B] int32
    r_t: np.ndarray  # [B] float32 n-step return G
    discount_t: np.ndarray  # [B] float32 gamma^m, or 0 after a termination
    obs_t: np.ndarray  # [B, *obs_shape] the state m steps later
    weights: np.ndarray  # [B] float32 importance weights (1 for uniform replay)
    indices: np.ndarray  # [B] int64 leaf index (slot * num_envs + lane), for priorities

    def split(self, k: int) -> list[Batch]:
        """k batches of B / k, batch i holding rows i, i + k, ...: from a stratified
        prioritized sample, each one spans the whole priority range."""
        return [Batch(*(x[i::k] for x in self)) for i in range(k)]


class SumTree:
    """A complete binary tree whose internal nodes hold the sum of their children.

    Leaf i holds a priority; `find(u)` returns the leaf where the running sum of
    priorities first exceeds u, so u ~ Uniform[0, total) picks leaf i with probability
    p_i / total in O(log n). All operations take arrays (one numpy pass per level).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.capacity = self.leaves_for(size)
        self.nodes = np.zeros(2 * self.capacity, dtype=np.float64)  # root at 1

    @staticmethod
    def leaves_for(size: int) -> int:
        """The tree's leaf count for `size` priorities: the next power of two."""
        return 1 << max(0, (size - 1).bit_length())

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, leaves: np.ndarray) -> np.ndarray:
        return self.nodes[self.capacity + np.asarray(leaves)]

    def set(self, leaves: np.ndarray, values: np.ndarray) -> None:
        """Set leaves (a repeated leaf takes its last value) and re-sum their ancestors."""
        node = self.capacity + np.asarray(leaves, dtype=np.int64)
        self.nodes[node] = values
        # A node listed twice is computed twice from the same children: the same sum, so
        # no de-duplication is needed (np.unique per level cost more than the repeats).
        for _ in range(self.capacity.bit_length() - 1):  # every level above the leaves
            node //= 2
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]

    def find(self, targets: np.ndarray) -> np.ndarray:
        node = np.ones(len(targets), dtype=np.int64)
        u = np.asarray(targets, dtype=np.float64).copy()
        while node[0] < self.capacity:
            left = 2 * node
            go_right = u >= self.nodes[left]
            u -= np.where(go_right, self.nodes[left], 0.0)
            node = left + go_right
        return node - self.capacity


def _arrays(
    capacity: int,
    num_envs: int,
    obs_shape: tuple[int, ...],
    obs_dtype: np.dtype | type,
    stack: int,
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The replay's arrays, name -> (shape, dtype), each [capacity // num_envs, num_envs,
    ...]: the newest frame of each step (the whole observation when nothing is stacked),
    the action, the reward, three flags and the step's place in its episode."""
    slots = (capacity // num_envs, num_envs)
    frame_shape = tuple(obs_shape[1:]) if stack > 1 else tuple(obs_shape)
    flag = (slots, np.dtype(bool))
    return {
        "frames": (slots + frame_shape, np.dtype(obs_dtype)),
        "actions": (slots, np.dtype(np.int32)),
        "rewards": (slots, np.dtype(np.float32)),
        "terminated": flag,
        "truncated": flag,
        "is_final": flag,
        "ep_step": (slots, np.dtype(np.int32)),  # steps since the episode's reset obs
    }


def replay_bytes(
    capacity: int,
    num_envs: int,
    obs_shape: tuple[int, ...],
    obs_dtype: np.dtype | type,
    stack: int = 1,
    prioritized: bool = False,
) -> int:
    """What `Replay(capacity, num_envs, obs_shape, obs_dtype, stack=stack,
    prioritized=prioritized)` allocates, in bytes, before allocating it: its arrays
    (`_arrays`, the one description of the layout) and, prioritized, the sum tree's
    2 x 2^ceil(log2 n) float64 nodes over its n slots."""
    arrays = _arrays(capacity, num_envs, obs_shape, obs_dtype, stack)
    sizes = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in arrays.values())
    slots = (capacity // num_envs) * num_envs
    return sizes + (2 * SumTree.leaves_for(slots) * 8 if prioritized else 0)


_USE_MEMORY = 0.8  # a rank's replay may take at most this share of its host's free memory


def check_replay_fits(need: int, capacity: int, ranks_here: int) -> int:
    """`need`, the replay's bytes per rank (replay_bytes); ConfigError before allocation
    when this host's ranks together would need more than 80 % of the memory the job may
    use here: the smallest of the host's, its cgroup's and SLURM's (memory.py), named."""
    free, source = memory_limit()
    if free and need * ranks_here > _USE_MEMORY * free:
        raise ConfigError(
            f"config field replay.capacity={capacity}: the replay needs {need / 2**30:.1f} GiB "
            f"per rank x {ranks_here} ranks on this host, more than 80 % of the "
            f"{free / 2**30:.1f} GiB {source}"
        )
    return need


class Replay:
    """Per-rank replay over `num_envs` lanes; see the module docstring for the layout."""

    # Allocated from `_arrays`, each [lane, num_envs, ...].
    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    is_final: np.ndarray
    ep_step: np.ndarray

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype | type,
        *,
        stack: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        prioritized: bool = False,
        alpha: float = 0.6,
        priority_eps: float = 1e-6,
        seed: int | list[int] = 0,
    ) -> None:
        self.lane = capacity // num_envs
        if self.lane < n_step + stack + 2:
            raise ValueError(f"replay capacity {capacity} too small for {num_envs} envs")
        self.num_envs, self.stack, self.n_step, self.gamma = num_envs, stack, n_step, gamma
        self.obs_shape = tuple(obs_shape)
        layout = _arrays(capacity, num_envs, self.obs_shape, obs_dtype, stack)
        for name, (shape, dtype) in layout.items():
            setattr(self, name, np.zeros(shape, dtype=dtype))
        self.t = 0  # vector steps added so far
        self._next_ep_step = np.zeros(num_envs, dtype=np.int32)
        self._prev_ended = np.zeros(num_envs, dtype=bool)
        self.prioritized, self.alpha, self.priority_eps = prioritized, alpha, priority_eps
        self.tree = SumTree(self.lane * num_envs) if prioritized else None
        self.max_priority = 1.0
        self.rng = np.random.default_rng(seed)

    @property
    def nbytes(self) -> int:
        tree = self.tree.nodes.nbytes if self.tree is not None else 0
        return sum(getattr(self, name).nbytes for name in self._ARRAYS) + tree

    def _bounds(self) -> tuple[int, int]:
        """Oldest and newest sampleable time (inclusive)."""
        lo = self.t - self.lane + self.stack - 1 if self.t > self.lane else 0
        return lo, self.t - 1 - self.n_step

    def __len__(self) -> int:
        """Sampleable transitions (final observations included in the count)."""
        lo, hi = self._bounds()
        return max(0, hi - lo + 1) * self.num_envs

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        life_lost: np.ndarray | None = None,
    ) -> None:
        """Store one vector step: obs [E, ...] the actions [E] were taken in, and the
        rewards and episode-end flags [E] that env.step returned.

        life_lost [E] (Atari's episodic life): a terminal for learning only. The n-step
        return stops there with no bootstrap, but the episode goes on: the next slot is
        the env's real next step (the FIRE after a lost life in Breakout), not an
        episode's first observation, and frame stacks keep running across it. Episode
        boundaries follow the env's own terminated | truncated alone."""
        c = self.t
        s = c % self.lane
        is_final = self._prev_ended  # obs is an episode's last; the env ignores the action
        self.frames[s] = obs[:, -1] if self.stack > 1 else obs
        self.actions[s] = actions
        self.rewards[s] = rewards
        self.terminated[s] = terminated if life_lost is None else terminated | life_lost
        self.truncated[s] = truncated
        self.is_final[s] = is_final
        self.ep_step[s] = self._next_ep_step
        self._next_ep_step = np.where(is_final, 0, self._next_ep_step + 1).astype(np.int32)
        self._prev_ended = (terminated | truncated) & ~is_final
        self.t = c + 1
        if self.tree is not None:
            lanes = np.arange(self.num_envs)
            if c + 1 > self.lane:  # the transition whose stack reached the overwritten slot
                gone = (c + self.stack - 1) % self.lane
                self.tree.set(gone * self.num_envs + lanes, np.zeros(self.num_envs))
            ready = c - self.n_step  # its n steps are all stored now
            if ready >= 0:
                r = ready % self.lane
                p = np.where(self.is_final[r], 0.0, self.max_priority**self.alpha)
                self.tree.set(r * self.num_envs + lanes, p)

    # -- sampling -------------------------------------------------------------------

    def _stacked(self, times: np.ndarray, lanes: np.ndarray) -> np.ndarray:
        """Observations at (times, lanes), stacks rebuilt: [B, *obs_shape]."""
        slots = times % self.lane
        if self.stack == 1:
            return self.frames[slots, lanes]
        age = self.ep_step[slots, lanes]  # [B]
        out = np.empty((len(times), *self.obs_shape), dtype=self.frames.dtype)
        for j in range(self.stack):  # j frames back from the newest
            back = np.minimum(j, age)
            out[:, self.stack - 1 - j] = self.frames[(times - back) % self.lane, lanes]
        return out

    def _sample_uniform(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._bounds()
        times = np.empty(0, dtype=np.int64)
        lanes = np.empty(0, dtype=np.int64)
        while len(times) < batch_size:  # reject final observations (a few % at most)
            t = self.rng.integers(lo, hi + 1, size=batch_size)
            e = self.rng.integers(self.num_envs, size=batch_size)
            keep = ~self.is_final[t % self.lane, e]
            times, lanes = np.concatenate([times, t[keep]]), np.concatenate([lanes, e[keep]])
        return times[:batch_size], lanes[:batch_size]

    def sample(
        self, batch_size: int, beta: float = 0.4, batch_max: Callable[[float], float] = float
    ) -> Batch:
        """A batch of n-step transitions (prioritized: with importance weights at beta,
        normalized by `batch_max` of their largest: see dqn.importance_weights)."""
        lo, hi = self._bounds()
        if hi < lo:
            raise ValueError("replay holds no complete transition yet")
        if self.tree is None:
            times, lanes = self._sample_uniform(batch_size)
            weights = np.ones(batch_size, dtype=np.float32)
            leaves = (times % self.lane) * self.num_envs + lanes
        else:
            # Stratified: one draw from each of batch_size equal slices of the total.
            total = self.tree.total
            u = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
            leaves = self.tree.find(np.minimum(u, np.nextafter(total, 0)))
            prio = self.tree.get(leaves)
            if (prio <= 0).any():  # float round-off at a slice edge: take a valid pick
                leaves = np.where(prio > 0, leaves, leaves[np.argmax(prio)])
                prio = self.tree.get(leaves)
            weights = importance_weights(prio / total, len(self), beta, batch_max)
            slots, lanes = leaves // self.num_envs, leaves % self.num_envs
            newest_slot = (self.t - 1) % self.lane
            # slot -> absolute time: the latest time <= t - 1 stored in that slot
            times = self.t - 1 - ((newest_slot - slots) % self.lane)
        steps = times[:, None] + np.arange(self.n_step)  # [B, N]
        idx = (steps % self.lane, lanes[:, None])
        g, discount, m = n_step_returns(
            self.rewards[idx], self.terminated[idx], self.truncated[idx], self.gamma
        )
        return Batch(
            obs_tm1=self._stacked(times, lanes),
            a_tm1=self.actions[times % self.lane, lanes],
            r_t=g,
            discount_t=discount,
            obs_t=self._stacked(times + m, lanes),
            weights=weights,
            indices=leaves.astype(np.int64),
        )

    def empty_batch(self, batch_size: int) -> Batch:
        """A batch of zeros with zero weights: what an elastic rank that has no
        transitions yet feeds the update it must take part in (its gradient is 0)."""
        zeros = np.zeros(batch_size, dtype=np.float32)
        obs = np.zeros((batch_size, *self.obs_shape), dtype=self.frames.dtype)
        return Batch(
            obs_tm1=obs,
            a_tm1=np.zeros(batch_size, dtype=np.int32),
            r_t=zeros,
            discount_t=zeros,
            obs_t=obs,
            weights=zeros,
            indices=np.full(batch_size, -1, dtype=np.int64),
        )

    def update_priorities(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        """p_i = |delta_i| + eps, stored as p_i^alpha (Schaul et al. 2016, section 3.3).

        A non-finite |delta| is refused: one NaN leaf makes every sum above it NaN and
        every later sample leaf 0. (The trainer stops the run on a non-finite TD error
        before it gets here.)
        """
        if self.tree is None:
            return
        p = np.abs(td_abs).astype(np.float64) + self.priority_eps
        if not np.isfinite(p).all():
            raise ValueError("non-finite TD error: priorities left unchanged")
        self.tree.set(indices, p**self.alpha)
        self.max_priority = max(self.max_priority, float(p.max()))

    # -- saving and restoring (checkpoint.py) ----------------------------------------

    _ARRAYS = ("frames", "actions", "rewards", "terminated", "truncated", "is_final", "ep_step")

    def state(self) -> dict[str, np.ndarray]:
        """Everything that defines the buffer's future, as named arrays: the ring, the
        write position, the episode bookkeeping, the priorities and the sampling RNG.
        Only the `t` written slots are kept (a young buffer saves what it holds)."""
        used = min(self.t, self.lane)
        out = {name: getattr(self, name)[:used] for name in self._ARRAYS}
        out["t"] = np.int64(self.t)
        out["next_ep_step"] = self._next_ep_step
        out["prev_ended"] = self._prev_ended
        out["max_priority"] = np.float64(self.max_priority)
        out["rng"] = rng_state(self.rng)
        if self.tree is not None:
            out["tree"] = self.tree.nodes
        return out

    def load_state(self, saved: dict[str, np.ndarray]) -> None:
        """Put back what `state()` returned (same capacity, envs and shapes)."""
        t = int(saved["t"])
        used = min(t, self.lane)
        for name in self._ARRAYS:
            target = getattr(self, name)
            if saved[name].shape != (used, *target.shape[1:]):
                raise ValueError(f"replay {name}: shape {saved[name].shape} does not fit")
            target[:used] = saved[name]
        self.t = t
        self._next_ep_step = np.array(saved["next_ep_step"], dtype=np.int32)
        self._prev_ended = np.array(saved["prev_ended"], dtype=bool)
        self.max_priority = float(saved["max_priority"])
        set_rng_state(self.rng, saved["rng"])
        if self.tree is not None:
            self.tree.nodes[:] = saved["tree"]

    def cut_episodes(self, next_obs: np.ndarray) -> None:
        """End every lane's episode here as a time-limit truncation (it bootstraps from
        `next_obs`, stored as the final observation): for a resume whose envs restart
        from new episodes while the replay goes on."""
        if self.t == 0:
            return
        s = (self.t - 1) % self.lane
        open_ = ~self._prev_ended  # the lanes whose last step did not end their episode
        self.truncated[s] |= open_
        self._prev_ended = self._prev_ended | open_
        zeros = np.zeros(self.num_envs)
        self.add(next_obs, zeros.astype(np.int32), zeros, zeros.astype(bool), zeros.astype(bool))


def rng_state(rng: np.random.Generator) -> np.ndarray:
    """A numpy Generator's full state as a JSON string in a 0-d array (for .npz files)."""
    return np.array(json.dumps(rng.bit_generator.state))


def set_rng_state(rng: np.random.Generator, saved: np.ndarray) -> None:
    rng.bit_generator.state = json.loads(str(saved))
