"""Run the claims suite on the embedded tiny-omni and the synthetic needle benchmark, then report it.

Six claims (docs/claims.md): schedule shape, Mamba score, placement, budget (training-free, one
`conf/experiment/claims_<claim>.yaml` each), finetuning under reduction, and transformers' EVS at the same budget.
Every setting is evaluated on one generated test split per seed; runs that several claims share run once, and a
run whose `results.json` exists is skipped, so an interrupted suite resumes where it stopped. Examples:

    python scripts/run_claims.py --claims all --seeds 0,1,2                 # the whole suite (default sizes)
    python scripts/run_claims.py --claims all --seeds 0,1,2 --jobs 3        # one process per seed, side by side
    python scripts/run_claims.py --claims all --seeds 0,1,2 --skip-finetune # training-free parts only
    python scripts/run_claims.py --claims schedule,evs --seeds 0 --items 24 --out results/claims-smoke
    python scripts/run_claims.py --report-only                              # tables/plots from what has run

Writes `<out>/claims.json`, `<out>/claims.md` and `<out>/<claim>.png` + `budget_pareto.png`; run folders go under
`<out>/runs/` (evaluations) and `<out>/train/` (finetuning); with `--jobs N`, each job's output goes to
`<out>/jobs/job<i>.log`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from hpft.claims import CLAIMS, DataSpec, collect, execute, plan_suite, train_command
from hpft.claims_report import write_report


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (argparse exits 2 on a usage error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", default="all", help=f"comma-separated of {','.join(CLAIMS)}, or all")
    parser.add_argument("--seeds", default="0,1,2", help="seed indices: test split 1000+seed, training/random seed")
    parser.add_argument("--items", type=int, default=192, help="questions per test split (3 per video)")
    parser.add_argument("--frames", type=int, default=32, help="frames per test and training video (a multiple of 8)")
    parser.add_argument("--out", default="results/claims", help="suite folder")
    parser.add_argument("--skip-finetune", action="store_true", help="leave out the finetune claim (no training)")
    parser.add_argument("--train-steps", type=int, help="max_steps of each finetuning run (default: conf's 300)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    parser.add_argument("--report-only", action="store_true", help="only collect what has run and write the report")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes side by side, each running whole seeds (at most one per seed; every "
                             "evaluation uses one thread, so up to the number of cores pays off)")  # fmt: skip
    # Set by a --jobs parent for its children: write the run timings there and leave the report to the parent.
    parser.add_argument("--timings-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: at least 1")
    claims = list(CLAIMS) if args.claims == "all" else _list(args.claims)
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        parser.error(f"unknown claim(s) {unknown}; choose from {','.join(CLAIMS)} or all")
    try:
        args.seeds = [int(s) for s in _list(args.seeds)]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: comma-separated integers")
    if not args.seeds or args.items < 1:
        parser.error("--seeds needs at least one seed and --items >= 1")
    if args.frames < 8 or args.frames % 8:
        parser.error(f"--frames {args.frames}: the needle videos need a multiple of 8 frames (whole tubelets per "
                     "quarter), e.g. 16 or 32")  # fmt: skip
    args.claims = [c for c in claims if c != "finetune"] if args.skip_finetune else claims
    return args


def split_seeds(seeds: list[int], jobs: int) -> list[list[int]]:
    """Deal the seeds round-robin into at most `jobs` non-empty groups."""
    return [group for group in (seeds[i::jobs] for i in range(jobs)) if group]


def _without_option(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """`argv` without the options `names` and their values (`--opt V` or `--opt=V`)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        elif not token.startswith(tuple(f"{n}=" for n in names)):
            out.append(token)
    return out


_PROGRESS = re.compile(r"^(\[(finetuned )?\d+/\d+\] |training |trained )")  # the lines `execute` prints per run


class _Job(NamedTuple):
    """One `--jobs` child: its index, its seeds, its output log, the file it writes its timings to, its process."""

    index: int
    seeds: list[int]
    log: Path
    timings_file: Path
    process: subprocess.Popen


def _follow(jobs: list[_Job], every_s: float = 10.0) -> None:
    """Until every child exits, print each child's newest progress line whenever it changes."""
    shown: dict[int, str] = {}
    while True:
        running = [job.process.poll() is None for job in jobs]
        for job in jobs:
            text = job.log.read_text(encoding="utf-8", errors="replace")
            lines = [line for line in text.splitlines() if _PROGRESS.match(line)]
            if lines and lines[-1] != shown.get(job.index):
                shown[job.index] = lines[-1]
                print(f"job {job.index}: {lines[-1]}", flush=True)
        if not any(running):
            return
        time.sleep(every_s)


def run_jobs(args: argparse.Namespace, argv: list[str]) -> dict[str, float]:
    """Run the suite as `--jobs` child processes, each on its share of the seeds; returns their run timings.

    Seeds share no run (each evaluates its own test split and trains its own finetuning runs), so the children
    never write the same folder. Each child's output goes to `<out>/jobs/job<i>.log`.

    Raises:
        SystemExit: a child failed (its log is named).
    """
    base = _without_option(argv, ("--jobs", "--seeds", "--timings-out"))
    folder = Path(args.out) / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, seeds in enumerate(split_seeds(args.seeds, args.jobs)):
        timings_file = folder / f"job{i}-timings.json"
        timings_file.unlink(missing_ok=True)
        log = folder / f"job{i}.log"
        command = [sys.executable, str(Path(__file__).resolve()), *base,
                   "--seeds", ",".join(map(str, seeds)), "--timings-out", str(timings_file)]  # fmt: skip
        with open(log, "w", encoding="utf-8") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        jobs.append(_Job(i, seeds, log, timings_file, process))
        print(f"job {i}: seeds {seeds}, log {log}", flush=True)
    _follow(jobs)
    timings: dict[str, float] = {}
    failed = []
    for job in jobs:
        code = job.process.wait()
        if code != 0 or not job.timings_file.is_file():
            failed.append(f"job {job.index} (seeds {job.seeds}) exited {code}; see {job.log}")
            continue
        timings.update(json.loads(job.timings_file.read_text(encoding="utf-8")))
        print(f"job {job.index} done ({len(job.seeds)} seed(s))", flush=True)
    if failed:
        sys.exit("error: " + "; ".join(failed) + ". Rerunning the same command resumes every finished run.")
    return timings


def main(argv: list[str] | None = None) -> int:
    """Plan, run (resumably) and report the suite; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(1)  # the tiny model is fastest on one thread (conf's cpu_threads: 1)
    os.environ.setdefault("WANDB_MODE", "offline")
    train_overrides = [f"max_steps={args.train_steps}"] if args.train_steps else []
    plan = plan_suite(args.claims, args.seeds, DataSpec(args.items, args.frames), args.out, train_overrides)
    evals = plan.unique_evals
    if args.dry_run:
        for run in evals:
            state = "done" if run.done else "todo"
            print(f"{state}  {run.folder.name}: python -m hpft.evaluate {' '.join(run.overrides)}")
        for run in plan.trainings:
            print(f"{'done' if run.done else 'todo'}  {' '.join(train_command(run)[1:])}")
        print(f"{len(evals)} evaluations, {len(plan.trainings)} trainings")
        return 0
    started = time.perf_counter()
    if args.report_only:
        timings = {}
    elif args.jobs > 1 and len(args.seeds) > 1:
        timings = run_jobs(args, argv)
    else:
        timings = execute(plan, skip_finetune=args.skip_finetune)
    if args.timings_out:
        Path(args.timings_out).write_text(json.dumps(timings), encoding="utf-8")
        return 0
    meta = {
        "command": "python scripts/run_claims.py " + " ".join(argv),
        "claims": ",".join(args.claims),
        "seeds": args.seeds,
        "items": args.items,
        "frames": args.frames,
        "finetune": "skipped" if args.skip_finetune else "run",
        "jobs": min(args.jobs, len(args.seeds)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "wall_s_this_invocation": round(time.perf_counter() - started, 1),
        "runs_executed": len(timings),
        "run_wall_s": {k.rsplit("/", 1)[-1]: round(v, 1) for k, v in timings.items()},
    }
    previous = Path(args.out) / "claims.json"
    if args.report_only and previous.is_file():
        # Re-reporting runs nothing: keep the timings and command of the invocation that ran the suite.
        ran = json.loads(previous.read_text(encoding="utf-8")).get("meta", {})
        if ran.get("runs_executed"):
            meta = {**ran, "report_regenerated_by": meta["command"]}
    files = write_report(collect(plan), args.out, meta)
    print(files["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in files.values())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
