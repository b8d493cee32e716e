"""What each job of a Hydra multirun needs so that its runs can be compared and its DDP processes can meet.

`python -m hpft.train -m schedule=low_to_high,uniform keep=0.1,0.25,0.5` runs one job per combination. Every job
gets its own run folder (`hydra.sweep.dir/<job number>`), logs schedule, keep and scorer to W&B as config, and
shares one W&B `group` with the rest of its sweep. This module holds the per-job pieces `hpft.train` calls:

- `sweep_group`: the shared W&B group (the sweep folder's name unless `group=` is given);
- `release_master_port`: forget the DDP port the previous job of this process used;
- `ddp_launch_problems`: refuse the one DDP launch that cannot work inside a sweep (see docs/sweeps.md);
- `publish_summary`: the final flat metrics (those of `metrics.json`) into the W&B run summary, so that
  `python -m hpft.compare --project` reads the same numbers as `--runs`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

# A MASTER_PORT the user exported before starting the sweep is theirs (a port a firewall lets through, say);
# one that appears later was written into os.environ by Lightning for an earlier job of this process.
_USER_MASTER_PORT = os.environ.get("MASTER_PORT")
# Set in processes that a launcher already started as one rank (Lightning's DDP children, torchrun, srun):
# their port was chosen by that launcher and must not change.
_RANK_VARIABLES = ("LOCAL_RANK", "RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS")


def in_multirun() -> bool:
    """Whether this process is running a job of a Hydra multirun (`-m` or `hydra.mode=MULTIRUN`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group(cfg: DictConfig) -> str | None:
    """In a multirun without an explicit `group`, set `cfg.group` to the sweep folder's name; return the group.

    Every job of one sweep resolves the same `hydra.sweep.dir` (Hydra copies the resolver cache, `${now:}`
    included, into each job's config, and submitit jobs receive that copy), so they all share one W&B group.
    """
    if cfg.get("group") is None and in_multirun():
        from hydra.core.hydra_config import HydraConfig

        cfg.group = Path(HydraConfig.get().sweep.dir).name
    return cfg.get("group")


def release_master_port(env: MutableMapping[str, str] | None = None) -> bool:
    """Forget a `MASTER_PORT` left in this process's environment by the previous job of a sweep.

    Hydra's basic launcher runs every job in one process, and Lightning writes the port it picked into
    `os.environ`; the next job would reuse it while the previous job's store may still hold it. Without it,
    Lightning picks a free port for each job. Ports chosen by the user or by an outer launcher are kept.

    Args:
        env: the environment to edit (default `os.environ`).

    Returns:
        Whether a port was released.
    """
    env = os.environ if env is None else env
    if any(name in env for name in _RANK_VARIABLES) or "MASTER_PORT" not in env:
        return False
    if _USER_MASTER_PORT is not None and env["MASTER_PORT"] == _USER_MASTER_PORT:
        return False
    del env["MASTER_PORT"]
    return True


def ddp_launch_problems(trainer: Any, multirun: bool) -> list[str]:
    """The problem with a DDP launch that would re-run the whole sweep, or [] when the launch can work.

    `strategy=ddp` starts its extra processes by re-running the command line (`start_method=popen`). Inside a
    multirun that command line is the whole sweep (`-m` and every value), so each extra rank would run every job.
    Spawned ranks (`strategy.start_method=spawn`) and ranks started by the cluster (submitit on SLURM, one task
    per device) do not re-run it.

    Args:
        trainer: the built `lightning.pytorch.Trainer` (nothing launched yet).
        multirun: whether this is a job of a multirun.
    """
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if not multirun or not isinstance(launcher, _SubprocessScriptLauncher):
        return []
    if launcher.cluster_environment.creates_processes_externally or launcher.num_processes <= 1:
        return []
    return [
        f"{type(trainer.strategy).__name__} starting its ranks by re-running the command (start_method=popen) with "
        f"trainer.devices={launcher.num_processes} inside a multirun: Lightning would start each extra rank by "
        "re-running the whole sweep. Use strategy=ddp_spawn with the basic launcher, or "
        "hydra/launcher=submitit_slurm (one task per device, any strategy incl. deepspeed_*); see docs/sweeps.md"
    ]


def publish_summary(loggers: Iterable[Any], metrics: Mapping[str, Any], is_global_zero: bool = True) -> None:
    """Write the run's final flat metrics into the summary of every W&B run among `loggers` (rank zero only).

    W&B keeps the last logged value of each key as the summary; the flat keys of `metrics.json` (`train/loss`
    without Lightning's `_step` suffix, `val/needle/acc_full`, `global_step`, ...) are added so that a run read
    back from W&B has the same columns as its run folder.
    """
    if not is_global_zero:  # other ranks hold a dummy experiment without a summary
        return
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(dict(metrics))
