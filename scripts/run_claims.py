"""Run the claims suite on the embedded tiny-omni and the synthetic needle benchmark, then report it.

Six claims (docs/claims.md): schedule shape, Mamba score, placement, budget (training-free, one
`conf/experiment/claims_<claim>.yaml` each), finetuning under reduction, and transformers' EVS at the same budget.
Every setting is evaluated on one generated test split per seed; runs that several claims share run once, and a
run whose `results.json` exists is skipped, so an interrupted suite resumes where it stopped. Examples:

    python scripts/run_claims.py --claims all --seeds 0,1,2                 # the whole suite (default sizes)
    python scripts/run_claims.py --claims all --seeds 0,1,2 --skip-finetune # training-free parts only
    python scripts/run_claims.py --claims schedule,evs --seeds 0 --items 24 --out results/claims-smoke
    python scripts/run_claims.py --report-only                              # tables/plots from what has run

Writes `<out>/claims.json`, `<out>/claims.md` and `<out>/<claim>.png` + `budget_pareto.png`; run folders go under
`<out>/runs/` (evaluations) and `<out>/train/` (finetuning).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

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
    parser.add_argument("--frames", type=int, default=32, help="frames per test video (and per training video)")
    parser.add_argument("--out", default="results/claims", help="suite folder")
    parser.add_argument("--skip-finetune", action="store_true", help="leave out the finetune claim (no training)")
    parser.add_argument("--train-steps", type=int, help="max_steps of each finetuning run (default: conf's 300)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    parser.add_argument("--report-only", action="store_true", help="only collect what has run and write the report")
    args = parser.parse_args(argv)
    claims = list(CLAIMS) if args.claims == "all" else _list(args.claims)
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        parser.error(f"unknown claim(s) {unknown}; choose from {','.join(CLAIMS)} or all")
    try:
        args.seeds = [int(s) for s in _list(args.seeds)]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: comma-separated integers")
    if not args.seeds or args.items < 1 or args.frames < 2:
        parser.error("--seeds needs at least one seed, --items >= 1 and --frames >= 2")
    args.claims = [c for c in claims if c != "finetune"] if args.skip_finetune else claims
    return args


def main(argv: list[str] | None = None) -> int:
    """Plan, run (resumably) and report the suite; returns the exit code."""
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
    timings = {} if args.report_only else execute(plan, skip_finetune=args.skip_finetune)
    meta = {
        "command": "python scripts/run_claims.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "claims": ",".join(args.claims),
        "seeds": args.seeds,
        "items": args.items,
        "frames": args.frames,
        "finetune": "skipped" if args.skip_finetune else "run",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "wall_s_this_invocation": round(time.perf_counter() - started, 1),
        "runs_executed": len(timings),
        "run_wall_s": {k.rsplit("/", 1)[-1]: round(v, 1) for k, v in timings.items()},
    }
    files = write_report(collect(plan), args.out, meta)
    print(files["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in files.values())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
