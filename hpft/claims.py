"""The claims suite: which runs test each of the method's claims, running them resumably, and collecting their results.

Each training-free claim is one experiment file, `conf/experiment/claims_<claim>.yaml`, whose sweep
(`hydra.sweeper.params`) lists the settings it compares; the finetuning claim trains with
`conf/experiment/claims_finetune.yaml` and evaluates each run's weights. `plan_suite` turns the requested claims,
seeds and data size into evaluation runs (`EvalRun`) and training runs (`TrainRun`):

* every run is evaluated on a generated needle test split of `frames` frames per video whose seed is
  `DATA_SEED_BASE + seed` (one split per seed; the `random` scorer also takes the seed as its own);
* a run's folder is named by what it computes (`run_key`: reduction, EVS rate, checkpoint, data), so the settings
  several claims share (low_to_high at keep 0.25, the unreduced reference) run once, and a folder holding
  `results.json` is never run again (resume);
* each claim's table also gets the unreduced run of the same data and weights, which gives the prefill speedup.

`run_eval` composes `conf/eval.yaml` with the run's overrides and calls `hpft.evaluate.evaluate` in this process (a
model load per run, no interpreter start); `run_training` starts `python -m hpft.train` (one process per run, its
own log). `collect` reads the results back as flat records for `hpft.claims_report`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpft.config_builders import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"
DATA_SEED_BASE = 1000
"""Test split seed = this + the run's seed (seed 0 is the split `scripts/pretrain_tiny.py` reports on)."""
QUESTIONS_PER_VIDEO = 3  # the needle generator asks one question per needle, three needles per video
UNREDUCED = "unreduced"
_CHILD_ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Claim:
    """One claim of the method and how the suite tests it.

    Attributes:
        name: `schedule`, `scorer`, ... (`conf/experiment/claims_<name>.yaml`).
        title: one line for tables and plots.
        measures: what the comparison shows (docs and `claims.md`).
        reference: the setting the others are compared with (the `Δ` column: per-seed paired difference).
        axis: the table's setting column header (the swept key).
    """

    name: str
    title: str
    measures: str
    reference: str
    axis: str


CLAIMS: dict[str, Claim] = {
    c.name: c
    for c in (
        Claim("schedule", "Schedule shape at keep 0.25 (unified scorer)",
              "Does cutting few tokens early and many late (low_to_high) beat the same budget cut uniformly, "
              "early (high_to_low), once (one_shot, FastV-like) or in stages (step, PyramidDrop)?",
              "low_to_high", "schedule"),
        Claim("scorer", "Token score at keep 0.25 (low_to_high)",
              "Is the decay-free Mamba implicit attention (unified) better than keeping the decay (unified_decay), "
              "than query-agnostic scores (norm, mean_pool) and than a random subset?",
              "unified", "scorer"),
        Claim("placement", "Where the cuts happen at keep 0.25 (low_to_high)",
              "Cutting after attention and Mamba blocks (unified, all-layer) against cutting after attention blocks "
              "only or Mamba blocks only, at the same realised keep.",
              "unified", "scorer"),
        Claim("budget", "Budget: accuracy against prefill speedup (low_to_high, unified)",
              "How accuracy falls and prefill speed rises as keep goes from 1.0 (unreduced) to 0.1.",
              "1.0", "keep"),
        Claim("evs", "In-decoder reduction against transformers' EVS at 25% of the visual tokens",
              "EVS (video_pruning_rate 0.75: query-agnostic, before the decoder) against the query-conditioned "
              "progressive reduction at keep 0.25 (same visual token-blocks), and the unreduced model.",
              "in_decoder", "evs_point"),
        Claim("finetune", "LoRA finetuning under reduction (low_to_high, keep 0.25)",
              "The base model reduced (training-free) against the model finetuned under the reduction and the model "
              "finetuned without it, each evaluated at keep 0.25 and unreduced; seeds are training seeds.",
              "training-free → keep 0.25", "training → evaluation"),
    )
}  # fmt: skip
TRAINING_FREE = ("schedule", "scorer", "placement", "budget", "evs")
FINETUNE_TRAININGS = {"ft reduced": "low_to_high", "ft unreduced": "none"}
"""Finetuning runs of the `finetune` claim: label -> training schedule (keep 0.25, `claims_finetune.yaml`)."""
_EVAL_REDUCED = ("schedule=low_to_high", "keep=0.25", "scorer=unified")
_EVAL_UNREDUCED = ("schedule=none",)


# --------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class DataSpec:
    """The test data of every evaluation: generated needle splits, one per seed.

    Attributes:
        items: questions scored per split (`max_items`); the split has `ceil(items / 3)` videos.
        frames: frames per generated video (all videos of a split have this length).
    """

    items: int = 192
    frames: int = 32

    def overrides(self, seed: int) -> list[str]:
        """The `conf/eval.yaml` overrides of seed `seed`'s split."""
        return [
            f"benchmark.synthetic.frames={self.frames}",
            f"benchmark.synthetic.num_videos={math.ceil(self.items / QUESTIONS_PER_VIDEO)}",
            f"benchmark.synthetic.seed={DATA_SEED_BASE + seed}",
            f"max_items={self.items}",
        ]


@dataclass(frozen=True)
class TrainRun:
    """One finetuning run: `python -m hpft.train <overrides> hydra.run.dir=<folder>`."""

    label: str
    seed: int
    overrides: tuple[str, ...]
    folder: Path

    @property
    def done(self) -> bool:
        """A finished run leaves `metrics.json` (written after its checkpoint)."""
        return (self.folder / "metrics.json").is_file()


@dataclass(frozen=True)
class EvalRun:
    """One evaluation of one claim's setting on one seed's split.

    Attributes:
        claim: the claim whose table shows it.
        label: the setting's name in that table.
        seed: the seed (test split; training seed for finetuned weights; scorer seed for `random`).
        overrides: `conf/eval.yaml` overrides (the claim's point, the data, the checkpoint), without the folder.
        folder: where it writes (`runs/<run_key>`); shared by every claim that evaluates the same thing.
        reference: the folder of the unreduced run on the same data and weights (speedup), maybe itself.
        needs: the training run whose weights it evaluates, or None.
    """

    claim: str
    label: str
    seed: int
    overrides: tuple[str, ...]
    folder: Path
    reference: Path
    needs: TrainRun | None = None

    @property
    def done(self) -> bool:
        """Whether `results.json` exists (the run is skipped)."""
        return (self.folder / "results.json").is_file()


@dataclass
class Plan:
    """Every run of a suite, in execution order (each folder listed once in `unique_evals`)."""

    evals: list[EvalRun] = field(default_factory=list)
    trainings: list[TrainRun] = field(default_factory=list)

    @property
    def unique_evals(self) -> list[EvalRun]:
        """One run per folder (the first to name it), references of a seed before its other runs."""
        seen: dict[Path, EvalRun] = {}
        for run in sorted(self.evals, key=lambda r: (r.needs is not None, r.seed, r.folder != r.reference)):
            seen.setdefault(run.folder, run)
        return list(seen.values())


def sweep_points(params: Mapping[str, Any]) -> list[list[str]]:
    """The overrides of every job of a basic-sweeper grid (pure).

    Args:
        params: `hydra.sweeper.params`, key -> comma-separated values.

    Returns:
        One override list per job, in Hydra's order (the first key varies slowest).
    """
    axes = [[f"{key}={value.strip()}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(point) for point in itertools.product(*axes)]


def point_label(point: Sequence[str]) -> str:
    """A sweep point's name in tables: its values (`["schedule=uniform"]` -> `uniform`)."""
    return ", ".join(override.split("=", 1)[1] for override in point)


def compose_eval(overrides: Sequence[str], hydra: bool = False, conf_dir: Path = CONF_DIR):
    """`conf/eval.yaml` composed with `overrides` (Hydra's compose API; no run folder is created); do not modify it.

    Memoised: planning composes the same settings for several claims, and one composition costs ~0.15 s.
    """
    return _compose(tuple(overrides), hydra, Path(conf_dir))


@functools.lru_cache(maxsize=1024)
def _compose(overrides: tuple[str, ...], hydra: bool, conf_dir: Path):
    from hydra import compose, initialize_config_dir

    import hpft.config_builders  # noqa: F401  (the ${hpft_root:} resolver)

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose("eval", overrides=list(overrides), return_hydra_config=hydra)


def claim_points(claim: str, conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """The sweep points of `conf/experiment/claims_<claim>.yaml`."""
    cfg = compose_eval(["paths.output_dir=/unused", f"experiment=claims_{claim}"], hydra=True, conf_dir=conf_dir)
    return sweep_points(cfg.hydra.sweeper.params)


def run_key(cfg) -> str:
    """A folder name naming what an evaluation computes, equal for equal computations.

    Readable part: the data seed, the checkpoint, EVS, and the reduction (`unreduced` when nothing is cut, whatever
    the schedule's name); then a hash of everything that changes the numbers (reduction, EVS rate, checkpoint,
    model, benchmark and data settings, items, device).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    reduction = instantiate(cfg.reduction)
    rate = float(cfg.get("video_pruning_rate", 0.0) or 0.0)
    ckpt = cfg.get("ckpt")
    bench = OmegaConf.to_container(cfg.benchmark, resolve=True)
    payload = {
        "reduction": reduction.as_dict() if reduction.active else UNREDUCED,
        "video_pruning_rate": rate,
        "ckpt": None if ckpt is None else str(Path(str(ckpt)).expanduser().resolve()),
        "model": str(cfg.model.get("path")),
        "dtype": str(cfg.model.get("dtype")),
        "benchmark": bench,
        "max_items": cfg.get("max_items"),
        "device": str(cfg.get("device")),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = [f"d{(bench.get('synthetic') or {}).get('seed', 'x')}"]
    if ckpt is not None:
        parts.append(Path(str(ckpt)).name)
    if rate > 0:
        parts.append(f"evs{rate:g}")
    if reduction.active:
        parts += [reduction.schedule, f"k{reduction.keep:g}", reduction.scorer]
        if reduction.scorer == "random":
            parts.append(f"s{reduction.seed}")
    elif rate == 0:
        parts.append(UNREDUCED)
    return "-".join(parts + [digest])


def _with_scorer_seed(cfg, overrides: list[str], seed: int) -> list[str]:
    """`scorer.seed=<seed>` for a scorer that takes one (`random`): its subset then varies with the seed."""
    return [*overrides, f"scorer.seed={seed}"] if "seed" in cfg.scorer else overrides


def _eval_run(
    claim: str, label: str, seed: int, overrides: list[str], runs_dir: Path, common: Sequence[str],
    needs: TrainRun | None = None,
) -> EvalRun:  # fmt: skip
    """Resolve one evaluation: its folder (`run_key`) and its unreduced reference on the same data and weights."""
    base = ["paths.output_dir=/unused", *common]
    cfg = compose_eval([*base, *overrides])
    overrides = _with_scorer_seed(cfg, overrides, seed)
    cfg = compose_eval([*base, *overrides])
    ckpt = [o for o in overrides if o.startswith("ckpt=")]
    ref_cfg = compose_eval([*base, *ckpt, *_EVAL_UNREDUCED])
    return EvalRun(
        claim=claim,
        label=label,
        seed=seed,
        overrides=tuple([*common, *overrides]),
        folder=runs_dir / run_key(cfg),
        reference=runs_dir / run_key(ref_cfg),
        needs=needs,
    )


def plan_suite(
    claims: Iterable[str],
    seeds: Sequence[int],
    data: DataSpec,
    out: str | os.PathLike[str],
    train_overrides: Sequence[str] = (),
    eval_overrides: Sequence[str] = ("logger=csv", "progress=false"),
    conf_dir: Path = CONF_DIR,
) -> Plan:
    """Every run of the requested claims (see the module docstring).

    Args:
        claims: names of `CLAIMS`.
        seeds: seed indices (test split `DATA_SEED_BASE + seed`; training seed; `random` scorer seed).
        data: items and frames of the test splits (and the training frames).
        out: the suite folder (`runs/`, `train/` go under it).
        train_overrides: extra `hpft.train` overrides of every finetuning run (e.g. `max_steps=50`).
        eval_overrides: overrides of every evaluation (loggers, progress bar).
        conf_dir: the `conf/` folder.

    Raises:
        ValueError: an unknown claim.
    """
    claims = list(dict.fromkeys(claims))
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        raise ValueError(f"unknown claim(s) {unknown}; choose from {list(CLAIMS)} or all")
    out = Path(out).resolve()
    runs_dir = out / "runs"
    plan = Plan()
    for seed in seeds:
        common = [*eval_overrides, *data.overrides(seed)]
        for claim in (c for c in claims if c in TRAINING_FREE):
            runs = [
                _eval_run(claim, point_label(point), seed, [f"experiment=claims_{claim}", *point], runs_dir, common)
                for point in claim_points(claim, conf_dir)
            ]
            if all(run.folder != run.reference for run in runs):  # no point is unreduced: the reference joins
                runs.append(_eval_run(claim, UNREDUCED, seed, list(_EVAL_UNREDUCED), runs_dir, common))
            plan.evals += runs
        if "finetune" in claims:
            plan.evals += [
                _eval_run("finetune", "training-free → keep 0.25", seed, list(_EVAL_REDUCED), runs_dir, common),
                _eval_run("finetune", "training-free → unreduced", seed, list(_EVAL_UNREDUCED), runs_dir, common),
            ]
            for label, schedule in FINETUNE_TRAININGS.items():
                folder = out / "train" / f"{label.replace(' ', '_')}-f{data.frames}-seed{seed}"
                train = TrainRun(
                    label=label,
                    seed=seed,
                    overrides=("experiment=claims_finetune", f"schedule={schedule}", f"seed={seed}",
                               f"data.num_frames={data.frames}", "logger=csv", *train_overrides),
                    folder=folder,
                )  # fmt: skip
                plan.trainings.append(train)
                for target, evaluation in (("keep 0.25", _EVAL_REDUCED), (UNREDUCED, _EVAL_UNREDUCED)):
                    overrides = [f"ckpt={folder}", *evaluation]
                    plan.evals.append(
                        _eval_run("finetune", f"{label} → {target}", seed, overrides, runs_dir, common, needs=train)
                    )
    return plan


# --------------------------------------------------------------------------------------------- run


def run_eval(run: EvalRun) -> dict[str, Any]:
    """Evaluate one run in this process (`hpft.evaluate.evaluate`), unless its `results.json` exists.

    Returns:
        Its results (read back when skipped).
    """
    if run.done:
        return json.loads((run.folder / "results.json").read_text(encoding="utf-8"))
    from hpft.evaluate import evaluate

    overrides = [*run.overrides, f"paths.output_dir={run.folder}"]
    return evaluate(compose_eval(overrides), overrides=list(run.overrides))


def train_command(run: TrainRun) -> list[str]:
    """The `python -m hpft.train` command line of a finetuning run."""
    return [sys.executable, "-m", "hpft.train", *run.overrides, f"hydra.run.dir={run.folder}"]


def run_training(run: TrainRun, env: Mapping[str, str] | None = None) -> Path:
    """Train one finetuning run in a child process (its output in `<folder>.log`), unless it finished before.

    Raises:
        RuntimeError: the training exited with an error (the log's tail is in the message).
    """
    if run.done:
        return run.folder
    run.folder.parent.mkdir(parents=True, exist_ok=True)
    log = run.folder.with_name(run.folder.name + ".log")
    env = {**os.environ, **_CHILD_ENV, **(env or {})}
    with open(log, "w", encoding="utf-8") as handle:
        code = subprocess.call(train_command(run), stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"training {run.folder} failed (exit {code}); log {log}:\n{tail}")
    return run.folder


def execute(plan: Plan, skip_finetune: bool = False, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Run every planned run that is not done yet; returns the wall seconds of each run it executed (by folder).

    Finetuning runs (and the evaluations of their weights) are skipped with `skip_finetune`.
    """
    timings: dict[str, float] = {}
    evals = [r for r in plan.unique_evals if r.needs is None]
    todo = [r for r in evals if not r.done]
    echo(f"{len(evals)} training-free evaluations, {len(evals) - len(todo)} already done")
    for i, run in enumerate(todo, 1):
        started = time.perf_counter()
        results = run_eval(run)
        timings[str(run.folder)] = time.perf_counter() - started
        echo(f"[{i}/{len(todo)}] {run.folder.name}: acc {results.get('acc')} ({timings[str(run.folder)]:.0f} s)")
    if skip_finetune or not plan.trainings:
        return timings
    for run in plan.trainings:
        started = time.perf_counter()
        if not run.done:
            echo(f"training {run.folder.name} ...")
            run_training(run)
            timings[str(run.folder)] = time.perf_counter() - started
            echo(f"trained {run.folder.name} ({timings[str(run.folder)]:.0f} s)")
    finetuned = [r for r in plan.unique_evals if r.needs is not None and not r.done]
    for i, run in enumerate(finetuned, 1):
        started = time.perf_counter()
        results = run_eval(run)
        timings[str(run.folder)] = time.perf_counter() - started
        echo(f"[finetuned {i}/{len(finetuned)}] {run.folder.name}: acc {results.get('acc')} "
             f"({timings[str(run.folder)]:.0f} s)")  # fmt: skip
    return timings


# --------------------------------------------------------------------------------------------- collect


def _results(folder: Path) -> dict[str, Any] | None:
    path = folder / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


OBJECT_KINDS = ("colour", "shape")
"""Question kinds that ask about one object (its colour, or the object of a colour): the binding the reduction
must preserve. The third kind, "in which quarter", also needs *when* the object appears (the frame labels around its
tokens): it is in the overall accuracy, not in this one."""


def kind_accuracy(results: Mapping[str, Any], kinds: Sequence[str]) -> float | None:
    """Accuracy over the questions of `kinds` (count-weighted from `results.json`'s `by.kind` / `counts.kind`).

    Returns None when the results hold no question of those kinds (or no per-kind breakdown).
    """
    accuracy = (results.get("by") or {}).get("kind") or {}
    counts = (results.get("counts") or {}).get("kind") or {}
    total = sum(counts.get(k, 0) for k in kinds if k in accuracy)
    if not total:
        return None
    return sum(accuracy[k] * counts[k] for k in kinds if k in accuracy and k in counts) / total


def collect(plan: Plan) -> list[dict[str, Any]]:
    """One flat record per planned evaluation that has results (see `hpft.claims_report.aggregate`).

    Fields: `claim`, `setting`, `seed`, `order` (the setting's place in its claim), `acc`, `acc_object` (colour and
    shape questions only, `kind_accuracy`), `prefill_s`,
    `realised_keep`, `n_scored`, `speedup` (the unreduced run's `prefill_s` on the same data and weights over this
    run's; None without it), `folder`.
    """
    records = []
    order: dict[tuple[str, str], int] = {}
    for run in plan.evals:
        order.setdefault((run.claim, run.label), len([k for k in order if k[0] == run.claim]))
        results, reference = _results(run.folder), _results(run.reference)
        if results is None:
            continue
        prefill, ref_prefill = results.get("prefill_s"), (reference or {}).get("prefill_s")
        speedup = ref_prefill / prefill if prefill and ref_prefill else None
        records.append(
            {
                "claim": run.claim,
                "setting": run.label,
                "seed": run.seed,
                "order": order[(run.claim, run.label)],
                "acc": results.get("acc"),
                "acc_object": kind_accuracy(results, OBJECT_KINDS),
                "prefill_s": prefill,
                "realised_keep": results.get("realised_keep"),
                "n_scored": results.get("n_scored"),
                "speedup": speedup,
                "folder": str(run.folder),
            }
        )
    return records
