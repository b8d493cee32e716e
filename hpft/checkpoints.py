"""Load a model for evaluation from whatever a user points `ckpt=` at: a run folder, a `.ckpt` file, an HF folder.

Three forms, told apart by what is on disk (`checkpoint_kind`):

* **run folder** — what `python -m hpft.train` leaves: `<run>/checkpoints/last.ckpt` and `<run>/config.yaml`;
* **Lightning checkpoint file** — any `.ckpt` written by a training run (adapter-only by default: LoRA and
  projector weights, `hpft.lit_module.HybridVLMModule.on_save_checkpoint`). The run's PEFT settings (LoRA rank,
  alpha, targets) are not in the file, so they are read from the run's `config.yaml`: next to the file, or one
  folder up (`<run>/checkpoints/<name>.ckpt`);
* **exported Hugging Face folder** — a folder with `config.json` (`save_pretrained`, e.g. merged by
  `python -m hpft.export`), or a PEFT adapter folder with `adapter_config.json` (`hpft.export merge=false`: the base
  model is the one its adapter config names): loaded as the model itself, the `model` group's path is ignored.

For the first two, the base model comes from the `model` config group, LoRA is injected exactly as training did
(`peft` node of the run's config), the checkpoint's trainable weights are loaded, and the adapters are merged into
their linears (`merge_lora`): evaluation then runs plain linears, the same numbers at lower cost.

An exported folder also carries the reduction settings it was trained with (`reduction.json`). `python -m
hpft.evaluate` uses them unless the command line sets them (`combine_reduction`, `overridden_reduction_parts`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hpft.errors import UserInputError
from hpft.models.loading import resolve_model_path
from hpft.peft_setup import merge_lora
from hpft.reduction import ReductionConfig

__all__ = [
    "REDUCTION_PARTS",
    "checkpoint_kind",
    "combine_reduction",
    "load_for_eval",
    "load_lightning_weights",
    "load_trained",
    "overridden_reduction_parts",
    "run_config_for",
]

log = logging.getLogger(__name__)

RUN_FOLDER, LIGHTNING_FILE, HF_FOLDER = "run_folder", "lightning_ckpt", "hf_folder"
_FORMS = (
    "a training run folder (holding checkpoints/last.ckpt and config.yaml), a Lightning .ckpt file of such a run, "
    "or an exported Hugging Face model folder (holding config.json, or adapter_config.json)"
)
_MODULE_PREFIX = "model."  # HybridVLMModule keeps the VLM as `self.model`
_ADAPTER_ONLY_KEY = "hpft_adapter_only"


def checkpoint_kind(ckpt: str | os.PathLike[str]) -> str:
    """Which of the three forms `ckpt` is (`RUN_FOLDER`, `LIGHTNING_FILE` or `HF_FOLDER`).

    Raises:
        UserInputError: naming the path and the accepted forms when it is none of them.
    """
    path = Path(ckpt).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return HF_FOLDER
        if (path / "checkpoints" / "last.ckpt").is_file():
            return RUN_FOLDER
        raise UserInputError(f"ckpt={path} is a folder without config.json or checkpoints/last.ckpt; pass {_FORMS}")
    if path.is_file():
        return LIGHTNING_FILE
    raise UserInputError(f"ckpt={path} does not exist; pass {_FORMS}")


def run_config_for(ckpt_file: str | os.PathLike[str]) -> Path:
    """The `config.yaml` of the run that wrote `ckpt_file`: next to it, or one folder up (`<run>/checkpoints/`).

    Raises:
        UserInputError: when neither exists (the file alone does not say how LoRA was set up).
    """
    ckpt_file = Path(ckpt_file).expanduser()
    candidates = [ckpt_file.parent / "config.yaml", ckpt_file.parent.parent / "config.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserInputError(
        f"ckpt={ckpt_file}: no run config found ({' or '.join(map(str, candidates))}); the checkpoint holds the "
        "trained weights but not the LoRA settings (r, alpha, targets) needed to place them. Pass the run folder "
        "(ckpt=<run>) or copy the run's config.yaml next to the checkpoint."
    )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        # weights_only: a checkpoint is data; the optimizer state is kept in plain containers for this reason.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated / foreign file
        raise UserInputError(
            f"ckpt={path} cannot be read as a Lightning checkpoint ({type(err).__name__}: {err}); pass {_FORMS}"
        ) from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise UserInputError(f"ckpt={path} holds no `state_dict`: not a Lightning checkpoint; pass {_FORMS}")
    return dict(checkpoint)


def load_lightning_weights(vlm: torch.nn.Module, checkpoint: Mapping[str, Any], source: str = "ckpt") -> int:
    """Copy a Lightning checkpoint's VLM weights into `vlm` (already LoRA-injected like the run), in place.

    Every checkpoint key must name a parameter or buffer of `vlm`; an adapter-only checkpoint must hold every
    trainable parameter (the same rule as resuming, `HybridVLMModule.on_load_checkpoint`).

    Args:
        vlm: the model, prepared with the run's PEFT settings.
        checkpoint: the loaded checkpoint dict (`state_dict` keys prefixed `model.`).
        source: the checkpoint's name, for messages.

    Returns:
        The number of tensors loaded.

    Raises:
        UserInputError: when keys do not match (another model or other LoRA settings).
    """
    state = {
        key.removeprefix(_MODULE_PREFIX): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(_MODULE_PREFIX)
    }
    if not state:
        raise UserInputError(f"{source}: its state_dict has no `model.` weights; is it an hpft training checkpoint?")
    own = dict(vlm.state_dict())
    unknown = sorted(set(state) - set(own))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} weights match no parameter of the model, e.g. {unknown[:3]}")
    if checkpoint.get(_ADAPTER_ONLY_KEY, False):
        trainable = {name for name, param in vlm.named_parameters() if param.requires_grad}
        missing = sorted(trainable - set(state))
        if missing:
            problems.append(f"{len(missing)} trainable parameters are missing, e.g. {missing[:3]}")
    shapes = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if shapes:
        problems.append(f"{len(shapes)} weights have another shape than the model's, e.g. {shapes[:3]}")
    if problems:
        raise UserInputError(
            f"{source} does not fit the model as built from the `model` group and the run's `peft` settings:\n  - "
            + "\n  - ".join(problems)
            + "\nEvaluate with the base model the run was trained from (model.path=...)."
        )
    vlm.load_state_dict(state, strict=False)
    return len(state)


def _same_model(run_cfg: DictConfig, model_cfg: Mapping[str, Any] | DictConfig) -> None:
    """Warn when the run was trained on another base model than the one being loaded."""
    trained = OmegaConf.select(run_cfg, "model.path")
    wanted = model_cfg.get("path") if hasattr(model_cfg, "get") else None
    if trained is None or wanted is None:
        return
    if resolve_model_path(str(trained)) != resolve_model_path(str(wanted)):
        log.warning("the checkpoint was trained on model.path=%s but model.path=%s is loaded", trained, wanted)


def load_trained(
    model_cfg: Mapping[str, Any] | DictConfig,
    ckpt_file: str | os.PathLike[str],
    run_config: str | os.PathLike[str],
    merge: bool = True,
) -> tuple[torch.nn.Module, Any]:
    """The base model with a training run's weights placed as the run placed them (eval mode, no grad).

    Args:
        model_cfg: the `model` config node of the base model.
        ckpt_file: a Lightning checkpoint file of the run (adapter-only or full).
        run_config: the run's `config.yaml` (its `peft` node says how LoRA was injected).
        merge: fold the LoRA adapters into their linears (`merge_lora`); False keeps them as `lora_A` / `lora_B`
            (what `hpft.export merge=false` saves as a PEFT adapter).

    Returns:
        `(vlm, tokenizer)`.

    Raises:
        UserInputError: a file that is not a checkpoint, or weights that do not fit the model.
    """
    ckpt_file = Path(ckpt_file)
    run_cfg = OmegaConf.load(run_config)
    _same_model(run_cfg, model_cfg)
    vlm, tokenizer = instantiate(model_cfg)
    peft = OmegaConf.select(run_cfg, "peft")
    if peft is not None and "_target_" in peft:
        # The same decide -> apply -> verify as training, so the module names match the checkpoint's keys.
        vlm = instantiate(peft).apply(vlm)
    checkpoint = _read_checkpoint(ckpt_file)
    count = load_lightning_weights(vlm, checkpoint, source=f"ckpt={ckpt_file}")
    if merge:
        merge_lora(vlm)
    vlm.requires_grad_(False)
    log.info(
        "loaded %d trained tensors from %s (step %s)%s",
        count,
        ckpt_file,
        checkpoint.get("global_step"),
        ", LoRA merged" if merge else "",
    )
    return vlm.eval(), tokenizer


def load_for_eval(
    model_cfg: Mapping[str, Any] | DictConfig, ckpt: str | os.PathLike[str] | None = None
) -> tuple[torch.nn.Module, Any]:
    """The model (eval mode, no grad) and tokenizer to evaluate.

    Args:
        model_cfg: the `model` config node (`_target_: hpft.models.loading.load_vlm`, `path`, `dtype`, ...).
        ckpt: None (the base model), a training run folder, a Lightning `.ckpt` file of such a run, or an
            exported Hugging Face folder (see the module docstring).

    Returns:
        `(vlm, tokenizer)`.

    Raises:
        UserInputError: a path that is none of the forms, a file that is not a checkpoint, a checkpoint without
            its run config, or weights that do not fit the model.
    """
    if ckpt is None:
        vlm, tokenizer = instantiate(model_cfg)
        return vlm.eval().requires_grad_(False), tokenizer
    kind = checkpoint_kind(ckpt)
    path = Path(ckpt).expanduser()
    if kind == HF_FOLDER:
        # The folder is the model: keep the group's loading options (dtype, trust_remote_code), not its path.
        vlm, tokenizer = instantiate(model_cfg, path=str(path.resolve()))
        merge_lora(vlm)  # an adapter folder arrives with LoRA layers (transformers applied it): plain linears again
        log.info("loaded the exported model folder %s", path)
        return vlm.eval().requires_grad_(False), tokenizer
    if kind == RUN_FOLDER:
        return load_trained(model_cfg, path / "checkpoints" / "last.ckpt", path / "config.yaml")
    return load_trained(model_cfg, path, run_config_for(path))


# -- reduction settings of an exported folder --------------------------------------------------------------------

REDUCTION_PARTS = ("schedule", "keep", "scorer", "min_tokens")
"""The parts of a reduction setting that the command line can set independently of an exported folder's."""

# Command-line keys (before `=` or the first `.`) -> the part they set.
_PART_OF_KEY = {"schedule": "schedule", "keep": "keep", "scorer": "scorer", "reduction": "min_tokens"}


def overridden_reduction_parts(overrides: Iterable[str]) -> set[str]:
    """Which `REDUCTION_PARTS` a list of Hydra command-line overrides sets (pure).

    `keep=0.5` sets `keep`; `schedule=uniform` or `schedule.p=3` the schedule (its name and shape parameters);
    `scorer=norm` or `scorer.seed=1` the scorer (its name and parameters); `reduction.min_tokens=4` `min_tokens`.
    `+`, `++` and `~` prefixes count like plain overrides.

    Args:
        overrides: e.g. `HydraConfig.get().overrides.task` (`["ckpt=x", "keep=0.5"]`).

    Returns:
        The parts set, a subset of `REDUCTION_PARTS`.
    """
    parts = set()
    for override in overrides:
        key = str(override).lstrip("+~").split("=", 1)[0].strip()
        part = _PART_OF_KEY.get(key.split(".", 1)[0].split("@", 1)[0])
        if part is not None:
            parts.add(part)
    return parts


def combine_reduction(
    configured: ReductionConfig, exported: ReductionConfig, overridden: Collection[str]
) -> ReductionConfig:
    """The exported folder's reduction setting, with the parts set on the command line taken from the config (pure).

    Each part moves as a whole: the schedule with its shape parameters, the scorer with its parameters
    (`decay`, `use_dt`, `normalize`, `seed`).

    Args:
        configured: the setting composed from `conf/eval.yaml` and the command line.
        exported: the exported folder's `reduction.json`.
        overridden: the parts the command line set (`overridden_reduction_parts`).

    Returns:
        The combined `ReductionConfig`.

    Raises:
        ValueError: when the combination is invalid (e.g. an exported schedule's parameters with another budget).
    """
    pick = {part: configured if part in overridden else exported for part in REDUCTION_PARTS}
    scorer = pick["scorer"]
    return ReductionConfig(
        pick["schedule"].schedule,
        pick["keep"].keep,
        scorer.scorer,
        min_tokens=pick["min_tokens"].min_tokens,
        **pick["schedule"].schedule_params,
        decay=scorer.decay,
        use_dt=scorer.use_dt,
        normalize=scorer.normalize,
        seed=scorer.seed,
    )
