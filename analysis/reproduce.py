"""`make reproduce`: run every family's reproduction for a profile, then write the claims report.

Each stage is a module with ``reproduce(profile: str, results_dir: Path, figures_dir: Path)``; it
writes its runs under ``results/<family>/``, its figures under ``figures/``, and its claims table
``results/<family>/claims.csv`` (``sharpness.runs.write_claims``). Stages run in order; a failing
stage is reported and the others still run, and the command exits non-zero at the end.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

# (family, module): add a family here when it lands.
STAGES = [
    ("core", "analysis.core_demo"),
    ("deep_nets", "analysis.deep_nets"),
    ("diagonal_linear_nets", "analysis.diagonal_linear_nets"),
    ("one_layer_relu_nets", "analysis.one_layer_relu_nets"),
]
PROFILES = ("quick", "full")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="quick", help="quick: CPU minutes")
    ap.add_argument("--results_dir", type=Path, default=Path("results"))
    ap.add_argument("--figures_dir", type=Path, default=Path("figures"))
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="families to run (default: all): " + ", ".join(f for f, _ in STAGES),
    )
    args = ap.parse_args(argv)
    names = [f for f, _ in STAGES]
    for f in args.only or []:
        if f not in names:
            ap.error(f"--only {f}: unknown family; choose from {', '.join(names)}")
    failed = []
    for family, module in STAGES:
        if args.only and family not in args.only:
            continue
        t0 = time.time()
        print(f"== {family}: {module} (profile {args.profile})", flush=True)
        try:
            importlib.import_module(module).reproduce(
                args.profile, args.results_dir, args.figures_dir
            )
            print(f"== {family}: done in {time.time() - t0:.1f} s", flush=True)
        except Exception:
            traceback.print_exc()
            failed.append(family)
            print(f"== {family}: FAILED after {time.time() - t0:.1f} s", flush=True)
    from analysis.report import write_report

    report = write_report(args.results_dir)
    print(f"claims report: {report}")
    if failed:
        print(f"failed stages: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
