"""Config: presets, YAML files, overrides, validation messages, immutability."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hvd_dqn.config import (
    PRESETS,
    ConfigError,
    LearnerConfig,
    changed_fields,
    load,
    scaled_eps,
    scaled_lr,
    to_yaml,
)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_round_trip_through_the_run_dirs_config_yaml(tmp_path: Path, preset: str) -> None:
    cfg = load(preset)
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    again = load(str(tmp_path / "config.yaml"))
    assert again == cfg and changed_fields(cfg, again) == []
    assert cfg != load("cartpole" if preset != "cartpole" else "minatar")


def test_changed_fields_name_what_a_continued_run_may_not_change() -> None:
    cfg = load("cartpole")
    other = load("cartpole", ["learner.lr=0.01", "run.total_steps=5", "run.max_wall_time=60"])
    assert changed_fields(cfg, other) == ["learner.lr"]  # total_steps and limits may change


def test_preset_values() -> None:
    assert load("cartpole").env.id == "CartPole-v1"
    assert load("minatar").network.torso == "minatar"
    atari = load("atari")
    assert (atari.env.clip_rewards, atari.network.torso, atari.replay.capacity) == (
        True,
        "nature",
        1_000_000,
    )


def test_overrides_are_typed() -> None:
    cfg = load(
        "cartpole",
        [
            "learner.lr=5e-4",
            "network.hidden=64,32",
            "replay.prioritized=true",
            "run.stop_at_return=none",
            "run.total_steps=2e4",
        ],
    )
    assert cfg.learner.lr == 5e-4
    assert cfg.network.hidden == (64, 32)
    assert cfg.replay.prioritized is True
    assert cfg.run.stop_at_return is None
    assert cfg.run.total_steps == 20_000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learner.lr=-1", "config field learner.lr=-1.0: must be in (0.0, 1.0]"),
        ("learner.gamma=1.5", "config field learner.gamma=1.5: must be in [0.0, 1.0]"),
        ("replay.capacity=abc", "config field replay.capacity='abc': expected int"),
        ("replay.capacity=2.5", "config field replay.capacity=2.5: expected int"),
        ("network.torso=resnet", "config field network.torso='resnet': must be one of"),
        ("learner.lrr=1", "unknown config field learner.lrr"),
        ("trainer.lr=1", "unknown config section 'trainer'"),
        ("learner.lr", "expected section.field=value"),
        ("replay.capacity=16", "config field replay.capacity=16: must hold at least"),
        (
            "exploration.eps_start=0.005",
            "exploration.eps_end=0.01: must be <= exploration.eps_start",
        ),
        ("learner.lr=nan", "config field learner.lr=nan: must be a finite number"),
    ],
)
def test_bad_values_name_the_field_and_the_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load("cartpole", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_file_with_preset_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("preset: minatar\nenv:\n  id: MinAtar/Asterix-v1\nlearner:\n  lr: 1.0e-4\n")
    cfg = load(str(path))
    assert cfg.env.id == "MinAtar/Asterix-v1" and cfg.learner.lr == 1e-4
    assert cfg.network.torso == "minatar"  # from the preset
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(to_yaml(cfg))
    assert load(str(resolved)) == cfg


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a preset"):
        load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("env:\n  id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load(str(bad))
    bad.write_text("env: 3\n")
    with pytest.raises(ConfigError, match="section env must be a mapping"):
        load(str(bad))


def test_config_is_frozen() -> None:
    cfg = load("cartpole")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.learner.lr = 1.0  # type: ignore[misc]


def test_learning_rate_scaling_rules() -> None:
    assert scaled_lr(LearnerConfig(lr=1e-3), 8) == 1e-3
    assert scaled_lr(LearnerConfig(lr=1e-3, lr_scaling="linear"), 8) == pytest.approx(8e-3)
    assert scaled_lr(LearnerConfig(lr=1e-3, lr_scaling="sqrt"), 4) == pytest.approx(2e-3)


def test_adam_epsilon_scaling_rules() -> None:
    assert scaled_eps(LearnerConfig(adam_eps=3.2e-4), 8) == 3.2e-4
    inverse = LearnerConfig(adam_eps=3.2e-4, adam_eps_scaling="inverse")
    assert (scaled_eps(inverse, 1), scaled_eps(inverse, 8)) == (3.2e-4, pytest.approx(4e-5))


def test_an_iteration_takes_the_steps_that_owe_one_compiled_call() -> None:
    from hvd_dqn.config import steps_per_iteration

    minatar = load("minatar")  # 4 envs x replay_ratio 0.25: 1 update per step, 4 per call
    assert steps_per_iteration(minatar, 1) == steps_per_iteration(minatar, 8) == 4
    shared = load("minatar", ["learner.batch_scope=global", "learner.lr_scaling=none"])
    assert [steps_per_iteration(shared, p) for p in (1, 2, 4, 8)] == [4, 2, 1, 1]
    assert steps_per_iteration(load("cartpole"), 1) == 1  # 8 x 0.5 = 4 per step, 4 per call
    # A remainder stays in the update debt: 0.3 per step, 10 per call -> 33 steps.
    odd = load("minatar", ["learner.replay_ratio=0.075", "learner.updates_per_call=10"])
    assert steps_per_iteration(odd, 1) == 33
    # 4 // 0.4 is 9.0 in floating point; 0.4 updates per step owe 4 in 10 steps.
    assert steps_per_iteration(load("minatar", ["learner.replay_ratio=0.1"]), 1) == 10


def test_global_batch_shares_and_update_rates() -> None:
    from hvd_dqn.config import rank_batch, updates_per_step

    per_rank = load("cartpole").learner  # batch 128, replay_ratio 0.5
    shared = load("cartpole", ["learner.batch_scope=global"]).learner
    assert (rank_batch(per_rank, 4), rank_batch(shared, 4)) == (128, 32)
    assert (updates_per_step(per_rank, 8, 4), updates_per_step(shared, 8, 4)) == (4, 16)
    with pytest.raises(
        ConfigError,
        match="batch_size=128: with batch_scope global it must be a multiple of the 3 ranks",
    ):
        rank_batch(shared, 3)
    # The replay too: each of p ranks holds replay.capacity / p in the global scope.
    from hvd_dqn.config import rank_capacity

    cfg = load("cartpole", ["learner.batch_scope=global", "replay.capacity=1000"])
    assert (rank_capacity(cfg, 1), rank_capacity(cfg, 4)) == (1000, 250)
    assert rank_capacity(load("cartpole", ["replay.capacity=1000"]), 4) == 1000
    with pytest.raises(
        ConfigError,
        match=r"replay\.capacity=1000: with batch_scope global each of the 40 ranks holds 25, "
        r"fewer than the 144 its 8 envs need",
    ):
        rank_capacity(cfg, 40)
    with pytest.raises(
        ConfigError,
        match=r"learner\.lr_scaling=sqrt: must be none with learner\.batch_scope=global",
    ):
        load("cartpole", ["learner.batch_scope=global", "learner.lr_scaling=sqrt"])
    with pytest.raises(
        ConfigError,
        match=r"learner\.adam_eps_scaling=inverse: must be none with learner\.batch_scope=global",
    ):
        load("cartpole", ["learner.batch_scope=global", "learner.adam_eps_scaling=inverse"])
    with pytest.raises(ConfigError, match=r"batch_scope=global: not supported with run\.elastic"):
        load("cartpole", ["learner.batch_scope=global", "run.elastic=true"])
