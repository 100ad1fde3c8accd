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

from one_layer_relu_nets.engine import (
    GROUPS,
    Config,
    Interrupted,
    make_dataset,
    matched_targets,
    targets_digest,
    train,
)
from suite.cli import (
    cli_fields,
    common_parser,
    dataclass_parser,
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


def _group(p: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    return next(g for g in p._action_groups if g.title == title)


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from ``Config``'s ``suite.cli.flag`` fields
    (``suite.cli.dataclass_parser``), plus the flags that are not one field each:
    ``--unnormalized`` (``normalize``), ``--num_seeds`` (with ``--seed``: ``seeds``),
    ``--resume`` / ``--overwrite`` (how ``train`` treats ``--out_dir``), and ``--seed``,
    ``--device``, ``--out_dir`` of ``suite.cli.common_parser``."""
    p = dataclass_parser(
        Config,
        prog="python -m one_layer_relu_nets.train",
        description=__doc__,
        groups=GROUPS,
        parents=[common_parser()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _group(p, "algorithms").add_argument(
        "--unnormalized",
        action="store_true",
        help="unnormalized ascent e = rho g instead of rho g / ||g||_2 (default: off)",
    )
    g = _group(p, "runs and output")
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
        "--num_seeds",
        type=int,
        default=len(Config().seeds),
        help="seeds --seed, ..., --seed + num_seeds - 1 (initialization, SGD order) "
        "(default: %(default)s)",
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
    """The ``Config`` of parsed flags: every flag field as parsed, and the fields set by the
    other flags (``build_parser``)."""
    return Config(
        **{f.name: getattr(args, f.name) for f in cli_fields(Config)},
        normalize=not args.unnormalized,
        seeds=list(range(args.seed, args.seed + args.num_seeds)),
        device=str(args.device),
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
