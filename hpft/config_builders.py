"""Builders that Hydra config nodes target (`_target_`): the reduction setting, the W&B logger, the strategy.

Each config group option under `conf/` is one instantiable node. Options whose natural form is not a class
call (a token-reduction schedule is a name plus shape parameters; Lightning takes a strategy by name) point
here, so `hpft/train.py` instantiates every group the same way and never branches on a config string.

Importing this module registers the `hpft_root` OmegaConf resolver: `${hpft_root:}` is the repository root
(the folder holding `conf/` and `data/` in an editable install), so model and fixture paths do not depend on
the working directory.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import OmegaConf

from hpft.reduction.config import ReductionConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
"""Root of the checkout (editable install): `conf/`, `data/tiny-omni`, `tests/fixtures`."""

OmegaConf.register_new_resolver("hpft_root", lambda: str(REPO_ROOT), replace=True)


# --------------------------------------------------------------------------------------------- reduction


@dataclass(frozen=True)
class ScheduleChoice:
    """A token-reduction schedule option: its name, budget and shape parameters (one `schedule/*.yaml`).

    Attributes:
        name: a schedule of `hpft.reduction.SCHEDULES`.
        keep: mean fraction of visual tokens entering each decoder block (the top-level `keep` key).
        params: shape parameters (`p`, `r_min`, `k`, `stages`, `kappa`, ...).
    """

    name: str
    keep: Any
    params: dict[str, Any] = field(default_factory=dict)


def schedule_choice(name: str, keep: Any, **params: Any) -> ScheduleChoice:
    """Target of the `schedule` group: collects the name, the budget and the shape parameters."""
    return ScheduleChoice(name=name, keep=keep, params=dict(params))


@dataclass(frozen=True)
class ScorerChoice:
    """A scorer option (one `scorer/*.yaml`): its name and parameters (`decay`, `use_dt`, `normalize`, `seed`)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


def scorer_choice(name: str, **params: Any) -> ScorerChoice:
    """Target of the `scorer` group."""
    return ScorerChoice(name=name, params=dict(params))


def build_reduction(
    schedule: ScheduleChoice | Mapping[str, Any],
    scorer: ScorerChoice | Mapping[str, Any],
    min_tokens: int = 1,
) -> ReductionConfig:
    """The `ReductionConfig` of a composed run: schedule group + scorer group (+ the top-level `keep`).

    Args:
        schedule: the instantiated `schedule` node, or its mapping (`name`, `keep`, shape parameters).
        scorer: the instantiated `scorer` node, or its mapping (`name`, scorer parameters).
        min_tokens: never keep fewer visual tokens than this in any block.

    Raises:
        ValueError: naming every invalid field at once (from `ReductionConfig`).
    """
    if not isinstance(schedule, ScheduleChoice):
        schedule = schedule_choice(**{k: v for k, v in dict(schedule).items() if k != "_target_"})
    if not isinstance(scorer, ScorerChoice):
        scorer = scorer_choice(**{k: v for k, v in dict(scorer).items() if k != "_target_"})
    return ReductionConfig(
        schedule.name, schedule.keep, scorer.name, min_tokens=min_tokens, **schedule.params, **scorer.params
    )


# ----------------------------------------------------------------------------------------- loggers, strategy


def wandb_credentials_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether W&B could log online: `WANDB_API_KEY` is set or `wandb login` wrote a netrc entry.

    Only checks presence; never reads or returns the key.
    """
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(env.get("NETRC", Path.home() / ".netrc")).expanduser()
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_logger(offline: bool | None = None, **kwargs: Any):
    """Target of the `logger` group's W&B node: a `WandbLogger`, offline unless credentials are configured.

    Args:
        offline: force offline (`True`) or online (`False`); `None` (default): online only when
            `wandb_credentials_configured()`. `WANDB_MODE=offline|disabled` in the environment still wins.
        **kwargs: `WandbLogger` arguments (`project`, `name`, `group`, `save_dir`, `tags`, ...).
    """
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = not wandb_credentials_configured()
    return WandbLogger(offline=offline, **kwargs)


def named_strategy(name: str = "auto") -> str:
    """Target of `strategy/auto.yaml`: a strategy Lightning resolves by name (`auto`, `ddp_spawn`, ...)."""
    return name
