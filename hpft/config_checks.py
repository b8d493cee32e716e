"""Validate a composed training config at startup and report every problem at once.

`check_config(cfg)` runs before anything heavy is built (it reads the model's `config.json`, not its weights)
and returns a list of problems, each naming the config key and the fix. `hpft.train` raises them together as
one `ConfigError`, printed without a traceback, exit code 2.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hpft.errors import UserInputError
from hpft.reduction import ReductionConfig, plan_counts

USAGE_EXIT_CODE = 2


class ConfigError(UserInputError):
    """Every problem found in a composed config, formatted as one message."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join("  - " + p.strip().replace("\n", "\n    ") for p in self.problems)
        super().__init__(
            f"invalid configuration ({len(self.problems)} problem{'s' * (len(self.problems) != 1)}):\n{lines}\n"
            "Fix the keys above on the command line (e.g. `python -m hpft.train keep=0.25`); "
            "`python -m hpft.train --cfg job` prints the composed config."
        )


def _cause(err: BaseException) -> BaseException:
    """The user-facing error inside Hydra's `InstantiationException` wrapper."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def check_reduction(cfg: DictConfig) -> tuple[ReductionConfig | None, list[str]]:
    """Build the `reduction` node; on failure, its problems (one per invalid key)."""
    keep = cfg.get("keep")
    if isinstance(keep, float | int) and not isinstance(keep, bool) and (math.isnan(keep) or not 0 < keep <= 1):
        keep_problem = f"keep={keep} is outside (0, 1]: it is the mean fraction of visual tokens kept, e.g. keep=0.25"
    else:
        keep_problem = None
    try:
        return instantiate(cfg.reduction), []
    except (InstantiationException, ValueError, TypeError) as err:
        text = str(_cause(err))
        lines = [ln.strip().removeprefix("- ").strip() for ln in text.splitlines()]
        problems = [ln for ln in lines if ln and ln != "invalid reduction config:"]
        if keep_problem:  # replace the library's wording of the most common mistake by one with the fix
            problems = [keep_problem] + [p for p in problems if not p.startswith("keep=")]
        return None, problems or [text]


def _model_config(cfg: DictConfig) -> tuple[Any, list[str]]:
    """The model's HF config (read from `config.json` only), or the problem that prevents reading it."""
    path = OmegaConf.select(cfg, "model.path")
    if path is None:
        return None, []
    from transformers import AutoConfig

    from hpft.models.loading import resolve_model_path

    source = resolve_model_path(path)
    folder = Path(source).expanduser()
    if not folder.is_dir() and (folder.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1):
        hint = " (build it: `python -m hpft.models.tiny_omni --out data/tiny-omni`)" if "tiny-omni" in source else ""
        return None, [f"model.path={source} does not exist{hint}; point model.path at a Hugging Face model folder"]
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True), []
    except (OSError, ValueError) as err:
        return None, [f"model.path={source}: cannot read its config.json ({type(err).__name__}: {err})"]


def num_visual_tokens(model_config: Any, num_frames: int) -> int:
    """Visual tokens a `num_frames` video becomes in a `nemotron_h_omni` prompt (tubelets x tokens per tubelet)."""
    from hpft.models.processor import tokens_per_tubelet

    temporal = int(getattr(model_config, "video_temporal_patch_size", 1) or 1)
    return -(-int(num_frames) // temporal) * tokens_per_tubelet(model_config)


def check_budget(reduction: ReductionConfig, model_config: Any, num_frames: int) -> list[str]:
    """Whether the reduction budget is reachable on the model's block pattern at `num_frames` frames."""
    from hpft.reduction.adapters.nemotron_h import block_kinds

    text_config = getattr(model_config, "text_config", model_config)
    try:
        kinds = block_kinds(text_config)
        num_visual = num_visual_tokens(model_config, num_frames)
        plan_counts(reduction, kinds, num_visual)
    except (ValueError, AttributeError) as err:
        return [
            f"schedule={reduction.schedule} keep={reduction.keep} on this model and data.num_frames={num_frames}: {err}"
        ]
    return []


def check_peft(cfg: DictConfig, model_config: Any) -> list[str]:
    """Build the `peft` node and apply it to a meta-device copy of the model (no memory, no weights read).

    This runs the real target selection and trainable-set checks, so LoRA targets that match no module or that
    a fused kernel would bypass are reported at startup together with every other problem.
    """
    if cfg.get("peft") is None:
        return []
    try:
        spec = instantiate(cfg.peft)
    except (InstantiationException, ValueError, TypeError) as err:
        return [f"peft: {_cause(err)}"]
    if model_config is None:
        return []
    import torch
    from transformers import AutoModelForImageTextToText

    logging.disable(logging.INFO)  # the parameter counts of the meta copy would duplicate the real run's
    try:
        with torch.device("meta"):
            vlm = AutoModelForImageTextToText.from_config(model_config)
        spec.apply(vlm)
    except (ValueError, RuntimeError) as err:
        return [f"peft ({cfg.peft.get('_target_')}): {err}"]
    finally:
        logging.disable(logging.NOTSET)
    return []


def check_data(cfg: DictConfig) -> list[str]:
    """Build the `data` node; with a `data_dir`, its train and val files must exist (generated data is made later)."""
    data_dir = OmegaConf.select(cfg, "data.data_dir")
    if data_dir is not None and not Path(str(data_dir)).is_dir():
        return [f"data.data_dir={data_dir} does not exist; pass an existing folder or data=needle (generated)"]
    try:
        datamodule = instantiate(cfg.data)
    except (InstantiationException, ValueError, TypeError) as err:
        return [f"data: {_cause(err)}"]
    problems = []
    if data_dir is not None:
        for part in ("train", "val"):
            try:
                datamodule.split_file(part)
            except (FileNotFoundError, ValueError) as err:
                problems.append(f"data.data_dir={data_dir}: {err}")
    return problems


def check_run(cfg: DictConfig) -> list[str]:
    """Step budget and resume checkpoint."""
    problems = []
    max_steps = cfg.get("max_steps")
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        problems.append(f"max_steps={max_steps} must be an integer >= 1")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_dir = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
        last = Path(str(ckpt_dir or Path(cfg.paths.output_dir) / "checkpoints")) / "last.ckpt"
        if not last.exists():  # a file, or the folder of shards that strategy=deepspeed_* writes
            problems.append(
                f"ckpt_path=last but {last} does not exist; resume inside the old run folder: "
                "`python -m hpft.train hydra.run.dir=outputs/<run> ckpt_path=last`, or pass ckpt_path=<file>"
            )
    elif ckpt_path is not None and not Path(str(ckpt_path)).exists():
        problems.append(
            f"ckpt_path={ckpt_path} does not exist; pass a .ckpt file (a .ckpt folder for DeepSpeed), `last` or null"
        )
    return problems


def check_config(cfg: DictConfig) -> tuple[ReductionConfig | None, list[str]]:
    """Run every startup check on a composed training config.

    Args:
        cfg: the composed `conf/train.yaml` (with `paths.output_dir` resolvable).

    Returns:
        `(the ReductionConfig or None, every problem found)`; an empty list means the config is usable.
    """
    reduction, problems = check_reduction(cfg)
    model_config, model_problems = _model_config(cfg)
    problems += model_problems + check_peft(cfg, model_config) + check_data(cfg) + check_run(cfg)
    num_frames = OmegaConf.select(cfg, "data.num_frames")
    if reduction is not None and model_config is not None and isinstance(num_frames, int):
        problems += check_budget(reduction, model_config, num_frames)
    return reduction, problems
