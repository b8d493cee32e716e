"""Entry point `python -m hpft.evaluate`: score a video VLM on one benchmark under any reduction, from any checkpoint.

compose (Hydra, `conf/eval.yaml`) -> validate every setting at once -> load the model (`hpft.checkpoints`) ->
score each item, appending it to `items.jsonl` (`hpft.eval_runner`) -> `results.json` + loggers.

    python -m hpft.evaluate                                     # tiny-omni on the synthetic needle grid
    python -m hpft.evaluate benchmark=videomme benchmark.root=/data/Video-MME model.path=/models/omni
    python -m hpft.evaluate ckpt=outputs/<run> schedule=none     # a training run, unreduced
    python -m hpft.evaluate ckpt=exports/<name>                   # an exported folder, its reduction.json
    python -m hpft.evaluate ckpt=exports/<name> keep=0.5          # ... with another budget
    python -m hpft.evaluate max_items=20 hydra.run.dir=outputs/eval/x   # then rerun without max_items: resumes
    python -m hpft.evaluate schedule=none video_pruning_rate=0.75  # transformers' EVS baseline (hpft.evs)

The run folder (`hydra.run.dir`, default `outputs/eval/<benchmark>/<time>`) holds `config.yaml` (resolved),
`items.jsonl`, `settings.json`, `results.json` (see `hpft.eval_runner.RESULT_KEYS`), `csv/` and `wandb/` (offline
unless W&B credentials are configured), and for the needle benchmark its V-NIAH heatmap and grid. A config or
data mistake exits with code 2 and one message listing every problem.

An exported folder (`python -m hpft.export`) holds the reduction it was trained and evaluated with
(`reduction.json`). With `reduction_from_ckpt=true` (default) it replaces the schedule, keep, scorer and
min_tokens of `conf/eval.yaml`, except for the parts given on the command line (`schedule=...`, `schedule.p=...`,
`keep=...`, `scorer=...`, `reduction.min_tokens=...`); `results.json` then names the file under `reduction_from`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf

import hpft.config_builders  # noqa: F401  (registers the ${hpft_root:} resolver before composition)
from hpft.checkpoints import (
    HF_FOLDER,
    LIGHTNING_FILE,
    REDUCTION_PARTS,
    checkpoint_kind,
    combine_reduction,
    load_for_eval,
    overridden_reduction_parts,
    run_config_for,
)
from hpft.cli import exits_on_user_error, run
from hpft.config_checks import ConfigError, _cause, _model_config, check_budget, check_reduction
from hpft.errors import UserInputError
from hpft.eval_runner import BenchmarkSpec, evaluate_benchmark, load_items, metric_dict
from hpft.evs import check_evs, set_video_pruning_rate
from hpft.loggers import finish_loggers, instantiate_group
from hpft.models.loading import REDUCTION_FILE, load_reduction_settings, resolve_model_path
from hpft.run_report import write_config

log = logging.getLogger(__name__)


class EvalConfigError(ConfigError):
    """Every problem found in a composed `conf/eval.yaml`, as one message (with the evaluate command in the fix)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.args = (str(self.args[0]).replace("python -m hpft.train", "python -m hpft.evaluate"),)


def _check_ckpt(cfg: DictConfig) -> tuple[str | None, list[str]]:
    ckpt = cfg.get("ckpt")
    if ckpt is None:
        return None, []
    try:
        kind = checkpoint_kind(str(ckpt))
        if kind == LIGHTNING_FILE:
            run_config_for(str(ckpt))
    except UserInputError as err:
        return None, [str(err)]
    return kind, []


def _reduction_source(cfg: DictConfig, overrides: Sequence[str]) -> Path | None:
    """The exported folder's `reduction.json` when it decides at least one part of the reduction, else None."""
    ckpt = cfg.get("ckpt")
    if ckpt is None or not cfg.get("reduction_from_ckpt", True) or checkpoint_kind(str(ckpt)) != HF_FOLDER:
        return None
    file = Path(str(ckpt)).expanduser().resolve() / REDUCTION_FILE
    if not file.is_file() or overridden_reduction_parts(overrides) >= set(REDUCTION_PARTS):
        return None
    return file


def _exported_reduction(cfg: DictConfig, reduction: Any, overrides: Sequence[str]) -> tuple[Any, list[str]]:
    """`reduction` with an exported folder's `reduction.json` applied (see the module docstring)."""
    source = _reduction_source(cfg, overrides)
    if reduction is None or source is None:
        return reduction, []
    try:
        exported = load_reduction_settings(source.parent)
        combined = combine_reduction(reduction, exported, overridden_reduction_parts(overrides))
    except (UserInputError, ValueError) as err:
        return None, [f"ckpt={cfg.ckpt}: {err}"]
    log.info("reduction from %s, command line's parts kept: %s", source, combined.as_dict())
    return combined, []


def _command_line(cfg: DictConfig, overrides: Sequence[str] | None) -> list[str]:
    """The overrides given on the command line (`hydra.overrides.task` when composed with the Hydra node)."""
    if overrides is not None:
        return list(overrides)
    return list(OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])


def check_eval_config(
    cfg: DictConfig, overrides: Sequence[str] | None = None
) -> tuple[Any, BenchmarkSpec | None, list[str]]:
    """Run every startup check on a composed eval config (nothing heavy: no weights, no videos decoded).

    Checks the reduction (keep in (0, 1], schedule/scorer), the benchmark node (fields, its module, its root),
    the model folder, the checkpoint's form, `max_items`, and that the budget is reachable at the benchmark's
    frame count. For an exported folder with `reduction.json` (and `reduction_from_ckpt`), the returned reduction
    is its setting with the command line's parts applied.

    Args:
        cfg: the composed `conf/eval.yaml`.
        overrides: the command-line overrides (which reduction parts the user set); None reads
            `hydra.overrides.task` from `cfg` when present, else none.

    Returns:
        `(ReductionConfig or None, BenchmarkSpec or None, every problem found)`.
    """
    reduction, problems = check_reduction(cfg)
    spec = None
    try:
        spec = instantiate(cfg.benchmark)
    except (InstantiationException, ValueError, TypeError) as err:
        problems.append(f"benchmark: {_cause(err)}")
    if spec is not None:
        try:
            spec.benchmark_module()
        except UserInputError as err:
            problems.append(str(err))
        if spec.root is not None or spec.synthetic is None:  # a generated root is made later, not checked here
            try:
                spec.resolve_root()
            except UserInputError as err:
                problems.append(str(err))
    kind, ckpt_problems = _check_ckpt(cfg)
    problems += ckpt_problems
    if kind == HF_FOLDER:
        reduction, reduction_problems = _exported_reduction(cfg, reduction, _command_line(cfg, overrides))
        problems += reduction_problems
    model_config = None
    if kind != HF_FOLDER:  # an exported folder replaces model.path
        model_config, model_problems = _model_config(cfg)
        problems += model_problems
    max_items = cfg.get("max_items")
    if max_items is not None and (not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1):
        problems.append(f"max_items={max_items!r} must be an integer >= 1, or null (every item)")
    if reduction is not None and model_config is not None and spec is not None and spec.num_frames is not None:
        problems += check_budget(reduction, model_config, spec.num_frames)
    problems += check_evs(cfg.get("video_pruning_rate", 0.0), reduction is not None and reduction.active)
    return reduction, spec, problems


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def format_results(results: dict[str, Any]) -> str:
    """A few lines summarising `results.json` for the terminal."""
    keys = ("benchmark", "schedule", "scorer", "keep", "realised_keep", "acc", "n_scored", "n_total", "n_skipped",
            "n_unparsed", "frames_per_item", "tokens_per_frame", "prefill_s")  # fmt: skip
    width = max(map(len, keys))
    lines = [f"{k.ljust(width)}  {_fmt(results.get(k))}" for k in keys]
    for breakdown, table in (results.get("by") or {}).items():
        cells = ", ".join(f"{k}: {_fmt(v)}" for k, v in table.items())
        lines.append(f"{('by ' + breakdown).ljust(width)}  {cells}")
    return "\n".join(lines)


def evaluate(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Run one evaluation from a composed config; returns the results also written to `results.json`.

    Args:
        cfg: the composed `conf/eval.yaml`.
        overrides: the command-line overrides, to tell which reduction parts the user set when `ckpt` is an
            exported folder (see `check_eval_config`).

    Raises:
        EvalConfigError: listing every invalid setting (checked before the model is loaded).
        UserInputError: a problem in the data or checkpoint found later (missing videos, mismatched weights).
    """
    reduction, spec, problems = check_eval_config(cfg, overrides)
    if problems:
        raise EvalConfigError(problems)
    output_dir = Path(cfg.paths.output_dir)
    write_config(output_dir, cfg)
    seed_everything(cfg.seed, workers=False, verbose=False)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(cfg.cpu_threads)

    loaded = load_items(spec)  # layout and missing-video errors before the (possibly large) model loads
    ckpt = cfg.get("ckpt")
    vlm, tokenizer = load_for_eval(cfg.model, ckpt)
    vlm.to(_device(str(cfg.device)))
    settings = {
        "model": resolve_model_path(str(vlm.config._name_or_path or cfg.model.get("path"))),
        "ckpt": None if ckpt is None else str(Path(str(ckpt)).expanduser().resolve()),
    }
    evs_rate = float(cfg.get("video_pruning_rate", 0.0) or 0.0)
    if evs_rate > 0:  # only then: eval folders written without EVS still resume
        set_video_pruning_rate(vlm, evs_rate)
        settings["video_pruning_rate"] = evs_rate
    source = _reduction_source(cfg, _command_line(cfg, overrides))
    if source is not None:  # only then: eval folders written before exports existed still resume
        settings["reduction_from"] = str(source)
    log.info("evaluating %s on %s under %s", settings, spec.name, reduction.as_dict())
    loggers = instantiate_group(cfg.get("logger"))
    try:
        for logger in loggers:
            logger.log_hyperparams(
                {
                    **reduction.as_dict(),
                    "benchmark": spec.name,
                    **settings,
                    "config": OmegaConf.to_container(cfg, resolve=True),
                }
            )
        results = evaluate_benchmark(
            vlm,
            tokenizer,
            spec,
            reduction,
            out_dir=output_dir,
            max_items=cfg.get("max_items"),
            progress=bool(cfg.get("progress", True)),
            time_prefill=bool(cfg.get("time_prefill", True)),
            settings=settings,
            loaded=loaded,
        )
        metrics = metric_dict(results)
        for logger in loggers:
            logger.log_metrics(metrics, step=0)
            logger.save()
    finally:
        finish_loggers(loggers)
    print(f"\n{format_results(results)}\nresults: {output_dir / 'results.json'}", flush=True)
    return results


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
@exits_on_user_error
def main(cfg: DictConfig) -> Any:
    """Hydra task: `evaluate(cfg)`; a config or data error prints one message and exits with code 2."""
    results = evaluate(cfg, overrides=list(HydraConfig.get().overrides.task))
    return results.get("acc")


if __name__ == "__main__":
    run(main)
