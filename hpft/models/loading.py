"""Load a video VLM, its tokenizer and its reduction settings from a local folder or the HF cache, never the network.

A folder written by `python -m hpft.export` is a normal model folder (`config.json` + weights), or a PEFT adapter
folder (`adapter_config.json` naming the base model; transformers loads the base and applies the adapter), and
holds `reduction.json`: the token-reduction settings the model was trained and evaluated with
(`load_reduction_settings`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hpft.errors import UserInputError
from hpft.models.kernels import force_torch_path

if TYPE_CHECKING:
    from hpft.reduction import ReductionConfig

__all__ = [
    "REDUCTION_FILE",
    "TINY_OMNI_DIR",
    "enable_gradient_checkpointing",
    "load_reduction_settings",
    "load_vlm",
    "resolve_model_path",
]

log = logging.getLogger(__name__)

# The embedded default, shipped in the repository (an editable install keeps hpft/ next to data/).
TINY_OMNI_DIR = Path(__file__).resolve().parents[2] / "data" / "tiny-omni"
_BUILD_TINY = "python -m hpft.models.tiny_omni --out data/tiny-omni"
REDUCTION_FILE = "reduction.json"
"""The reduction settings of an exported model folder (`ReductionConfig.as_dict()`, written by `hpft.export`)."""


def resolve_model_path(path: str | os.PathLike[str]) -> str:
    """Turn a model reference into what `from_pretrained` should get.

    `"tiny-omni"` names the embedded default (`TINY_OMNI_DIR`, independent of the working directory); an existing
    folder is returned as an absolute path; anything else is returned unchanged (a hub id, looked up in the local
    cache only).

    Args:
        path: `"tiny-omni"`, a model folder, or a hub id.

    Returns:
        The folder path or hub id.
    """
    text = os.fspath(path)
    if text == "tiny-omni":
        return str(TINY_OMNI_DIR)
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser().resolve())
    return text


def enable_gradient_checkpointing(lm: torch.nn.Module) -> torch.nn.Module:
    """Recompute each decoder block's activations in the backward pass instead of storing them (non-reentrant).

    Every Nemotron-H block is a transformers `GradientCheckpointingLayer`, which checkpoints its own `forward`; the
    reduction engine calls the blocks one by one (`adapter.run_block`), so each block is checkpointed on whatever
    sequence it sees, cuts included, and scoring (under no_grad, outside the blocks) is never recomputed. Only while
    the model is in training mode with gradients on; evaluation and generation are untouched.

    Non-reentrant checkpointing gives parameter gradients (LoRA ones included) even when no block input requires
    grad, so the hook transformers adds to make the embedding output require grad (needed only by reentrant
    checkpointing) is removed again: it would turn embeddings computed under no_grad into leaves that require grad,
    and editing those in place (e.g. writing visual embeddings into a prompt, as the benchmarks do) then fails.

    Args:
        lm: the causal LM (`vlm.language_model`), before or after LoRA injection.

    Returns:
        `lm`, changed in place.
    """
    lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lm.disable_input_require_grads()
    return lm


def load_vlm(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> tuple[torch.nn.Module, object]:
    """Load a video VLM (`AutoModelForImageTextToText`) and its tokenizer, offline.

    EVS (`video_pruning_rate > 0`) is switched off: it drops video tokens before the decoder and changes the
    prompt length, which the in-decoder reduction (`hpft.reduction.reduced_vlm_forward`) refuses. The model is
    loaded on CPU, so its Mamba-2 kernels are guarded (`hpft.models.kernels.force_torch_path`): CPU tensors take
    transformers' PyTorch path even where mamba-ssm is installed, CUDA tensors still get the fused kernels once the
    model is moved to a GPU.

    Args:
        path: `"tiny-omni"`, a model folder (`config.json`, safetensors weights, tokenizer files), or a hub id
            already in the local Hugging Face cache.
        dtype: Parameter dtype.
        trust_remote_code: Allow the folder's own modelling code (off unless a config asks for it).
        gradient_checkpointing: Checkpoint every decoder block (`enable_gradient_checkpointing`), trading a
            recompute of each block's forward for not storing its activations. The language model only: the frozen
            vision tower runs without gradients.

    Returns:
        `(model in eval mode, tokenizer)`.

    Raises:
        FileNotFoundError: If `path` is neither a model folder nor a cached hub id; the message names the path.
    """
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    source = resolve_model_path(path)
    local = Path(source).is_dir()
    # A hub id is "name" or "org/name"; anything else (absolute, ./, ~, deeper) can only be a folder.
    if not local and (os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1):
        hint = f" Build the embedded model with `{_BUILD_TINY}`." if "tiny-omni" in source else ""
        raise FileNotFoundError(f"model folder not found: {source}.{hint}")
    # An adapter folder (`hpft.export merge=false`) has no config.json: transformers reads the base model from
    # its adapter_config.json and applies the adapter (LoRA + trained projector) on top.
    if local and not any((Path(source) / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise FileNotFoundError(
            f"{source} is a folder but holds no config.json: not a Hugging Face model folder. "
            + (f"Rebuild the embedded model with `{_BUILD_TINY}`." if Path(source) == TINY_OMNI_DIR else "")
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=True)
    except OSError as err:
        if local:
            raise
        hint = f" To rebuild the embedded model: `{_BUILD_TINY}`." if "tiny-omni" in source else ""
        raise FileNotFoundError(
            f"model {source!r} is neither a local folder nor in the local Hugging Face cache; hpft never downloads "
            f"weights. Pass a folder path, or download it once with `huggingface-cli download {source}` on a "
            f"machine with network access.{hint} ({type(err).__name__}: {err})"
        ) from None
    rate = getattr(model.config, "video_pruning_rate", 0.0) or 0.0
    if rate > 0:
        log.warning("video_pruning_rate=%s (EVS) set to 0: hpft reduces video tokens inside the decoder", rate)
    if hasattr(model.config, "video_pruning_rate"):
        model.config.video_pruning_rate = 0.0
    if hasattr(model, "video_pruning_rate"):
        model.video_pruning_rate = 0.0  # the model copies the config value at init and reads its own copy
    force_torch_path(model)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model.language_model)
    return model.eval(), tokenizer


def load_reduction_settings(path: str | os.PathLike[str]) -> ReductionConfig | None:
    """The token-reduction settings stored with a model (`reduction.json`), or None when it has none.

    Args:
        path: a model folder (e.g. written by `python -m hpft.export`), `"tiny-omni"`, or a hub id whose files are
            in the local Hugging Face cache (never downloaded).

    Returns:
        `ReductionConfig(**json)`, or None when the model has no `reduction.json`.

    Raises:
        UserInputError: naming the file when it is not a JSON object of valid `ReductionConfig` fields.
    """
    from hpft.reduction import ReductionConfig

    source = resolve_model_path(path)
    if Path(source).is_dir():
        file = Path(source) / REDUCTION_FILE
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, REDUCTION_FILE)
        except ValueError:  # not a valid repo id either: nothing stored
            return None
        file = Path(cached) if isinstance(cached, str) else None
    if file is None or not file.is_file():
        return None
    try:
        fields = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(fields, dict):
            raise ValueError(f"expected a JSON object, got {type(fields).__name__}")
        return ReductionConfig(**fields)
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError; TypeError: a non-string key
        raise UserInputError(
            f"{file} does not hold valid reduction settings ({err}); fix or delete it, or evaluate with "
            "reduction_from_ckpt=false"
        ) from None
