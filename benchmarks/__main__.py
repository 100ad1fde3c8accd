"""`make bench`: run every benchmark module (``benchmarks/bench_*.py``) in one process.

Each module has ``main() -> str`` that runs its measurements and returns a Markdown section; the
sections are printed and written to ``results/bench/<module>.md`` (benchmarks/README.md records the
tables measured on the reference machine).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import benchmarks
from suite.rundir import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=names, default=None, help="modules to run")
    ap.add_argument("--out_dir", type=Path, default=Path("results/bench"))
    args = ap.parse_args(argv)
    failed = []
    for name in names:
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        try:
            text = importlib.import_module(f"benchmarks.{name}").main()
        except Exception as e:  # report and go on: one broken benchmark must not hide the others
            import traceback

            traceback.print_exc()
            failed.append(f"{name}: {e}")
            continue
        print(text, flush=True)
        atomic_write_text(args.out_dir / f"{name}.md", text)
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
