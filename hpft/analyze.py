"""Entry point `python -m hpft.analyze`: layerwise sparsity, importance stability and stateful probing of a hybrid VLM.

compose (Hydra, `conf/analyze.yaml`) -> validate every setting, then the split's rows, before the weights load ->
load the model -> `hpft.analysis.runner.run_analysis` -> `analysis.json` + PNGs (`hpft.analysis.plots`) -> loggers.

    python -m hpft.analyze                                   # tiny-omni, generated needle val split
    python -m hpft.analyze probe.cut_block=4 out=outputs/analyze/cut4
    python -m hpft.analyze data=needle_fixture num_videos=2 probe.train_size=3 probe.test_size=3 logger=csv
    python -m hpft.analyze -m probe.cut_block=0,2,4,7          # one folder per cut: multirun/analyze/<time>/<job>

`out` (default `outputs/analyze/<time>`) receives `analysis.json`, `sparsity.png`, `stability.png`,
`stability_adjacent.png`, `probing.png`, `config.yaml`, `csv/` and `wandb/` (offline unless W&B credentials are
configured; W&B also gets the tables and the figures). A setting that cannot work (a cut block out of range or
after a non-mixing block, a model without attention blocks, fewer videos than the probe needs) exits with code 2
and one message listing every problem. See `docs/analyze.md` for what each number and plot means.

Measured: the default run (40 videos: 120 questions scored; 64 + 32 probed needles x 8 colours x 4 variants) took
85 s wall (56 s CPU, `cpu_threads=1`) on a shared 2-core CPU, of which 71 s inside `analyze` (the rest: imports,
W&B start-up); the needle split is generated once (about 1 s) and cached.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf

import hpft.config_builders  # noqa: F401  (registers the ${hpft_root:} resolver before composition)
from hpft.analysis.checks import AnalyzeConfigError, check_rows, check_settings
from hpft.analysis.plots import write_plots
from hpft.analysis.publish import flat_metrics, log_analysis
from hpft.analysis.runner import run_analysis
from hpft.cli import exits_on_user_error, run
from hpft.config_checks import _cause
from hpft.data.datamodule import NeedleQADataset, read_question_rows
from hpft.loggers import finish_loggers, instantiate_group
from hpft.models.loading import resolve_model_path
from hpft.models.processor import tokens_per_tubelet
from hpft.run_report import write_config

log = logging.getLogger(__name__)
RESULTS_FILE = "analysis.json"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _json_ready(value: Any) -> Any:
    """NaN becomes null (strict JSON); containers are walked."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _split_file(cfg: DictConfig) -> tuple[Any, Path]:
    """The data module and the question file of `cfg.split` (generated on first use when there is no data_dir)."""
    try:
        datamodule = instantiate(cfg.data)
        return datamodule, datamodule.split_file(str(cfg.split))
    except (FileNotFoundError, ValueError) as err:
        raise AnalyzeConfigError([f"data ({cfg.split} split): {_cause(err)}"]) from None


def format_summary(results: dict[str, Any]) -> str:
    """A few lines of the headline numbers for the terminal."""
    return "\n".join(f"{key.removeprefix('analysis/'):<36} {value:.3f}" for key, value in flat_metrics(results).items())


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Run the analysis of a composed `conf/analyze.yaml`; returns what is written to `analysis.json`.

    Raises:
        AnalyzeConfigError: listing every invalid setting (checked before the model's weights load).
        UserInputError: a data problem found later (a missing or corrupt video).
    """
    started = time.perf_counter()
    settings, reduction, model_config, problems = check_settings(cfg)
    if problems:
        raise AnalyzeConfigError(problems)
    datamodule, split_file = _split_file(cfg)
    rows = read_question_rows(split_file)
    temporal = int(getattr(model_config, "video_temporal_patch_size", 2) or 2)
    if problems := check_rows(rows, settings, int(cfg.num_frames), tokens_per_tubelet(model_config), temporal):
        raise AnalyzeConfigError(problems)

    output_dir = Path(cfg.paths.output_dir)
    write_config(output_dir, cfg)
    seed_everything(cfg.seed, workers=False, verbose=False)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    vlm, tokenizer = instantiate(cfg.model)
    vlm.to(_device(str(cfg.device))).eval()
    datamodule.bind(tokenizer=tokenizer, model_config=vlm.config)
    dataset = NeedleQADataset(
        split_file,
        int(cfg.num_frames),
        tokenizer,
        datamodule.tokens_per_tubelet,
        datamodule.video_token_id,
        temporal_patch_size=datamodule.temporal_patch_size,
        image_size=datamodule.image_size,
        frame_labels=datamodule.frame_labels,
    )
    log.info("analysing %s on %s", cfg.model.get("path"), split_file)
    results = {
        "model": resolve_model_path(str(cfg.model.get("path"))),
        "split_file": str(split_file),
        "scorer": reduction.as_dict(),
        "num_frames": int(cfg.num_frames),
        **run_analysis(vlm, dataset, reduction, settings),
    }
    results["wall_s"] = time.perf_counter() - started
    results = _json_ready(results)
    (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    images = write_plots(results, output_dir)

    loggers = instantiate_group(cfg.get("logger"))
    try:
        for logger in loggers:
            logger.log_hyperparams({"task": "analyze", "config": OmegaConf.to_container(cfg, resolve=True)})
        log_analysis(loggers, results, images)
    finally:
        finish_loggers(loggers)
    print(f"\n{format_summary(results)}\nanalysis: {output_dir / RESULTS_FILE}", flush=True)
    return results


@hydra.main(config_path="../conf", config_name="analyze", version_base="1.3")
@exits_on_user_error
def main(cfg: DictConfig) -> Any:
    """Hydra task: `analyze(cfg)`; a config or data error prints one message and exits with code 2."""
    results = analyze(cfg)
    return results["probing"]["accuracy"].get("hybrid")


if __name__ == "__main__":
    run(main)
