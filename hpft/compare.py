"""Entry point `python -m hpft.compare`: a table and an accuracy/speedup Pareto plot of training and evaluation runs.

    python -m hpft.compare --runs multirun/2026-01-01_12-00-00 --out reports/sweep    # a sweep's run folders
    python -m hpft.compare --runs outputs/run1 --runs outputs/run2 --out reports/two  # single runs
    python -m hpft.compare --runs multirun/claims/budget/<time> --out reports/budget  # hpft.evaluate runs
    python -m hpft.compare --project me/hpft --group schedule-shape --out reports/w  # online W&B runs

Writes `comparison.md`, `comparison.csv` and `pareto.png` into `--out` and prints the table. `--runs` reads
training runs' `metrics.json` and `python -m hpft.evaluate` runs' `results.json` (an evaluation's prefill speedup
and unreduced accuracy come from the unreduced evaluation of the same data among the runs read; see
`hpft.comparison`). Offline W&B runs live inside the run folders. A run that lacks a metric gets a blank cell; a
missing or empty folder, or an unreachable project, exits with code 2 and one message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hpft.comparison import load_run_folders, load_wandb_runs, write_comparison
from hpft.errors import UserInputError

USAGE_EXIT_CODE = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (argparse exits 2 on a usage error)."""
    parser = argparse.ArgumentParser(
        prog="python -m hpft.compare",
        description="Tabulate hpft training and evaluation runs and plot accuracy against prefill speedup.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--runs",
        action="append",
        metavar="DIR",
        help="a run folder, or a multirun folder searched recursively for metrics.json (training) and "
        "results.json (hpft.evaluate) (repeatable)",
    )
    source.add_argument("--project", metavar="ENTITY/PROJECT", help="read the runs of a W&B project instead")
    parser.add_argument("--group", help="with --project: only the runs of this W&B group (one sweep)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for comparison.md/.csv and pareto.png")
    parser.add_argument(
        "--metric", help="accuracy key of the plot (default: val/needle/acc, else the first val/<bench>/acc)"
    )
    args = parser.parse_args(argv)
    if args.group and not args.project:
        parser.error("--group needs --project")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit code (0, or 2 for input the user can fix)."""
    args = parse_args(argv)
    try:
        if args.project:
            records, warnings = load_wandb_runs(args.project, group=args.group), []
        else:
            records, warnings = load_run_folders(args.runs)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return USAGE_EXIT_CODE
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    files = write_comparison(records, args.out, accuracy=args.metric)
    print(files.table)
    print(f"\n{len(records)} runs -> {files.markdown}, {files.csv}, {files.plot}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
