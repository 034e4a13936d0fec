"""`hvd-dqn`: the only place that reads argv. Parses, sets up, calls the work.

    hvd-dqn train [--config PRESET_OR_YAML] [--set section.field=value ...] [flags]
    hvd-dqn train --resume RUN_DIR [--total-steps N]    (explicit form of continuing)
    hvd-dqn evaluate RUN_DIR_OR_MODEL [--episodes N] [--env ID] [--eps E] [--video F.gif|.mp4]
    hvd-dqn bench {act,update,scaling,solve,efficiency,faults} [--json FILE]
    hvd-dqn plot RUN_DIR... [--reference CURVES_JSON] [--out PNG]
    hvd-dqn plot --scaling BENCH_JSON | --efficiency BENCH_JSON [--out PNG]
    hvd-dqn doctor

Start `train` under a launcher for data parallelism: `horovodrun -np 2 hvd-dqn train`,
`mpirun -np 2 hvd-dqn train`, or `srun --mpi=pmix hvd-dqn train`.
The same `train` command starts a run and, when its run directory already holds it,
continues it from the newest checkpoint (a finished run exits 0 at once).
Exit codes: 0 done; 1 a fault (NaN, a crashed or stalled rank); 2 bad input (a config
field, a file, a run directory); 75 stopped by a signal or run.max_wall_time after
writing a checkpoint: run the same command to continue.
Errors are one line on stderr (from rank 0 only).
"""

from __future__ import annotations

import argparse
import faulthandler
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from hvd_dqn import __version__
from hvd_dqn.config import (
    PRESETS,
    RESUMABLE,
    Config,
    ConfigError,
    load,
    rank_batch,
    rank_capacity,
)

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _launcher_rank() -> int:
    from hvd_dqn.interrupts import launcher_rank

    return launcher_rank(os.environ)


def _check_worlds(cfg: Config, ranks: list[int]) -> None:
    """A bench's config at each of its world sizes: ConfigError (one line) if a global
    batch or replay cannot be shared by one of them, before any run starts."""
    for size in ranks:
        rank_batch(cfg.learner, size)
        rank_capacity(cfg, size)


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    if _launcher_rank() == 0:
        print(f"hvd-dqn: error: {message}", file=sys.stderr, flush=True)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (not the usage block), from rank 0, exit 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see `{self.prog} --help`)", EXIT_USAGE)
        raise SystemExit(EXIT_USAGE)


def _whole(text: str) -> int:
    """An argparse type: a whole number, also written 1e5 or 100_000."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not number.is_integer():  # (nan and inf are not)
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (e.g. 100000 or 1e5)")
    return int(number)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hvd-dqn", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"hvd-dqn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_train(sub)
    _add_evaluate(sub)
    _add_bench(sub)
    _add_plot(sub)
    doctor = sub.add_parser("doctor", help="check the TensorFlow/Horovod/MPI stack")
    doctor.add_argument("--expect-world-size", type=_whole, metavar="N")
    return parser


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train a DQN agent (data-parallel under a launcher)")
    train.add_argument(
        "--config",
        help=f"a preset ({', '.join(PRESETS)}) or a YAML file (default cartpole)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its newest checkpoint with RUN_DIR/config.yaml "
        f"(only {', '.join(f for f in RESUMABLE if f != 'run.run_dir')} may change); "
        "`--run-dir RUN_DIR` with the same config does the same",
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (repeatable)",
    )
    train.add_argument("--env", help="env.id: a gymnasium id")
    train.add_argument("--seed", type=_whole, help="run.seed")
    train.add_argument("--total-steps", type=_whole, help="run.total_steps (all ranks together)")
    train.add_argument("--run-dir", help="run.run_dir")
    train.add_argument(
        "--expect-world-size",
        type=_whole,
        metavar="N",
        help="fail unless Horovod's world has N processes",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--elastic",
        action="store_true",
        help="Horovod Elastic: workers may leave and join (run.elastic=true; start with "
        "horovodrun --min-np/--max-np --host-discovery-script)",
    )


def _add_evaluate(sub: Any) -> None:
    ev = sub.add_parser("evaluate", help="evaluate an exported policy or a run directory")
    ev.add_argument("target", help="a run directory or its model/ directory")
    ev.add_argument("--episodes", type=_whole, default=20)
    ev.add_argument("--env", help="evaluate on another gymnasium id")
    ev.add_argument("--eps", type=float, default=0.0, help="evaluation epsilon (default 0)")
    ev.add_argument("--video", help="also record greedy episodes to this .gif or .mp4")
    ev.add_argument(
        "--video-episodes", type=_whole, default=1, help="episodes in the video (default 1)"
    )


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks: tables on stdout, JSON with --json")
    bench.add_argument(
        "which",
        choices=(
            "act",
            "update",
            "scaling",
            "solve",
            "efficiency",
            "scaling-to-score",
            "faults",
            "update-worker",
        ),
    )
    bench.add_argument("--json", help="write the results to this file")
    bench.add_argument("--np", type=_whole, default=2, help="ranks for multi-rank runs (2)")
    bench.add_argument(
        "--seeds",
        help="solve, efficiency, scaling-to-score: comma-separated seeds (0,1,2; 0-4 for "
        "efficiency)",
    )
    bench.add_argument(
        "--config",
        default="cartpole",
        help="solve, scaling, efficiency, scaling-to-score: preset or YAML (cartpole)",
    )
    bench.add_argument(
        "--ranks",
        help="efficiency, scaling-to-score: world sizes (1,2,4; 1,2); scaling-to-score times "
        "them against 1 when it is in the list",
    )
    bench.add_argument(
        "--modes", default="rank,global", help="scaling-to-score: learner.batch_scope values"
    )
    bench.add_argument(
        "--rules",
        help="efficiency (none,linear,sqrt), scaling-to-score (the config's; the rank "
        "scope once per rule, global with none): learner.lr_scaling rules",
    )
    bench.add_argument(
        "--total-steps", type=_whole, default=30_000, help="efficiency: env steps of every run"
    )
    bench.add_argument("--keep", metavar="DIR", help="solve: keep the runs in DIR/seed<N>")
    bench.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="solve, efficiency, scaling-to-score: config overrides",
    )


def _add_plot(sub: Any) -> None:
    plot = sub.add_parser(
        "plot", help="learning curves of runs; --scaling/--efficiency for a bench JSON"
    )
    plot.add_argument("runs", nargs="*", help="run directories")
    plot.add_argument("--scaling", metavar="JSON", help="a `bench scaling` JSON to chart")
    plot.add_argument("--efficiency", metavar="JSON", help="a `bench efficiency` JSON to chart")
    plot.add_argument("--out", default="curves.png", help="PNG to write (curves.png)")
    plot.add_argument(
        "--reference",
        metavar="JSON",
        help="draw each run beside this published curve of its game, one panel per run "
        "(docs/bench/minatar-paper-dqn.json: the MinAtar paper's DQN)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up lines (oneDNN, cpu_feature_guard) from every rank would
    # fill a cluster log; silenced unless the user chose a level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            if args.episodes < 1:
                return _fail(f"--episodes {args.episodes}: must be >= 1", EXIT_USAGE)
            if not 0.0 <= args.eps <= 1.0:
                return _fail(f"--eps {args.eps}: must be in [0, 1]", EXIT_USAGE)
            if args.video_episodes < 1:
                return _fail(f"--video-episodes {args.video_episodes}: must be >= 1", EXIT_USAGE)
            from hvd_dqn.evaluate import evaluate_command

            return evaluate_command(
                args.target, args.episodes, args.env, args.eps, args.video, args.video_episodes
            )
        if args.command == "bench":
            return _bench(args)
        if args.command == "plot":
            from hvd_dqn import plot

            if not (args.runs or args.scaling or args.efficiency):
                return _fail(
                    "plot: give run directories, --scaling JSON or --efficiency JSON", EXIT_USAGE
                )
            stem = str(Path(args.out).with_suffix(""))
            if args.runs and args.reference:
                plot.plot_against_reference(args.runs, args.reference, args.out)
            elif args.runs:
                plot.plot_runs(args.runs, args.out)
            if args.scaling:
                plot.plot_scaling(args.scaling, stem + "-scaling.png")
            if args.efficiency:
                plot.plot_efficiency(args.efficiency, stem + "-efficiency.png")
            return 0
        if args.command == "doctor":
            return doctor(args.expect_world_size)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except FileNotFoundError as exc:
        return _fail(str(exc))
    return EXIT_USAGE


# What the global batch scope requires (it does not grow with the ranks): no learning-rate
# or epsilon rule. The rules themselves are checked against the config's own scope.
NO_BATCH_RULES = ("learner.lr_scaling=none", "learner.adam_eps_scaling=none")


def _bench(args: argparse.Namespace) -> int:
    from hvd_dqn import bench

    if args.np < 1:
        return _fail(f"--np {args.np}: must be >= 1", EXIT_USAGE)
    if args.which == "act":
        bench.bench_act(args.json)
    elif args.which == "update":
        bench.bench_update(args.json, args.np)
    elif args.which == "faults":
        bench.bench_faults(args.json)
    elif args.which == "update-worker":
        bench.update_worker(args.json)
    elif args.which == "scaling":
        load(args.config, [])  # refuse a bad config before any run starts
        bench.bench_scaling(args.json, ranks=sorted({1, args.np}), config=args.config)
    else:
        default_seeds = "0,1,2,3,4" if args.which == "efficiency" else "0,1,2"
        seeds = _ints("--seeds", args.seeds or default_seeds)
        to_score = args.which == "scaling-to-score"
        ranks = _ints("--ranks", args.ranks or ("1,2" if to_score else "1,2,4"), lo=1)
        # Before any run starts (each run sets its own rule: none here, checked below).
        _check_worlds(load(args.config, [*args.overrides, "learner.lr_scaling=none"]), ranks)
        extra = [f"--set={o}" for o in args.overrides]
        # scaling-to-score: the config's own rule unless asked; efficiency: all three
        default_rules = "none,linear,sqrt"
        if to_score:
            default_rules = load(args.config, args.overrides).learner.lr_scaling
        rules = list(
            dict.fromkeys(r.strip() for r in (args.rules or default_rules).split(",") if r.strip())
        )
        if not rules:
            return _fail(f"--rules {args.rules!r}: expected none, linear, sqrt", EXIT_USAGE)
        for rule in rules:  # each one a valid learner.lr_scaling
            load(args.config, [*args.overrides, f"learner.lr_scaling={rule}"])
        if to_score:
            modes = [m.strip() for m in args.modes.split(",") if m.strip()]
            if not modes:
                return _fail(f"--modes {args.modes!r}: expected rank, global or both", EXIT_USAGE)
            for mode in modes:  # each one a valid learner.batch_scope (the rules: above)
                scope = f"learner.batch_scope={mode}"
                cfg = load(args.config, [*args.overrides, scope, *NO_BATCH_RULES])
                _check_worlds(cfg, ranks)
            if cfg.run.stop_at_return is None:
                return _fail(
                    f"--config {args.config}: run.stop_at_return is none, so no run would "
                    f"reach a score; give one, e.g. --set run.stop_at_return=10",
                    EXIT_USAGE,
                )
            bench.bench_scaling_to_score(args.json, ranks, modes, seeds, args.config, extra, rules)
            return 0
        if args.which == "solve":
            bench.bench_solve(args.json, seeds, args.np, args.config, extra, args.keep)
            return 0
        if args.total_steps < 1000:
            return _fail(f"--total-steps {args.total_steps}: must be >= 1000", EXIT_USAGE)
        bench.bench_efficiency(
            args.json, ranks, rules, seeds, args.config, args.total_steps, extra=extra
        )
    return 0


def _ints(flag: str, text: str, lo: int = 0) -> list[int]:
    """Comma-separated integers >= lo; ConfigError (one line, exit 2) otherwise."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < lo:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers >= {lo}")
    return values


def _train_config(args: argparse.Namespace) -> Config:
    """The config `train`'s flags ask for: a preset or file with --set and the shortcut
    flags, or --resume's run with only what may change (ConfigError otherwise)."""
    overrides = list(args.overrides)
    flags = {
        "env.id": args.env,
        "run.seed": args.seed,
        "run.total_steps": args.total_steps,
        "run.run_dir": args.run_dir,
    }
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.no_progress:
        overrides.append("run.progress=false")
    if args.elastic:
        overrides.append("run.elastic=true")
    source = args.config or "cartpole"
    if args.resume:
        changed = [o.split("=")[0] for o in overrides if o.split("=")[0] not in RESUMABLE]
        if args.config or changed:
            what = ", ".join((["--config"] if args.config else []) + changed)
            raise ConfigError(
                f"--resume {args.resume}: the run's config.yaml is used as it is; only "
                f"{', '.join(f for f in RESUMABLE if f != 'run.run_dir')} may change "
                f"(got {what})"
            )
        source = str(Path(args.resume) / "config.yaml")
        if not Path(source).is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there (not a run directory)")
        overrides.append(f"run.run_dir={args.resume}")
    return load(source, overrides)


def _train(args: argparse.Namespace) -> int:
    # Catch stop signals from the first moment: one that arrives while TensorFlow loads
    # stops the run at its first iteration, with a checkpoint, instead of killing it.
    from hvd_dqn.interrupts import EXIT_PREEMPTED, Interrupts

    interrupts = Interrupts()
    cfg = _train_config(args)  # validated before TensorFlow or Horovod load

    try:
        import tensorflow as tf

        from hvd_dqn import distributed
        from hvd_dqn.checkpoint import CheckpointError
        from hvd_dqn.train import TrainingError, train
    except Exception as exc:  # e.g. HorovodVersionMismatchError after a TensorFlow change
        return _fail(
            f"cannot load Horovod/TensorFlow ({type(exc).__name__}: {exc}); "
            f"run `hvd-dqn doctor`, rebuild with `bash docker/install.sh`"
        )
    threads = cfg.run.threads or (1 if cfg.run.deterministic else None)
    try:
        world = distributed.init(expect_size=args.expect_world_size, threads=threads)
    except distributed.WorldError as exc:
        return _fail(str(exc), EXIT_USAGE if exc.usage else EXIT_FAILURE)
    # A crash in native code (TensorFlow, MPI, Horovod) prints every thread's Python stack
    # before the process dies. Enabled after MPI's init, which installs its own SIGSEGV
    # handler: faulthandler runs first, then hands the signal to it.
    faulthandler.enable()
    if cfg.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    code = EXIT_FAILURE
    try:
        summary = train(cfg, world, interrupts)
        code = EXIT_PREEMPTED if summary.get("stopped") else 0
    except (distributed.WorldError, TrainingError, ConfigError, CheckpointError) as exc:
        # Every rank raises; rank 0 speaks for all.
        if world.is_chief:
            print(f"hvd-dqn: error: {exc}", file=sys.stderr, flush=True)
        usage = isinstance(exc, (ConfigError, CheckpointError)) or getattr(exc, "usage", False)
        code = EXIT_USAGE if usage else EXIT_FAILURE
    finally:
        # Ended with its results or checkpoint written: a launcher's SIGTERM while
        # Horovod and TensorFlow shut down no longer changes the exit code.
        interrupts.close(code if code in (0, EXIT_PREEMPTED) else None)
        distributed.shutdown()
    return code


def doctor(expect_world_size: int | None = None) -> int:
    """Print the stack and the world; non-zero with one line if Horovod cannot train."""
    import tensorflow as tf

    lines = [("python", platform.python_version()), ("tensorflow", tf.__version__)]
    try:
        import keras

        lines.append(("keras", keras.__version__))
    except ImportError:
        pass
    try:
        from hvd_dqn import distributed
    except Exception as exc:  # HorovodVersionMismatchError, missing TF extension, ...
        name = type(exc).__name__
        if "Mismatch" in name:
            return _fail(
                f"Horovod was built against another TensorFlow than {tf.__version__}: "
                f"rebuild it (bash docker/install.sh)"
            )
        return _fail(
            f"Horovod has no TensorFlow support ({name}: {exc}); "
            f"rebuild it (bash docker/install.sh)"
        )
    info = distributed.build_info()
    lines += [
        ("horovod", f"{info['horovod']} (built against TensorFlow {tf.__version__})"),
        ("mpi", _mpi_version()),
        ("frameworks", ", ".join(info["frameworks"])),
        ("controllers", ", ".join(info["controllers"]) or "none"),
        ("tensor ops", ", ".join(info["tensor_operations"]) or "none"),
        ("cuda build", "yes" if info["cuda"] else "no"),
    ]
    gpus = tf.config.list_physical_devices("GPU")
    lines.append(("gpus", ", ".join(g.name for g in gpus) if gpus else "none visible"))
    if "MPI" not in info["controllers"]:
        return _fail(
            "Horovod was built without MPI support: rebuild with HOROVOD_WITH_MPI=1 "
            "(bash docker/install.sh)"
        )
    try:
        world = distributed.init(expect_size=expect_world_size)
    except distributed.WorldError as exc:
        return _fail(str(exc), EXIT_USAGE if exc.usage else EXIT_FAILURE)
    ranks = distributed.allgather_object(distributed.describe_rank(world))
    distributed.leave_together()
    if world.is_chief:
        lines.append(("world", f"size {world.size}, controller {world.controller}"))
        _print_doctor(lines, ranks, "Gloo" in info["controllers"])
    distributed.shutdown()
    return 0


def _print_doctor(lines: list[tuple[str, str]], ranks: list[dict[str, Any]], gloo: bool) -> None:
    for name, value in lines:
        print(f"{name:<12} {value}")
    for r in ranks:
        print(
            f"  rank {r['rank']} of {r['size']}: host {r['host']}, local rank "
            f"{r['local_rank']}, device {r['device']}, pid {r['pid']}"
        )
    print("ok: TensorFlow, MPI and Gloo" if gloo else "ok: TensorFlow and MPI (no Gloo)")


def _mpi_version() -> str:
    try:
        from mpi4py import MPI

        version = MPI.Get_library_version().splitlines()[0].split(",")[0]
    except Exception:  # mpi4py missing or broken: fall back to mpirun
        version = "mpi4py unavailable"
        if shutil.which("mpirun"):
            out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True)
            version = out.stdout.splitlines()[0] if out.stdout else version
    return version


if __name__ == "__main__":
    sys.exit(main())
