"""Entry point `python -m hpft.train`: LoRA-finetune a hybrid video VLM under token reduction, then evaluate it.

compose (Hydra, `conf/train.yaml`) -> validate every setting at once -> build loggers, callbacks, strategy,
trainer, then model, PEFT, data, module -> fit -> validate reduced and unreduced -> `metrics.json`.

    python -m hpft.train                                  # tiny-omni, low_to_high, keep 0.25, LoRA, < 10 min CPU
    python -m hpft.train schedule=uniform scorer=norm keep=0.5
    python -m hpft.train debug=fdr data=needle_fixture logger=csv   # one batch, seconds
    python -m hpft.train -m keep=0.25,0.5 group=keep-sweep         # sweep: multirun/<time>/<job>/
    python -m hpft.train -m experiment=schedule_shape              # a comparison of the method (docs/sweeps.md)
    python -m hpft.train hydra.run.dir=outputs/<run> ckpt_path=last max_steps=480   # resume that run

Every run folder (`hydra.run.dir`, default `outputs/<time>`) holds `config.yaml` (resolved), `metrics.json`
(flat keys), `checkpoints/last.ckpt`, `csv/` and `wandb/` (offline unless W&B credentials are configured).
A config mistake exits with code 2 and one message listing every problem.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

import hpft.config_builders  # noqa: F401  (registers the ${hpft_root:} resolver before composition)
from hpft.cli import exits_on_user_error, run
from hpft.config_checks import ConfigError, check_config
from hpft.loggers import finish_loggers, instantiate_group
from hpft.run_report import format_table, run_metrics, write_config, write_metrics
from hpft.strategies import precision_notice
from hpft.sweeps import ddp_launch_problems, in_multirun, publish_summary, release_master_port, sweep_group

log = logging.getLogger(__name__)
# The vision tower is frozen and kept in eval mode on purpose (hpft.peft_setup.set_frozen_eval).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# conf/hydra/launcher/submitit_*.yaml share their names with the plugin's schemas on purpose (so that
# `hydra/launcher=submitit_slurm` picks them); Hydra 1.3 still type-checks them against those schemas, and warns.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore schema")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns the flat metrics also written to `metrics.json`.

    Raises:
        ConfigError: listing every invalid setting (checked before anything heavy is built).
    """
    started = time.perf_counter()
    reduction, problems = check_config(cfg)
    if problems:
        raise ConfigError(problems)
    multirun = in_multirun()
    if multirun:  # one W&B group per sweep; a fresh DDP port per job (docs/sweeps.md)
        sweep_group(cfg)
        release_master_port()
    output_dir = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # ranks started by `ddp`/`deepspeed_*` re-run this function in the same folder
        write_config(output_dir, cfg)
    log.info("run folder: %s; reduction: %s", output_dir, reduction.as_dict())
    seed_everything(cfg.seed, workers=True)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(cfg.cpu_threads)

    loggers = instantiate_group(cfg.get("logger"))
    # LearningRateMonitor refuses to run without a logger (logger=none).
    callbacks = instantiate_group(cfg.get("callbacks"))
    callbacks = [c for c in callbacks if loggers or not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, strategy=instantiate(cfg.strategy))
    if problems := ddp_launch_problems(trainer, multirun):  # before the model loads
        raise ConfigError(problems)
    if notice := precision_notice(trainer):
        log.warning(notice)

    vlm, tokenizer = instantiate(cfg.model)
    vlm = instantiate(cfg.peft).apply(vlm)
    datamodule = instantiate(cfg.data).bind(tokenizer=tokenizer, model_config=vlm.config)
    module = instantiate(cfg.module)(vlm, reduction=reduction, optim=instantiate(cfg.optim))
    for logger in trainer.loggers:  # schedule/keep/scorer/group first: they are what runs are compared by
        logger.log_hyperparams(
            {**reduction.as_dict(), "group": cfg.get("group"), "config": OmegaConf.to_container(cfg, resolve=True)}
        )

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        train_metrics = dict(trainer.callback_metrics)
        val_results = trainer.validate(module, datamodule=datamodule, verbose=False)  # [] with limit_val_batches=0
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or None
        extra = {"global_step": trainer.global_step, "wall_time_s": time.perf_counter() - started, "last_ckpt": last}
        metrics = run_metrics(reduction, train_metrics, val_results[0] if val_results else {}, extra)
        publish_summary(trainer.loggers, metrics, trainer.is_global_zero)  # W&B holds what metrics.json holds
    finally:  # Lightning has finalized the loggers; W&B still needs its run finished
        finish_loggers(trainer.loggers, finalize=False)
    if trainer.is_global_zero:
        path = write_metrics(output_dir, metrics)
        print(f"\n{format_table(metrics)}\nmetrics: {path}", flush=True)
    return metrics


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@exits_on_user_error
def main(cfg: DictConfig) -> Any:
    """Hydra task: `train(cfg)`; a config error prints one message and exits with code 2."""
    metrics = train(cfg)
    key = cfg.get("optimized_metric")
    return metrics if key is None else metrics[key]


if __name__ == "__main__":
    run(main)
