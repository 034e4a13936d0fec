"""Benchmarks that print tables and write JSON: act, update, scaling, solve.

    hvd-dqn bench act      [--json F]   env steps/s per rank by envs per rank
    hvd-dqn bench update   [--json F]   ms per update, compute vs allreduce, 1 vs 2 ranks,
                                        its FLOPs and share of this core's matmul rate
    hvd-dqn bench scaling  [--json F]   aggregate throughput at 1 and 2 ranks
    hvd-dqn bench solve --seeds 0,1,2 [--np 2] [--json F]   time to solve CartPole-v1
    hvd-dqn bench scaling-to-score --config minatar [--ranks 1,2] [--json F]
                                        time and env steps to the preset's score by
                                        world size and batch scope, p ranks on p cores
    hvd-dqn bench faults   [--json F]   signals, deaths, stalls: seconds until every rank
                                        exited, exit code, checkpoint left

Multi-rank figures come from real `horovodrun -np N` runs started by the bench itself,
so each table compares 1 process and N ranks measured side by side. Timings are the
median of several repeats; the machine is shared, so repeat a bench before trusting a
difference of a few percent.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hvd_dqn.config import load
from hvd_dqn.files import atomic_write, read_rows

BIN = Path(sys.executable).parent


def _median_time(fn: Callable[[], Any], repeats: int, number: int) -> float:
    """Median over `repeats` of the mean seconds of one call, over `number` calls."""
    fn()  # warm-up (tracing)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True))
        for r in rows
    ]
    return "\n".join(lines)


def _write(path: str | None, data: dict[str, Any]) -> None:
    if path:
        atomic_write(Path(path), json.dumps(data, indent=2))
        print(f"wrote {path}")


def _quiet_env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def _horovodrun(np_: int, args: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), str(BIN / "hvd-dqn"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_quiet_env(), timeout=timeout)
    if proc.returncode != 0:
        lines = (proc.stderr + proc.stdout).splitlines()
        # hvd-dqn's own one-line error, else the launcher's last words
        ours = [line for line in lines if "hvd-dqn: error:" in line or "Error" in line]
        tail = ours[-3:] or lines[-5:]
        raise RuntimeError(f"{' '.join(cmd)} failed: {' | '.join(tail)}")
    return proc


# ---------------------------------------------------------------------------------------
# act: batched action selection + vector env step
# ---------------------------------------------------------------------------------------


def bench_act(json_path: str | None, steps: int = 2000) -> dict[str, Any]:
    from hvd_dqn import distributed
    from hvd_dqn.config import EnvConfig, NetworkConfig
    from hvd_dqn.dqn import epsilon_greedy
    from hvd_dqn.envs import env_seeds, make_vector_env, reset
    from hvd_dqn.networks import QNetwork

    distributed.init(threads=1)
    cases: list[tuple[str, int, tuple[int, ...]]] = [
        ("CartPole-v1", n, (64, 64)) for n in (1, 8, 32, 128)
    ]
    cases += [("ALE/Pong-v5", n, (512,)) for n in (1, 4, 8)]
    rows = []
    rng = np.random.default_rng(0)
    for env_id, n, hidden in cases:
        import tensorflow as tf

        envs = make_vector_env(EnvConfig(id=env_id), n)
        space = envs.single_observation_space
        shape = tuple(space.shape or ())
        actions = int(envs.single_action_space.n)  # type: ignore[attr-defined]
        net = QNetwork(shape, actions, NetworkConfig(hidden=hidden), seed=0)
        spec = tf.TensorSpec([None, *shape], space.dtype)
        # Called as the learner calls it: through a concrete function.
        greedy = tf.function(
            lambda o: tf.argmax(net(o), axis=1),  # noqa: B023 (traced right here)
            input_signature=[spec],
        ).get_concrete_function()
        obs = reset(envs, env_seeds(0, 0, n))
        iters = max(20, steps // n) if env_id.startswith("CartPole") else max(10, 400 // n)
        for _ in range(5):  # warm-up
            obs, *_ = envs.step(greedy(obs).numpy())
        t0 = time.perf_counter()
        for _ in range(iters):
            obs, *_ = envs.step(epsilon_greedy(greedy(obs).numpy(), actions, 0.05, rng))
        seconds = time.perf_counter() - t0
        envs.close()
        rows.append(
            {
                "env": env_id,
                "envs_per_rank": n,
                "env_steps_per_s": iters * n / seconds,
                "us_per_vector_step": 1e6 * seconds / iters,
            }
        )
    print(_table(rows, ["env", "envs_per_rank", "env_steps_per_s", "us_per_vector_step"]))
    result = {"bench": "act", "rows": rows}
    _write(json_path, result)
    return result


# ---------------------------------------------------------------------------------------
# update: compute vs allreduce, 1 process vs N ranks
# ---------------------------------------------------------------------------------------

UPDATE_CASES: list[tuple[str, tuple[int, ...], str, int, tuple[int, ...], int]] = [
    ("mlp", (4,), "float32", 2, (64, 64), 128),  # the cartpole preset
    ("mlp", (4,), "float32", 2, (64, 64), 512),
    ("minatar", (10, 10, 4), "bool", 3, (128,), 32),  # the minatar preset (Breakout)
    ("minatar", (10, 10, 4), "bool", 3, (128,), 16),  # its share at 2 ranks, global batch
    ("nature", (4, 84, 84), "uint8", 6, (512,), 32),
]


def update_flops(forward_flops: int, batch: int) -> int:
    """FLOPs of one DQN update: three forward passes over the batch (online on s_tm1
    and s_t, target on s_t) and the backward pass of the first, about twice its
    forward (the weights' and the inputs' gradients): 5 x batch x forward."""
    return 5 * batch * forward_flops


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This thread's float32 matmul rate (GFLOP/s) at n x n, n=1024: the roof the
    update is measured against (TensorFlow's own kernel on a size it runs well)."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    matmul = tf.function(lambda: tf.matmul(a, a))
    matmul().numpy()
    return 2 * n**3 / _median_time(lambda: matmul().numpy(), repeats, 4) / 1e9


def _time_update_case(
    case: tuple, world: Any, rng: np.random.Generator, fused: int
) -> dict[str, Any]:
    """ms per update with and without the allreduce, for one network and batch."""
    from hvd_dqn import distributed
    from hvd_dqn.config import LearnerConfig, NetworkConfig
    from hvd_dqn.learner import Learner
    from hvd_dqn.replay import Batch

    torso, shape, dtype, actions, hidden, batch = case
    net = NetworkConfig(torso=torso, hidden=hidden, dueling=torso == "mlp")
    cfg = LearnerConfig(batch_size=batch)
    both = Learner(
        shape,
        np.dtype(dtype),
        actions,
        net,
        cfg,
        seed=0,
        world_size=world.size,
        reduce_gradients=distributed.average_gradients,
    )
    compute_only = Learner(shape, np.dtype(dtype), actions, net, cfg, seed=0)
    batches = []
    for _ in range(fused):
        obs = (
            rng.integers(0, 255, size=(batch, *shape))
            if dtype == "uint8"
            else rng.normal(size=(batch, *shape))
        ).astype(dtype)
        batches.append(
            Batch(
                obs,
                rng.integers(actions, size=batch).astype(np.int32),
                rng.normal(size=batch).astype(np.float32),
                np.full(batch, 0.99, np.float32),
                obs.copy(),
                np.ones(batch, np.float32),
                np.zeros(batch, np.int64),
            )
        )
    repeats, number = (3, 2) if torso == "nature" else (5, 25)
    t_full = _median_time(lambda: both.update(batches), repeats, number) / fused
    t_compute = _median_time(lambda: compute_only.update(batches), repeats, number) / fused
    t_alone = _median_time(both.time_allreduce, repeats, number * 4)
    return {
        "network": torso,
        "batch": batch,
        "ranks": world.size,
        "updates_per_s": 1.0 / t_full,
        "ms_per_update": 1e3 * t_full,
        "ms_compute": 1e3 * t_compute,
        "ms_allreduce": 1e3 * max(0.0, t_full - t_compute),
        "ms_allreduce_alone": 1e3 * t_alone if world.size > 1 else 0.0,
        "params": sum(int(np.prod(w.shape)) for w in both.online.weights),
        "mflop": update_flops(both.online.forward_flops(), batch) / 1e6,
    }


def update_worker(out: str | None, fused: int = 4) -> list[dict[str, Any]]:
    """Time updates in this process's world (1 process, or a rank under horovodrun)."""
    from hvd_dqn import distributed

    world = distributed.init(threads=1)
    rng = np.random.default_rng(world.rank)
    peak = matmul_gflops()
    rows = [_time_update_case(case, world, rng, fused) for case in UPDATE_CASES]
    for row in rows:  # the compute's share of the matmul roof (allreduce left out)
        row["gflop_s"] = row["mflop"] / row["ms_compute"]
        row["roofline_pct"] = 100 * row["gflop_s"] / peak
        row["matmul_gflop_s"] = peak
    if world.is_chief and out:
        atomic_write(Path(out), json.dumps(rows))
    distributed.shutdown()
    return rows


def bench_update(json_path: str | None, np_: int = 2) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.json"
        many = Path(tmp) / "many.json"
        subprocess.run(
            [str(BIN / "hvd-dqn"), "bench", "update-worker", "--json", str(one)],
            check=True,
            env=_quiet_env(),
            capture_output=True,
        )
        _horovodrun(np_, ["bench", "update-worker", "--json", str(many)])
        rows = json.loads(one.read_text()) + json.loads(many.read_text())
    for row in rows:
        if row["ranks"] > 1:
            base = next(
                r
                for r in rows
                if r["ranks"] == 1 and r["network"] == row["network"] and r["batch"] == row["batch"]
            )
            row["vs_1_process"] = f"{100 * row['updates_per_s'] / base['updates_per_s']:.0f}%"
    print(
        _table(
            rows,
            [
                "network",
                "batch",
                "ranks",
                "updates_per_s",
                "ms_per_update",
                "ms_compute",
                "ms_allreduce",
                "vs_1_process",
                "mflop",
                "gflop_s",
                "roofline_pct",
            ],
        )
    )
    result = {"bench": "update", "fused_updates_per_call": 4, "threads_per_rank": 1, "rows": rows}
    peak = rows[0]["matmul_gflop_s"]
    print(f"roofline_pct: the compute's GFLOP/s in % of this thread's matmul, {peak:.1f} GFLOP/s")
    _write(json_path, result)
    return result


# ---------------------------------------------------------------------------------------
# scaling and solve: real training runs
# ---------------------------------------------------------------------------------------


def _train_run(np_: int, run_dir: Path, args: list[str]) -> tuple[dict[str, Any], float]:
    """One training run to its end: summary.json and the seconds it took. Up to 8 hours
    (a MinAtar 500k-step run of 4 ranks on 2 cores took over 37 minutes)."""
    t0 = time.perf_counter()
    _horovodrun(np_, ["train", "--run-dir", str(run_dir), "--no-progress", *args], 8 * 3600)
    seconds = time.perf_counter() - t0
    return json.loads((run_dir / "summary.json").read_text()), seconds


SCALING_COLUMNS = [
    "ranks",
    "env_steps",
    "train_seconds",
    "env_steps_per_s",
    "with_warmup",
    "updates_per_s_all_ranks",
    "speedup",
    "speedup_with_warmup",
    "weak_scaling_efficiency",
]


def _scaling_args(config: str, total_steps: int) -> list[str]:
    """`hvd-dqn train` arguments of one scaling run: no early stop, one short evaluation
    at the end, learning from the first step, five log windows."""
    return [
        "--config", config,
        "--total-steps", str(total_steps),
        "--set", "run.stop_at_return=none",
        "--set", "run.eval_every=0",
        "--set", "run.eval_episodes=2",
        "--set", "learner.learning_starts=0",
        "--set", f"run.log_every={total_steps // 5}",
    ]  # fmt: skip


def _scaling_row(ranks: int, run: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """One run's throughput: steady (the log windows after the first) and whole-run."""
    train = read_rows(run, "train")
    steps = np.diff([row["env_steps"] for row in train])  # windows after the first
    window_seconds = steps / np.array([row["env_steps_per_s"] for row in train[1:]])
    seconds = summary["train_seconds"]
    return {
        "ranks": ranks,
        "env_steps": summary["env_steps"],
        "train_seconds": seconds,
        "env_steps_per_s": float(steps.sum() / window_seconds.sum()),
        "with_warmup": summary["env_steps"] / seconds,
        "updates_per_s_all_ranks": summary["updates"] * ranks / seconds,
        "allreduce_share": train[-1].get("allreduce_share", 0.0),
    }


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """Each row's speedup over the first row, and its weak scaling efficiency."""
    base = rows[0]
    for r in rows:
        r["speedup"] = r["env_steps_per_s"] / base["env_steps_per_s"]
        r["speedup_with_warmup"] = r["with_warmup"] / base["with_warmup"]
        r["weak_scaling_efficiency"] = r["speedup"] / (r["ranks"] / base["ranks"])


def bench_scaling(
    json_path: str | None,
    ranks: Sequence[int] = (1, 2),
    steps_per_rank: int = 20_000,
    config: str = "cartpole",
) -> dict[str, Any]:
    """Weak scaling: the same work per rank (env steps, updates per env step).

    Speedup is of the steady state: aggregate env steps/s over the log windows after
    the first (which holds tracing and Horovod's warm-up); the whole-run figure, warm-up
    included, is reported beside it.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in ranks:
            run = Path(tmp) / f"np{p}"
            summary, _ = _train_run(p, run, _scaling_args(config, steps_per_rank * p))
            rows.append(_scaling_row(p, run, summary))
    _add_speedups(rows)
    print(_table(rows, SCALING_COLUMNS))
    result = {
        "bench": "scaling",
        "config": config,
        "steps_per_rank": steps_per_rank,
        "rows": rows,
    }
    _write(json_path, result)
    return result


def bench_solve(
    json_path: str | None,
    seeds: Sequence[int],
    np_: int = 2,
    config: str = "cartpole",
    extra: Sequence[str] = (),
    keep: str | None = None,
) -> dict[str, Any]:
    """Time and env steps until the greedy evaluation mean reaches the preset's target.

    keep: a directory to keep the runs in (seed<N>/ each), e.g. for `hvd-dqn plot`.
    """
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            run = Path(keep or tmp) / f"seed{seed}"
            summary, process_seconds = _train_run(
                np_, run, ["--config", config, "--seed", str(seed), *extra]
            )
            solved = summary["solved_at_env_steps"] is not None
            runs.append(
                {
                    "seed": seed,
                    "solved": solved,
                    "env_steps": summary["solved_at_env_steps"] or summary["env_steps"],
                    "train_seconds": summary["train_seconds"],
                    "process_seconds": round(process_seconds, 3),
                    "final_eval_mean": summary["final_eval"].get("return_mean"),
                }
            )
    result = {
        "bench": "solve",
        "config": config,
        "np": np_,
        "runs": runs,
        "median_train_seconds": statistics.median(r["train_seconds"] for r in runs),
        "median_env_steps": statistics.median(r["env_steps"] for r in runs),
        "median_process_seconds": statistics.median(r["process_seconds"] for r in runs),
        "all_solved": all(r["solved"] for r in runs),
    }
    print(
        _table(
            runs,
            ["seed", "solved", "env_steps", "train_seconds", "process_seconds", "final_eval_mean"],
        )
    )
    print(
        f"median: {result['median_train_seconds']:.1f} s training, "
        f"{result['median_env_steps']:,.0f} env steps, "
        f"{result['median_process_seconds']:.1f} s process wall-clock"
    )
    _write(json_path, result)
    return result


def _efficiency_args(
    config: str, seed: int, total_steps: int, rule: str, every: int, extra: Sequence[str]
) -> list[str]:
    """`hvd-dqn train` arguments of one efficiency run: the whole budget, with the step
    size rule `rule`, evaluating and logging every `every` env steps."""
    return [
        "--config", config, "--seed", str(seed),
        "--total-steps", str(total_steps),
        f"--set=learner.lr_scaling={rule}",
        "--set=run.stop_at_return=none",
        f"--set=run.eval_every={every}",
        f"--set=run.log_every={every}",
        *extra,
    ]  # fmt: skip


def _eval_curve(run: Path) -> list[tuple[int, float]]:
    """(env steps, greedy mean return) of each evaluation of `run`, in order."""
    return [(row["env_steps"], row["return_mean"]) for row in read_rows(run, "eval")]


def _efficiency_row(ranks: int, rule: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The final and mean-over-the-curve returns of the runs of (ranks, rule), over seeds."""
    mine = [r for r in runs if r["ranks"] == ranks and r["rule"] == rule]
    finals = [r["evals"][-1][1] for r in mine]
    areas = [float(np.mean([v for _, v in r["evals"]])) for r in mine]
    return {
        "ranks": ranks,
        "rule": rule if ranks > 1 else "(any)",
        "seeds": len(mine),
        "final_mean": float(np.mean(finals)),
        "final_min": float(np.min(finals)),
        "curve_mean": float(np.mean(areas)),
    }


def efficiency_cases(ranks: Sequence[int], rules: Sequence[str]) -> list[tuple[int, str]]:
    """The (ranks, rule) runs of `bench efficiency`, in order: one rank once (every rule
    is the same run there, under the first rule's name), more ranks once per rule."""
    return [(p, rule) for p in ranks for rule in (rules if p > 1 else rules[:1])]


def bench_efficiency(
    json_path: str | None,
    ranks: Sequence[int] = (1, 2, 4),
    rules: Sequence[str] = ("none", "linear", "sqrt"),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    config: str = "cartpole",
    total_steps: int = 30_000,
    evals: int = 5,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Sample efficiency as ranks grow: the greedy return at equal total env steps.

    Every run takes `total_steps` env steps of all ranks together with the same per-rank
    batch, so p ranks make 1/p as many updates of p times the batch; learner.lr_scaling
    sets their step size (at one rank every rule is the same run). Each run evaluates
    `evals` times (eval_episodes greedy episodes each); reported per (ranks, rule), over
    the seeds: the mean final evaluation and the mean of all evaluations (the area
    under the learning curve, which also rewards learning early). More ranks than cores
    oversubscribe the machine: this measures samples, not speed.
    """
    every = total_steps // evals
    cases = efficiency_cases(ranks, rules)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for p, rule in cases:
            for seed in seeds:
                run = Path(tmp) / f"np{p}-{rule}-seed{seed}"
                _train_run(p, run, _efficiency_args(config, seed, total_steps, rule, every, extra))
                runs.append({"ranks": p, "rule": rule, "seed": seed, "evals": _eval_curve(run)})
    rows = [_efficiency_row(p, rule, runs) for p, rule in cases]
    print(_table(rows, ["ranks", "rule", "seeds", "final_mean", "final_min", "curve_mean"]))
    result = {
        "bench": "efficiency",
        "config": config,
        "total_steps": total_steps,
        "extra": list(extra),
        "rows": rows,
        "runs": runs,
    }
    _write(json_path, result)
    return result


# ---------------------------------------------------------------------------------------
# scaling to score: time and env steps to a target score as ranks are added
# ---------------------------------------------------------------------------------------


def _pinned(ranks: int, cmd: list[str]) -> tuple[list[str], bool]:
    """`cmd` pinned to the first `ranks` of this process's CPUs when it has that many,
    else unpinned; and whether it was pinned (its time is then real). The ranks share
    that set (horovodrun binds none), as many CPUs as ranks, one TensorFlow thread each."""
    cores = sorted(os.sched_getaffinity(0))
    if ranks > len(cores):
        return cmd, False
    return ["taskset", "-c", ",".join(str(c) for c in cores[:ranks]), *cmd], True


def _to_score_run(ranks: int, mode: str, seed: int, run: Path, args: list[str]) -> dict:
    """One run to the preset's score: p ranks on p cores, one TensorFlow thread each.
    `mode` is a batch scope, with its learning-rate rule after a + (rank+sqrt; none
    without one), which override the config's; the global scope scales no epsilon either
    (its batch does not grow)."""
    scope, _, rule = mode.partition("+")
    train = [
        str(BIN / "hvd-dqn"), "train", "--run-dir", str(run), "--no-progress",
        "--seed", str(seed), "--set=run.threads=1", *args,
        f"--set=learner.batch_scope={scope}", f"--set=learner.lr_scaling={rule or 'none'}",
        *(["--set=learner.adam_eps_scaling=none"] if scope == "global" else []),
    ]  # fmt: skip
    launcher = [str(BIN / "horovodrun"), "-np", str(ranks)] if ranks > 1 else []
    cmd, pinned = _pinned(ranks, [*launcher, *train])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_quiet_env(), timeout=4 * 3600)
    if proc.returncode != 0:
        tail = (proc.stderr + proc.stdout).splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd)} failed: {' | '.join(tail)}")
    summary = json.loads((run / "summary.json").read_text())
    evals = [(r["env_steps"], r["wall_seconds"], r["return_mean"]) for r in read_rows(run, "eval")]
    ran = load(str(run / "config.yaml")).learner  # what the run trained with
    return {
        "ranks": ranks,
        "mode": mode,
        "batch_scope": ran.batch_scope,
        "lr_scaling": ran.lr_scaling,
        "adam_eps_scaling": ran.adam_eps_scaling,
        "seed": seed,
        "pinned": pinned,
        "solved": summary["solved_at_env_steps"] is not None,
        "env_steps": summary["solved_at_env_steps"] or summary["env_steps"],
        "train_seconds": summary["train_seconds"],
        "env_steps_per_s": summary["env_steps"] / summary["train_seconds"],
        "evals": evals,
    }


def _to_score_row(ranks: int, mode: str, runs: list[dict], base: dict | None) -> dict:
    """The median over seeds of one (ranks, mode); its time measured when the ranks had a
    core each, else projected from the per-rank rate of the largest measured world."""
    mine = [r for r in runs if (r["ranks"], r["mode"]) == (ranks, mode)]
    steps = statistics.median(r["env_steps"] for r in mine)
    row: dict[str, Any] = {
        "ranks": ranks,
        "mode": mode if ranks > 1 else "(any)",
        "seeds": len(mine),
        "solved": sum(r["solved"] for r in mine),
        "env_steps": steps,
        "seconds": statistics.median(r["train_seconds"] for r in mine),
        "time": "measured",
    }
    if not all(r["pinned"] for r in mine):
        measured = [r for r in runs if r["pinned"] and (r["mode"] == mode or r["ranks"] == 1)]
        if not measured:  # no world had a CPU per rank: nothing to project from
            row["seconds"], row["time"] = float("nan"), "not measurable here"
            return row
        largest = max(r["ranks"] for r in measured)
        rate = statistics.median(
            r["env_steps_per_s"] / r["ranks"] for r in measured if r["ranks"] == largest
        )
        row["seconds"] = steps / (rate * ranks)
        row["time"] = f"projected from {largest} ranks"
    if base is not None:
        row["speedup"] = base["seconds"] / row["seconds"]
        row["time_vs_1"] = row["seconds"] / base["seconds"]
    return row


def to_score_cases(
    ranks: Sequence[int], modes: Sequence[str], rules: Sequence[str]
) -> list[tuple[int, str]]:
    """The (ranks, mode) runs of `bench scaling-to-score`, in order: one process first
    (the baseline of the speedups) and once, under the first mode's name; more ranks
    once per mode, the rank scope once per learning-rate rule ("rank+sqrt"; "rank" for
    none), the global scope without one."""
    variants = [
        mode if rule == "none" else f"{mode}+{rule}"
        for mode in modes
        for rule in (rules if mode == "rank" else ("none",))
    ]
    return [(p, mode) for p in sorted(set(ranks)) for mode in (variants if p > 1 else modes[:1])]


def bench_scaling_to_score(
    json_path: str | None,
    ranks: Sequence[int] = (1, 2),
    modes: Sequence[str] = ("rank", "global"),
    seeds: Sequence[int] = (0, 1, 2),
    config: str = "cartpole",
    extra: Sequence[str] = (),
    rules: Sequence[str] = ("none",),
) -> dict[str, Any]:
    """Time and env steps until the greedy evaluation reaches the preset's score
    (run.stop_at_return), at each world size and batch scope, over seeds; the rank scope
    once per learning-rate rule (`rules`: its mode is then "rank+sqrt", ...; the global
    scope takes none, its one process's learning rate).

    The hardware is fixed per rank: p ranks run on p cores (taskset) with one
    TensorFlow thread each, so 1 process on 1 core against p ranks on p cores is the
    question "what does adding a GPU buy". A world larger than this machine's cores runs
    oversubscribed: its env steps to the score are real, its time is projected from
    the per-rank env steps/s of the largest world that had a core per rank (labelled).
    """
    cases = to_score_cases(ranks, modes, rules)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for p, mode in cases:
            for seed in dict.fromkeys(seeds):
                run = Path(tmp) / f"np{p}-{mode}-seed{seed}"
                runs.append(_to_score_run(p, mode, seed, run, ["--config", config, *extra]))
                print(f"  {p} rank(s), {mode}, seed {seed}: {runs[-1]['env_steps']:,} env "
                      f"steps, {runs[-1]['train_seconds']:.1f} s", flush=True)  # fmt: skip
    rows: list[dict] = []
    for p, mode in cases:
        base = rows[0] if rows and rows[0]["ranks"] == 1 else None
        rows.append(_to_score_row(p, mode, runs, base))
    columns = ["ranks", "mode", "seeds", "solved", "env_steps", "seconds", "time_vs_1"]
    print(_table(rows, [*columns, "speedup", "time"]))
    result: dict[str, Any] = {"bench": "scaling-to-score", "config": config}
    result |= {"extra": list(extra), "rows": rows, "runs": runs}
    _write(json_path, result)
    if json_path:
        from hvd_dqn.plot import plot_to_score

        plot_to_score(result, str(Path(json_path).with_suffix(".png")))
    return result


# ---------------------------------------------------------------------------------------
# faults: signals, deaths and stalls under each launcher, time until every rank is gone
# ---------------------------------------------------------------------------------------


def rank_pids(run_dir: Path) -> dict[int, int]:
    """{rank: pid} of the processes training into `run_dir` (Python running hvd-dqn,
    not the launchers whose command lines name it too), from /proc."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if str(run_dir).encode() not in argv:
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[1].endswith(b"/hvd-dqn") and argv[2] == b"train":
            rank = 0
            for item in environ:
                if item.startswith((b"OMPI_COMM_WORLD_RANK=", b"HOROVOD_RANK=", b"PMIX_RANK=")):
                    rank = int(item.split(b"=")[1])
            found[rank] = int(proc.name)
    return found


def _launcher_pid(proc: subprocess.Popen, name: str) -> int:
    """The pid of `name` (mpirun) among the descendants of `proc`, else proc's own."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == name and os.getsid(int(p.name)) == proc.pid:
                    return int(p.name)
            except (OSError, ProcessLookupError):
                continue
    return proc.pid


LAUNCHERS = {
    "none": [],
    "horovodrun": [str(BIN / "horovodrun"), "-np", "2"],
    "horovodrun --gloo": [str(BIN / "horovodrun"), "--gloo", "-np", "2"],
    "mpirun": ["mpirun", "--allow-run-as-root", "-np", "2"],
}


def _start_fault_run(launcher: str, run: Path, stall_timeout: float) -> subprocess.Popen:
    """A long CartPole run under `launcher`, in its own session, logging every 1,000 env
    steps and saving a checkpoint only when it stops."""
    train = [
        str(BIN / "hvd-dqn"),
        "train",
        "--run-dir",
        str(run),
        "--total-steps",
        "500000",
        "--no-progress",
        "--set=run.checkpoint_every=0",
        "--set=run.stop_at_return=none",
        "--set=run.log_every=1000",
        f"--set=run.stall_timeout={stall_timeout}",
    ]
    return subprocess.Popen(
        LAUNCHERS[launcher] + train,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_quiet_env(),
        start_new_session=True,
    )


def _wait_first_row(proc: subprocess.Popen, run: Path, launcher: str) -> None:
    """Until the run has logged its first row; RuntimeError if it ends or takes 120 s."""
    deadline = time.monotonic() + 120
    while not read_rows(run):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise _run_failed(proc, launcher, "log its first row")
        time.sleep(0.05)


def _apply_fault(fault: str, launcher: str, proc: subprocess.Popen, ranks: dict[int, int]) -> None:
    """Send the signal that `fault` names to the ranks, the group or the launcher."""
    last = ranks[max(ranks)]
    if fault == "SIGTERM to every rank":
        for pid in ranks.values():
            os.kill(pid, signal.SIGTERM)
    elif fault == "Ctrl-C (SIGINT to the group)":
        os.killpg(proc.pid, signal.SIGINT)
    elif fault.endswith("to the launcher") or fault.endswith("of the launcher"):
        sig = getattr(signal, fault.split()[0])  # "SIGTERM to the launcher" -> SIGTERM
        os.kill(_launcher_pid(proc, "mpirun") if launcher == "mpirun" else proc.pid, sig)
    elif fault == "SIGKILL of the last rank":
        os.kill(last, signal.SIGKILL)
    elif fault == "SIGSTOP of the last rank":
        os.kill(last, signal.SIGSTOP)


def _kill_leftovers(proc: subprocess.Popen, run: Path) -> None:
    """SIGKILL whatever of the run is still there: ranks, then the launcher's group."""
    for pid in rank_pids(run).values():
        os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


STARTUP = "SIGTERM to every rank 0.5 s into its start-up"
SECOND_JOB = "a second job on the run directory"
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _run_failed(proc: subprocess.Popen, launcher: str, what: str) -> RuntimeError:
    """The error of a run that did not get to `what`, with its stderr's end (killed
    first if it still runs, so reading stderr cannot block)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return RuntimeError(f"{launcher} run did not {what}: {proc.stderr.read()[-500:]}")  # type: ignore[union-attr]


def _blocks_sigterm(pid: int) -> bool:
    """Whether process `pid` blocks SIGTERM now (hvd-dqn's first act: __main__.py)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    (mask,) = [line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")]
    return bool(int(mask, 16) & SIGTERM_BIT)


def _wait_ranks(proc: subprocess.Popen, run: Path, launcher: str) -> dict[int, int]:
    """{rank: pid} once every rank's process exists and has blocked the stop signals
    (its first act), long before it has loaded TensorFlow."""
    want = 1 if launcher == "none" else 2
    deadline = time.monotonic() + 60
    while len(ranks := rank_pids(run)) < want or not all(map(_blocks_sigterm, ranks.values())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise _run_failed(proc, launcher, "start")
        time.sleep(0.01)
    return ranks


def _second_job(launcher: str, run: Path, stall_timeout: float) -> tuple[int, str]:
    """The same command again on `run` while a job trains there: (its exit code, its
    last line on stderr). Killed if it is still running after 120 s."""
    second = _start_fault_run(launcher, run, stall_timeout)
    try:
        _, err = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.communicate()
    lines = [line for line in err.splitlines() if "hvd-dqn:" in line]
    # Under a launcher the line is tagged ("[1,0]<stderr>:"): the message alone.
    said = "hvd-dqn:" + lines[-1].partition("hvd-dqn:")[2].split("[1,")[0] if lines else ""
    return second.returncode, said


def fault_trial(launcher: str, fault: str, run: Path, stall_timeout: float = 10) -> dict:
    """Start a 2-rank (1 for launcher "none") CartPole run, apply `fault` after its first
    log row (STARTUP: 0.5 s after every rank has blocked the stop signals, while it loads
    TensorFlow), and measure the seconds until no rank is left, the exit code, and the
    env steps of the checkpoint left behind (0: none; checkpoint_every is 0, so any
    checkpoint is the one written on the stop). SECOND_JOB: the same command again on
    the same run directory while the first trains; seconds, exit code and `said` are the
    second job's, the env steps the first's (which must train on)."""
    from hvd_dqn.checkpoint import complete

    label, said = fault, ""
    proc = _start_fault_run(launcher, run, stall_timeout)
    try:
        if fault == STARTUP:
            ranks = _wait_ranks(proc, run, launcher)
            time.sleep(0.5)
            fault = "SIGTERM to every rank"
        else:
            _wait_first_row(proc, run, launcher)
            ranks = rank_pids(run)
        t0 = time.monotonic()
        if fault == SECOND_JOB:
            code, said = _second_job(launcher, run, stall_timeout)
            seconds = time.monotonic() - t0
            logged = len(read_rows(run))
            while len(read_rows(run)) == logged:  # the first job trains on
                if proc.poll() is not None or rank_pids(run) != ranks:
                    raise RuntimeError(f"the first {launcher} job did not go on training")
                time.sleep(0.05)
        else:
            _apply_fault(fault, launcher, proc, ranks)
            while rank_pids(run) and time.monotonic() - t0 < 120:
                time.sleep(0.02)
            seconds = time.monotonic() - t0
            code = proc.wait(timeout=60)
    finally:
        _kill_leftovers(proc, run)
    saved, rows = complete(run), read_rows(run)
    return {
        "launcher": launcher,
        "fault": label,
        "seconds_to_exit": round(seconds, 2),
        "exit_code": code,
        "logged_env_steps": rows[-1]["env_steps"] if rows else 0,
        "checkpoint_env_steps": saved[-1] if saved else 0,
        "said": said,
    }


FAULTS = {
    "none": [
        "SIGTERM to the launcher",
        "SIGUSR1 to the launcher",
        "SIGINT to the launcher",
        STARTUP,
        SECOND_JOB,
    ],
    "horovodrun": [
        STARTUP,
        SECOND_JOB,
        "SIGTERM to every rank",
        "SIGTERM to the launcher",
        "Ctrl-C (SIGINT to the group)",
        "SIGKILL of the last rank",
        "SIGSTOP of the last rank",
    ],
    "horovodrun --gloo": [
        "SIGTERM to every rank",
        "SIGTERM to the launcher",
        "SIGKILL of the last rank",
        "SIGSTOP of the last rank",
    ],
    "mpirun": [
        "SIGUSR1 to the launcher",
        "SIGTERM to the launcher",
        "SIGKILL of the launcher",
        "SIGKILL of the last rank",
        "SIGSTOP of the last rank",
    ],
}


def bench_faults(json_path: str | None) -> dict[str, Any]:
    """Every fault of FAULTS under its launcher, once each (a few minutes)."""
    rows: list[dict[str, Any]] = []
    columns = ["launcher", "fault", "seconds_to_exit", "exit_code", "logged_env_steps"]
    columns += ["checkpoint_env_steps"]
    with tempfile.TemporaryDirectory() as tmp:
        for launcher, faults in FAULTS.items():
            for i, fault in enumerate(faults):
                run = Path(tmp) / f"{launcher}-{i}"
                try:
                    rows.append(fault_trial(launcher, fault, run))
                except RuntimeError as exc:
                    # The first Gloo job after the MPI trials can stall (no progress for
                    # run.stall_timeout, 10 s, while starting); the next one runs.
                    print(f"  {launcher}: {fault}: {str(exc)[:120]}...; once more", flush=True)
                    rows.append(fault_trial(launcher, fault, run.with_name(run.name + "b")))
                print(_table(rows[-1:], columns), flush=True)
                if rows[-1]["said"]:
                    print(f"  it said: {rows[-1]['said']}", flush=True)
    print(_table(rows, columns))
    result = {"bench": "faults", "stall_timeout": 10, "rows": rows}
    _write(json_path, result)
    return result
