"""Train one-hidden-layer ReLU networks with GD / SGD / n-SAM / 1-SAM / m-SAM: one comparison
(algorithms x rho values x seeds, batched over runs) per command.

Examples:
  # the reference 1-D experiment, the same lr schedule for every algorithm (quick version)
  python -m one_layer_relu_nets.train --algorithms gd nsam 1sam --rhos 0.3 --lr 5e-5 \\
      --lr_schedule linear --iterations 30000 --num_seeds 5 --out_dir runs/relu_1d
  # teacher-student, test loss vs rho
  python -m one_layer_relu_nets.train --task teacher --d 5 --width 50 --init standard \\
      --reduction mean --lr 0.1 --iterations 4000 --loss_threshold 0 \\
      --rhos 0.01 0.03 0.1 0.3 --out_dir runs/relu_teacher
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from one_layer_relu_nets.data import TASKS
from one_layer_relu_nets.engine import (
    ALGORITHMS,
    BACKENDS,
    DTYPES,
    LR_SCHEDULES,
    REDUCTIONS,
    RHO_SCHEDULES,
    Config,
    Interrupted,
    make_dataset,
    matched_targets,
    targets_digest,
    train,
)
from one_layer_relu_nets.model import INITS
from suite.cli import (
    common_parser,
    finite_float,
    run_dir_flags_error,
    select_device,
)
from suite.rundir import run_dir_lock

# Config field -> the flag that sets it (error messages name the flag).
FLAG_OF = {"rhos": "--rhos", "seeds": "--seed/--num_seeds", "normalize": "--unnormalized"}
TEACHER_FLAGS = ("d", "teacher_width", "n_train", "n_test", "n_val", "data_seed")
SAM_FLAGS = ("rhos", "unnormalized", "rho_schedule")


def no_effect_error(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """A flag set away from its default where it changes nothing (as deep_nets refuses them):
    the teacher task's flags with --task reference1d, SAM's without a SAM algorithm, --m
    without msam, --batch_size with GD alone (full batch)."""

    def changed(name: str) -> bool:
        return getattr(args, name) != parser.get_default(name)

    algs = set(args.algorithms)
    teacher = "with --task reference1d (the fixed 12-point data); they apply to --task teacher"
    checks = [
        (TEACHER_FLAGS, args.task == "reference1d", teacher),
        (SAM_FLAGS, not algs & {"nsam", "1sam", "msam"}, "without a SAM algorithm"),
        (("m",), "msam" not in algs, "without --algorithms msam"),
        (("batch_size",), algs == {"gd"}, "with --algorithms gd alone (full batch)"),
    ]
    for names, applies, why in checks:
        bad = [f"--{n}" for n in names if applies and changed(n)]
        if bad:
            return f"{', '.join(bad)} {'has' if len(bad) == 1 else 'have'} no effect {why}"
    return None


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m one_layer_relu_nets.train",
        description=__doc__,
        parents=[common_parser()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("task and network")
    g.add_argument(
        "--task",
        type=str,
        choices=TASKS,
        default=d.task,
        help=f"reference1d: the 12-point 1-D data; teacher: teacher-student in --d dims "
        f"(default: {d.task})",
    )
    g.add_argument(
        "--d", type=int, default=d.d, help=f"teacher task: input dimension (default: {d.d})"
    )
    g.add_argument(
        "--teacher_width",
        type=int,
        default=d.teacher_width,
        help=f"teacher task: number of teacher ReLU neurons (default: {d.teacher_width})",
    )
    g.add_argument(
        "--n_train",
        type=int,
        default=d.n_train,
        help=f"teacher task: training points (default: {d.n_train})",
    )
    g.add_argument(
        "--n_test",
        type=int,
        default=d.n_test,
        help=f"teacher task: test points (default: {d.n_test})",
    )
    g.add_argument(
        "--n_val",
        type=int,
        default=d.n_val,
        help="teacher task: validation points, drawn after the test points (summary: val_loss) "
        f"(default: {d.n_val})",
    )
    g.add_argument(
        "--data_seed",
        type=int,
        default=d.data_seed,
        help=f"teacher task: seed of the data draw, shared by all runs (default: {d.data_seed})",
    )
    g.add_argument(
        "--width", type=int, default=d.width, help=f"hidden neurons (default: {d.width})"
    )
    g.add_argument(
        "--init",
        type=str,
        choices=INITS,
        default=d.init,
        help="reference: W = +-2.5, b ~ N(0, 2.5^2), a ~ N(0, 4^2) (the original's draws); "
        f"standard: PyTorch nn.Linear default (default: {d.init})",
    )
    g.add_argument(
        "--init_scale",
        type=finite_float,
        default=d.init_scale,
        help=f"multiplies every initial weight (default: {d.init_scale})",
    )
    g = p.add_argument_group("algorithms")
    g.add_argument(
        "--algorithms",
        type=str,
        nargs="+",
        choices=ALGORITHMS,
        default=d.algorithms,
        help="one or more of gd (full batch), sgd (--batch_size), nsam (ascent on the "
        "batch), 1sam (one ascent per example), msam (per chunk of --m examples) "
        f"(default: {' '.join(d.algorithms)})",
    )
    g.add_argument(
        "--rhos",
        type=finite_float,
        nargs="+",
        default=d.rhos,
        help=f"SAM radii, one run per value and seed (default: {d.rhos})",
    )
    g.add_argument(
        "--unnormalized",
        action="store_true",
        help="unnormalized ascent e = rho g instead of rho g / ||g||_2 (default: off)",
    )
    g.add_argument(
        "--rho_schedule",
        type=str,
        choices=RHO_SCHEDULES,
        default=d.rho_schedule,
        help="rho_t = rho x (1 | 1 - t/T | 1/sqrt(1 + t)) (default: constant)",
    )
    g.add_argument("--m", type=int, default=d.m, help=f"msam: examples per chunk (default: {d.m})")
    g.add_argument(
        "--batch_size",
        type=int,
        default=d.batch_size,
        help="examples per step, sampled without replacement; 0 = all (required "
        "0 < batch_size < n for sgd; gd always uses all) (default: 0)",
    )
    g = p.add_argument_group("optimization")
    g.add_argument("--lr", type=finite_float, default=d.lr, help=f"learning rate (default: {d.lr})")
    g.add_argument(
        "--lr_schedule",
        type=str,
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help="lr of step t = 0..T-1: lr x (1 | 1 - u | (1 + cos(pi u))/2), u = (t + 1)/T (the "
        f"original's step count), the same for every algorithm (default: {d.lr_schedule})",
    )
    g.add_argument(
        "--lr_decay_sam_only",
        action="store_true",
        help="the original notebook's setting: GD/SGD keep the constant lr, only SAM follows "
        "--lr_schedule (default: off, every algorithm follows it)",
    )
    g.add_argument(
        "--iterations",
        type=int,
        default=d.iterations,
        help=f"maximum iterations T (default: {d.iterations}, a first try: about a second per "
        "1-D run; the original notebook ran 1000000, ~10 s per SAM run with the C backend)",
    )
    g.add_argument(
        "--loss_threshold",
        type=finite_float,
        default=d.loss_threshold,
        help="a run stops once its full training loss is <= this; 0 = never "
        f"(default: {d.loss_threshold})",
    )
    g.add_argument(
        "--reduction",
        type=str,
        choices=REDUCTIONS,
        default=d.reduction,
        help="training loss: sum = 0.5 sum_i r_i^2 (reference), mean = 0.5 mean_i r_i^2 "
        f"(default: {d.reduction})",
    )
    g.add_argument(
        "--match_losses_of",
        type=str,
        default=None,
        help="a finished run directory: run GD once per SAM run in it, stopped at that run's "
        "final training loss (the loss-matched control; use with --algorithms gd)",
    )
    g = p.add_argument_group("runs and output")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out_dir (same flags; finished algorithms are kept)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out_dir (default: refuse to touch an existing run)",
    )
    g.add_argument(
        "--backend",
        type=str,
        choices=BACKENDS,
        default=d.backend,
        help="c: fused C loop per run (full batch, CPU, float64; compiled with cc on first use); "
        "torch: batched tensor program (any batch size or device); auto: c when it applies and "
        f"a C compiler exists (default: {d.backend})",
    )
    g.add_argument(
        "--num_seeds",
        type=int,
        default=len(d.seeds),
        help="seeds --seed, ..., --seed + num_seeds - 1 (initialization, SGD order) "
        f"(default: {len(d.seeds)})",
    )
    g.add_argument(
        "--n_logs",
        type=int,
        default=d.n_logs,
        help=f"about this many log-spaced logged iterations (default: {d.n_logs})",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help=f"torch CPU threads while training (default: {d.threads})",
    )
    g.add_argument(
        "--dtype",
        type=str,
        choices=tuple(DTYPES),
        default=d.dtype,
        help=f"floating point type (default: {d.dtype})",
    )
    for action in p._actions:  # this family's default device differs from the common parent's
        if action.dest == "device":
            action.help = (
                "cpu or cuda[:N] (default: cpu: the networks have a few hundred weights, so the "
                "C backend on one CPU core beats a GPU; cuda runs the torch backend)"
            )
            action.default = "cpu"
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        task=args.task,
        d=args.d,
        teacher_width=args.teacher_width,
        n_train=args.n_train,
        n_test=args.n_test,
        n_val=args.n_val,
        data_seed=args.data_seed,
        width=args.width,
        init=args.init,
        init_scale=args.init_scale,
        algorithms=list(args.algorithms),
        rhos=list(args.rhos),
        normalize=not args.unnormalized,
        rho_schedule=args.rho_schedule,
        m=args.m,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        lr_decay_sam_only=args.lr_decay_sam_only,
        iterations=args.iterations,
        loss_threshold=args.loss_threshold,
        reduction=args.reduction,
        seeds=list(range(args.seed, args.seed + args.num_seeds)),
        n_logs=args.n_logs,
        threads=args.threads,
        dtype=args.dtype,
        device=str(args.device),
        backend=args.backend,
        match_losses_of=args.match_losses_of,
        match_digest=(
            targets_digest(matched_targets(args.match_losses_of)) if args.match_losses_of else None
        ),
        out_dir=args.out_dir,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_seeds < 1:
        parser.error(f"--num_seeds must be >= 1 (got {args.num_seeds})")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0 (got {args.seed})")
    if args.data_seed < 0:
        parser.error(f"--data_seed must be >= 0 (got {args.data_seed})")
    if problem := no_effect_error(parser, args):
        parser.error(problem)
    if args.out_dir is None:
        if args.resume:
            parser.error("--resume needs the --out_dir of the run to continue")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        args.out_dir = str(Path("runs") / "one_layer_relu_nets" / f"{args.task}_{stamp}")
    if problem := run_dir_flags_error(args.out_dir, args.resume, args.overwrite):
        parser.error(problem)
    try:
        args.device = select_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    if args.match_losses_of and not (Path(args.match_losses_of) / "summary.json").exists():
        parser.error(f"--match_losses_of {args.match_losses_of}: not a finished run (no summary)")
    cfg = config_from_args(args)
    try:
        cfg.validate()
        cfg.validate(make_dataset(cfg).n)
        if cfg.match_losses_of and cfg.algorithms != ["gd"]:
            raise ValueError("match_losses_of: runs GD only; add --algorithms gd")
    except ValueError as e:
        field_name = str(e).split(":", 1)[0]
        flag = FLAG_OF.get(field_name, "--" + field_name)
        parser.error(f"{flag}: {str(e).split(':', 1)[1].strip()}")
    try:
        with run_dir_lock(cfg.out_dir):  # one writer per run directory, for the whole run
            summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except Interrupted:
        print(
            f"interrupted: the finished algorithms are saved in {cfg.out_dir}; continue with the "
            "same command and --resume",
            file=sys.stderr,
        )
        return 130
    except ValueError as e:  # e.g. a --resume with other flags than the stored run's
        parser.error(str(e))
    except OSError as e:  # a full disk, an unwritable file: the message names the file
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    for r in summary["runs"]:
        extra = f" kinks {r['kinks']}" if "kinks" in r else ""
        test = f" test {r['test_loss']:.3g}" if r.get("test_loss") is not None else ""
        if r["diverged"]:
            state = f"diverged at step {r['diverged_at']}"
        else:
            state = f"{r['iterations']} it, train {r['train_loss']:.3g}"
        print(f"{r['algorithm']:5s} rho {r['rho']:<6g} seed {r['seed']}: {state}{test}{extra}")
    print(f"wrote {cfg.out_dir} ({summary['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
