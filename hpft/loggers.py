"""Config groups of named `_target_` nodes (loggers, callbacks) and closing loggers at the end of a job."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate a group holding named nodes (`logger`, `callbacks`) as a list, skipping empty ones."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node is not None and "_target_" in node]


def finish_loggers(loggers: Iterable[Logger], finalize: bool = True) -> None:
    """End every logger's run: W&B runs are finished so that the next job of a multirun starts its own run.

    Args:
        loggers: The job's loggers.
        finalize: Also `finalize("success")` the others (CSV flushes its file). A Lightning `Trainer` finalizes
            its loggers itself, so training passes False.
    """
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
        elif finalize:
            logger.finalize("success")
