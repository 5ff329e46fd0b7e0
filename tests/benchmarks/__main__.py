"""The benchmark suite: ``python -m tests.benchmarks [--quick] [NAME ...]``.

Every figure is measured side by side in one process run: bare and supervised interleaved,
several repetitions, medians and spread, because machines are shared and noisy. It is kept
out of the test run; it prints a table.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import render_events_then_drop_them

BENCHMARKS = (
    "overhead",
    "latency",
    "scale",
    "sidecar",
    "shared",
    "recording",
    "fingerprint",
    "instructions",
)
NAME, VALUE, SPREAD = 64, 36, 24  # column widths


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"which to run: {', '.join(BENCHMARKS)} (all)"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; expected {', '.join(BENCHMARKS)}")
    render_events_then_drop_them()
    # Each row is printed as it is measured: a run cut short still shows what it measured.
    for name in args.names or BENCHMARKS:
        for row in importlib.import_module(f"{__package__}.{name}").rows(args.quick):
            print(f"{row.name:<{NAME}}  {row.value:<{VALUE}}  {row.spread:<{SPREAD}}  {row.target}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
