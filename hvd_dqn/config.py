"""The run's configuration: frozen dataclasses, one doc line under every field.

A config is built once (preset or YAML file, then `--set section.field=value`
overrides), validated once, and never mutated. Values derived from it (per-rank step
counts, the scaled learning rate) come from pure functions below.

    cfg = load("cartpole", overrides=["learner.lr=5e-4", "run.seed=3"])

No TensorFlow here: the config is read and checked before any heavy import.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml  # type: ignore[import-untyped]


class ConfigError(ValueError):
    """A config value, key or file is wrong; the message is one line naming it."""


def shorten(text: object, keep: int = 80) -> str:
    """A value (a path) for a one-line message: a long one keeps its start and end."""
    text = str(text)
    if len(text) <= keep:
        return text
    return f"{text[: keep // 2]}...{text[-(keep // 2 - 3) :]} ({len(text)} characters)"


NAME_MAX, PATH_MAX = 255, 4096  # Linux, NFS and Lustre: bytes in one name, in a path


def _f(
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[Any, ...] | None = None,
    lo_open: bool = False,
) -> Any:
    """A field with its allowed range (checked by `validate`)."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "lo_open": lo_open}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EnvConfig:
    id: str = "CartPole-v1"
    """Gymnasium id: any env with a Box observation and Discrete actions; ALE/* and MinAtar/* too."""
    num_envs: int = _f(8, lo=1, hi=4096)
    """Environments per rank, stepped together as one vector env."""
    max_episode_steps: int = _f(0, lo=0)
    """Time limit in agent steps (0: the env's own; Atari: one step is frame_skip
    frames); a time-limited episode bootstraps."""
    clip_rewards: bool = False
    """Learn from sign(reward) (returns are still reported raw)."""
    episodic_life: bool = False
    """Atari: a lost life ends the episode for learning, not for reporting or resets."""
    sticky_actions: float = _f(0.25, lo=0.0, hi=1.0)
    """Atari: probability the previous action repeats (ALE v5 default 0.25)."""
    noop_max: int = _f(30, lo=0)
    """Atari: up to this many no-op actions after each reset."""
    frame_skip: int = _f(4, lo=1)
    """Atari: frames per action, max-pooled over the last two."""
    frame_stack: int = _f(4, lo=1, hi=16)
    """Atari: frames stacked into one observation."""
    screen_size: int = _f(84, lo=16, hi=256)
    """Atari: observations are resized to screen_size x screen_size grayscale."""


@dataclass(frozen=True)
class ReplayConfig:
    capacity: int = _f(100_000, lo=1, hi=1 << 34)
    """Transitions held per rank (a ring: the oldest are overwritten); with
    learner.batch_scope global, by all ranks together (each holds capacity / p)."""
    prioritized: bool = False
    """Prioritized replay (Schaul et al. 2016, proportional) instead of uniform."""
    alpha: float = _f(0.6, lo=0.0, hi=1.0)
    """Prioritized: sampling probability is proportional to priority**alpha."""
    beta_start: float = _f(0.4, lo=0.0, hi=1.0)
    """Prioritized: importance-weight exponent at the first update..."""
    beta_end: float = _f(1.0, lo=0.0, hi=1.0)
    """...annealed linearly to this at the last env step."""
    priority_eps: float = _f(1e-6, lo=0.0, lo_open=True)
    """Prioritized: added to |TD error| so no transition has priority 0."""
    n_step: int = _f(1, lo=1, hi=20)
    """Returns over n steps: r_t + g r_t+1 + ... + g^n max_a Q(s_t+n, a)."""


@dataclass(frozen=True)
class NetworkConfig:
    torso: str = _f("auto", choices=("auto", "mlp", "minatar", "nature"))
    """auto: mlp for vectors, minatar for 10x10xC, nature for stacked Atari frames."""
    hidden: tuple[int, ...] = (256, 256)
    """MLP layer widths; for CNN torsos only the last is used (the head width)."""
    dueling: bool = True
    """Dueling head (Wang et al. 2016): Q = V + A - mean(A)."""


@dataclass(frozen=True)
class LearnerConfig:
    gamma: float = _f(0.99, lo=0.0, hi=1.0)
    """Discount factor."""
    lr: float = _f(1e-3, lo=0.0, hi=1.0, lo_open=True)
    """Adam learning rate at one rank (see lr_scaling)."""
    lr_scaling: str = _f("none", choices=("none", "linear", "sqrt"))
    """Learning rate at p ranks with batch_scope rank: lr (none), lr*p (linear),
    lr*sqrt(p) (sqrt); none with batch_scope global (its batch does not grow)."""
    adam_eps: float = _f(1e-8, lo=0.0, hi=1.0, lo_open=True)
    """Adam epsilon at one rank (Atari DQN commonly uses 1.5e-4; see adam_eps_scaling)."""
    adam_eps_scaling: str = _f("none", choices=("none", "inverse"))
    """Adam epsilon at p ranks with batch_scope rank: adam_eps (none) or adam_eps / p
    (inverse: Stooke & Abbeel 2018 set it to 0.01 / B for the global batch B, which is
    batch_size * p); none with batch_scope global (its batch does not grow)."""
    batch_size: int = _f(64, lo=1)
    """Transitions per update: per rank, or for all ranks together (batch_scope)."""
    batch_scope: str = _f("rank", choices=("rank", "global"))
    """rank: every rank samples batch_size and makes replay_ratio updates per env step of
    its own, so p ranks update on a batch p times as large, p times less often per env
    step (lr_scaling raises the learning rate to make up). global: batch_size is the
    batch of all ranks together, each rank samples its share batch_size / p, each rank's
    replay holds its share replay.capacity / p, and the ranks make replay_ratio updates
    per env step of all ranks: the 1-process algorithm, sample for sample, with the
    sampling spread over the ranks' replays (together as old as one process's)."""
    max_grad_norm: float = _f(10.0, lo=0.0)
    """Clip the averaged gradient to this global norm (0: off)."""
    huber_delta: float = _f(1.0, lo=0.0, lo_open=True)
    """Huber loss threshold between its quadratic and linear parts."""
    double_dqn: bool = True
    """Double DQN targets (van Hasselt et al. 2016): online net picks, target net rates."""
    target_update_period: int = _f(500, lo=1)
    """Updates between target-network syncs."""
    tau: float = _f(1.0, lo=0.0, hi=1.0, lo_open=True)
    """At each sync: target = tau * online + (1 - tau) * target (1.0: hard copy)."""
    learning_starts: int = _f(1_000, lo=0)
    """Env steps (all ranks) before the first update."""
    replay_ratio: float = _f(0.25, lo=0.0, lo_open=True)
    """Updates per env step (0.25: one update every 4 steps): of each rank's own env
    steps with batch_scope rank, of all ranks' together with batch_scope global."""
    updates_per_call: int = _f(1, lo=1, hi=64)
    """Updates fused into one compiled call (fewer Python round trips). A loop iteration
    takes as many env steps as owe one call, and votes once (steps_per_iteration)."""
    fp16_allreduce: bool = False
    """Send gradients as float16 in the allreduce (half the bytes)."""


@dataclass(frozen=True)
class ExplorationConfig:
    eps_start: float = _f(1.0, lo=0.0, hi=1.0)
    """Epsilon-greedy epsilon at step 0..."""
    eps_end: float = _f(0.05, lo=0.0, hi=1.0)
    """...decayed linearly to this..."""
    eps_decay_steps: int = _f(10_000, lo=1)
    """...over this many env steps (all ranks), then held."""
    eval_eps: float = _f(0.0, lo=0.0, hi=1.0)
    """Epsilon during evaluation (0: greedy)."""


@dataclass(frozen=True)
class RunConfig:
    seed: int = _f(0, lo=0, hi=2**32 - 1)
    """Seeds the network (same on all ranks) and the envs and replay (different per rank)."""
    total_steps: int = _f(100_000, lo=1)
    """Env steps to train for, summed over all ranks."""
    run_dir: str = ""
    """Where outputs go ("": runs/<env>-seed<seed>)."""
    log_every: int = _f(5_000, lo=1)
    """Env steps (all ranks) between metric lines."""
    eval_every: int = _f(0, lo=0)
    """Env steps (all ranks) between evaluations during training (0: only at the end)."""
    eval_episodes: int = _f(10, lo=1)
    """Episodes per evaluation, split across ranks."""
    stop_at_return: float | None = None
    """Stop as soon as an evaluation's mean return reaches this (None: never)."""
    checkpoint_every: int = _f(50_000, lo=0)
    """Env steps (all ranks) between checkpoints, the points a restarted run continues
    from (0: only at the end and when stopped by a signal or the wall-time limit)."""
    keep_checkpoints: int = _f(2, lo=1, hi=1000)
    """Complete checkpoints kept (the newest; an older one is the fallback if the newest
    is damaged)."""
    save_replay: str = _f("auto", choices=("auto", "always", "never"))
    """Save each rank's replay, RNGs and envs in every checkpoint, so a resumed run goes on
    exactly (auto: when a rank's replay is at most 2 GiB; a 1M Atari replay is 7 GB)."""
    deterministic: bool = False
    """Deterministic TensorFlow ops and one thread per rank: a run stopped and resumed
    ends bit-identical to one that never stopped (same world size)."""
    max_wall_time: float = _f(0.0, lo=0.0)
    """Seconds after which the run checkpoints and exits with code 75 (resume me), ahead
    of a scheduler's time limit (0: no limit)."""
    stall_timeout: float = _f(600.0, lo=0.0)
    """Seconds without progress (a stopped or unreachable rank) after which a rank exits
    with code 1 so the launcher ends the job instead of hanging (0: never)."""
    elastic: bool = False
    """Horovod Elastic (under `horovodrun --min-np/--max-np --host-discovery-script`,
    Gloo): workers may leave and join; the run goes on from its last commit."""
    commit_every: int = _f(100, lo=1)
    """Elastic: updates between commits of the shared state (weights, optimizer,
    counters) to host memory; a lost worker costs at most this much work."""
    progress: bool = True
    """A progress bar on rank 0."""
    threads: int = _f(0, lo=0, hi=256)
    """TensorFlow intra-op threads per rank (0: the host's cores / its ranks; small
    networks run fastest with 1)."""


@dataclass(frozen=True)
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment each rank runs."""
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """Each rank's replay buffer."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    """The Q-network."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The update rule."""
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    """Epsilon-greedy acting."""
    run: RunConfig = field(default_factory=RunConfig)
    """Length, seeds, outputs."""


PRESETS = ("cartpole", "minatar", "atari")

# ---------------------------------------------------------------------------------------
# Building a config from a preset or file plus overrides
# ---------------------------------------------------------------------------------------


def _sections() -> dict[str, type]:
    """{section name: its dataclass}."""
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce(path: str, hint: Any, value: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or raise ConfigError."""
    origin = getattr(hint, "__origin__", None)
    args = getattr(hint, "__args__", ())
    if isinstance(hint, types.UnionType) or (origin is not None and type(None) in args):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        origin = getattr(hint, "__origin__", None)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if not isinstance(number, (int, float)) or number != int(number):
                raise ValueError
            return int(number)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(str(v).strip()) for v in items if str(v).strip())
    except (TypeError, ValueError):
        pass
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config field {path}={value!r}: expected {name}")


def _merge(base: dict[str, dict[str, Any]], updates: Mapping[str, Any], origin: str) -> None:
    """Merge a {section: {field: value}} mapping into `base`, rejecting unknown keys."""
    sections = _sections()
    if not isinstance(updates, Mapping):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(updates).__name__}")
    for section, values in updates.items():
        if section not in sections:
            raise ConfigError(
                f"{origin}: unknown config section {section!r} (known: {', '.join(sections)})"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: section {section} must be a mapping")
        hints = get_type_hints(sections[section])
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"{origin}: unknown config field {section}.{key} (known: {', '.join(hints)})"
                )
            base[section][key] = _coerce(f"{section}.{key}", hints[key], value)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}:{where} is not valid YAML") from None


def _merge_preset(base: dict[str, dict[str, Any]], name: str) -> None:
    """Merge the preset shipped as hvd_dqn/presets/NAME.yaml into `base`."""
    text = resources.files("hvd_dqn").joinpath(f"presets/{name}.yaml").read_text()
    _merge(base, yaml.safe_load(text) or {}, f"preset {name}")


def load(source: str = "cartpole", overrides: Iterable[str] = ()) -> Config:
    """A validated Config from a preset name or a YAML file, then `section.field=value`s.

    A YAML file may start from a preset with a top-level `preset: NAME` key.
    """
    base: dict[str, dict[str, Any]] = {name: {} for name in _sections()}
    if source in PRESETS:
        _merge_preset(base, source)
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(
                f"--config {source}: neither a preset ({', '.join(PRESETS)}) nor an existing file"
            )
        data = _read_yaml(path)
        if isinstance(data, dict) and "preset" in data:
            parent = data.pop("preset")
            if parent not in PRESETS:
                raise ConfigError(
                    f"config file {path}: preset {parent!r} is not one of {', '.join(PRESETS)}"
                )
            _merge_preset(base, parent)
        _merge(base, data, f"config file {path}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        _merge(
            base, {section: {name: yaml.safe_load(raw) if raw.strip() else raw}}, f"--set {item}"
        )
    sections = _sections()
    cfg = Config(**{name: sections[name](**values) for name, values in base.items()})
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def _check_field(path: str, value: Any, meta: Mapping[str, Any]) -> None:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config field {path}={value!r}: must be one of {', '.join(choices)}")
    if value is None or isinstance(value, (str, bool, tuple)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config field {path}={value!r}: must be a finite number")
    op = ">" if meta.get("lo_open") else ">="
    bound = f"{op} {lo}" if hi is None else f"in {'(' if op == '>' else '['}{lo}, {hi}]"
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise ConfigError(f"config field {path}={value!r}: must be {bound}")
    if hi is not None and value > hi:
        raise ConfigError(
            f"config field {path}={value!r}: must be {bound if lo is not None else f'<= {hi}'}"
        )


def validate(cfg: Config) -> None:
    """Check every field's range and the rules that tie fields together."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            _check_field(f"{section.name}.{f.name}", getattr(sub, f.name), f.metadata)
    if not cfg.network.hidden or any(h < 1 for h in cfg.network.hidden):
        raise ConfigError(
            f"config field network.hidden={cfg.network.hidden!r}: "
            f"must be one or more positive widths"
        )
    if cfg.exploration.eps_end > cfg.exploration.eps_start:
        raise ConfigError(
            f"config field exploration.eps_end={cfg.exploration.eps_end}: "
            f"must be <= exploration.eps_start={cfg.exploration.eps_start}"
        )
    if cfg.replay.capacity < _replay_need(cfg):
        raise ConfigError(
            f"config field replay.capacity={cfg.replay.capacity}: must hold at least "
            f"{_replay_need(cfg) // cfg.env.num_envs} steps per env ({_replay_need(cfg)} "
            f"with env.num_envs={cfg.env.num_envs})"
        )
    path = os.fsencode(cfg.run.run_dir)
    if len(path) >= PATH_MAX or max(map(len, path.split(b"/"))) > NAME_MAX:
        raise ConfigError(
            f"config field run.run_dir={shorten(cfg.run.run_dir)!r}: too long (a path may "
            f"have {PATH_MAX - 1} bytes, each name in it {NAME_MAX})"
        )
    for rule in ("lr_scaling", "adam_eps_scaling"):
        value = getattr(cfg.learner, rule)
        if cfg.learner.batch_scope == "global" and value != "none":
            raise ConfigError(
                f"config field learner.{rule}={value}: must be none with "
                f"learner.batch_scope=global (the global batch does not grow with the ranks; "
                f"add --set learner.{rule}=none)"
            )
    if cfg.learner.batch_scope == "global" and cfg.run.elastic:
        raise ConfigError(
            "config field learner.batch_scope=global: not supported with run.elastic "
            "(the share of each rank would change with the world); use batch_scope rank"
        )
    if cfg.run.stop_at_return is not None and not math.isfinite(cfg.run.stop_at_return):
        raise ConfigError(
            f"config field run.stop_at_return={cfg.run.stop_at_return}: must be a finite number"
        )


# ---------------------------------------------------------------------------------------
# Derived values (pure)
# ---------------------------------------------------------------------------------------


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), for YAML/JSON."""
    out = dataclasses.asdict(cfg)
    for values in out.values():
        for k, v in values.items():
            if isinstance(v, tuple):
                values[k] = list(v)
    return out


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML; `load(path)` of it gives the same config back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# Fields a continued run may change (everything else must match the run's config.yaml).
RESUMABLE = (
    "run.total_steps",
    "run.progress",
    "run.run_dir",
    "run.max_wall_time",
    "run.stall_timeout",
    "run.keep_checkpoints",
    "run.elastic",
    "run.commit_every",
)


def changed_fields(old: Config, new: Config) -> list[str]:
    """section.field names whose values differ between two configs (RESUMABLE excluded)."""
    a, b = to_dict(old), to_dict(new)
    return [
        f"{section}.{key}"
        for section in a
        for key in a[section]
        if a[section][key] != b[section][key] and f"{section}.{key}" not in RESUMABLE
    ]


def run_dir(cfg: Config) -> Path:
    """The run directory: run.run_dir, or runs/<env>-seed<seed>."""
    if cfg.run.run_dir:
        return Path(cfg.run.run_dir)
    return Path("runs") / f"{cfg.env.id.replace('/', '_')}-seed{cfg.run.seed}"


def scaled_lr(cfg: LearnerConfig, world_size: int) -> float:
    """lr at p ranks: lr, lr * p or lr * sqrt(p), by lr_scaling.

    The per-rank batch is fixed, so the global batch is batch_size * p; the linear rule
    keeps the step per sample constant (Goyal et al. 2017), the sqrt rule keeps the
    gradient noise scale (Krizhevsky 2014); Stooke & Abbeel (2018) scaled DQN this way.
    """
    factor = {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}
    return cfg.lr * factor[cfg.lr_scaling]


def scaled_eps(cfg: LearnerConfig, world_size: int) -> float:
    """Adam's epsilon at p ranks: adam_eps, or adam_eps / p (adam_eps_scaling inverse).

    Adam's step is lr * m / (sqrt(v) + eps). A p-times larger batch has up to sqrt(p)
    times less gradient noise, so sqrt(v) is smaller and a fixed epsilon damps the step
    more than it did at one rank; Stooke & Abbeel (2018) set epsilon to 0.01 / B."""
    return cfg.adam_eps / (world_size if cfg.adam_eps_scaling == "inverse" else 1)


def rank_batch(cfg: LearnerConfig, world_size: int) -> int:
    """Transitions each rank samples per update: batch_size (batch_scope rank) or its
    share batch_size / p (global; ConfigError unless p divides it, so that the ranks'
    mean gradient is the gradient of the whole batch)."""
    if cfg.batch_scope == "rank":
        return cfg.batch_size
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"config field learner.batch_size={cfg.batch_size}: with batch_scope global it "
            f"must be a multiple of the {world_size} ranks (each samples an equal share)"
        )
    return cfg.batch_size // world_size


def _replay_need(cfg: Config) -> int:
    """The fewest transitions a rank's replay can hold: n-step + frame stack + 2 steps
    in each env's lane."""
    return (cfg.replay.n_step + cfg.env.frame_stack + 2) * cfg.env.num_envs


def rank_capacity(cfg: Config, world_size: int) -> int:
    """Transitions each rank's replay holds: replay.capacity (batch_scope rank) or its
    share capacity // p (global; ConfigError if a share is below what the envs need)."""
    if cfg.learner.batch_scope == "rank":
        return cfg.replay.capacity
    share = cfg.replay.capacity // world_size
    if share < _replay_need(cfg):
        raise ConfigError(
            f"config field replay.capacity={cfg.replay.capacity}: with batch_scope global "
            f"each of the {world_size} ranks holds {share}, fewer than the "
            f"{_replay_need(cfg)} its {cfg.env.num_envs} envs need"
        )
    return share


def updates_per_step(cfg: LearnerConfig, num_envs: int, world_size: int) -> float:
    """Updates owed per vector step (num_envs env steps on each of p ranks):
    replay_ratio x num_envs (batch_scope rank: per env step of each rank) or
    replay_ratio x num_envs x p (global: per env step of all ranks, as one process)."""
    steps = num_envs * (world_size if cfg.batch_scope == "global" else 1)
    return steps * cfg.replay_ratio


def steps_per_iteration(cfg: Config, world_size: int) -> int:
    """Vector steps in one loop iteration: as many as owe one compiled call of
    updates_per_call updates (at least 1). Each iteration ends in one vote, a collective
    that every rank waits for, so the loop pays it once per call rather than once per
    vector step (MinAtar: 1 update per step, 4 per call: a quarter of the votes)."""
    per_step = updates_per_step(cfg.learner, cfg.env.num_envs, world_size)
    return max(1, math.floor(cfg.learner.updates_per_call / per_step + 1e-9))


def with_overrides(cfg: Config, **sections: Mapping[str, Any]) -> Config:
    """A new validated Config with some fields replaced (the old one is untouched)."""
    replaced = {
        name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()
    }
    new = dataclasses.replace(cfg, **replaced)
    validate(new)
    return new
