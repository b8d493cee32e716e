"""Build the embedded `tiny-omni` model folder: tokenizer, tiny `nemotron_h_omni` weights and video processor.

The folder is a normal Hugging Face model folder (`config.json`, `model.safetensors`, `tokenizer.json`,
`video_preprocessor_config.json`), so `AutoModelForImageTextToText.from_pretrained(folder)` loads it with no
hpft code. The builder writes random-init weights; `scripts/pretrain_tiny.py` trains them on the synthetic
needle task and overwrites `model.safetensors`.

CLI: `python -m hpft.models.tiny_omni --out data/tiny-omni --seed 0`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText

from hpft.models.processor import tiny_video_processor, tokens_per_tubelet
from hpft.models.tiny import tiny_omni_config
from hpft.models.tokenizer import synthetic_corpus, train_tokenizer
from hpft.reduction import SCHEDULES, ReductionConfig, schedule_counts

__all__ = [
    "TINY_OMNI_PATTERN",
    "build_tiny_omni_folder",
    "check_schedules_reachable",
    "tiny_omni_folder_config",
    "tokens_per_tubelet",
]

# 12 blocks in Nemotron-H's mix (Mamba-2 heavy, attention every few blocks, one MoE). 12 = 4 x 3 and a mixing
# block at index 2, so even the 4-stage `step` schedule can cut after its first stage and every schedule
# reaches keep 0.25 at 256 visual tokens (32 frames); `check_schedules_reachable` enforces it at build time.
TINY_OMNI_PATTERN = [
    "mamba", "attention", "mamba", "mlp", "mamba", "attention",
    "mlp", "mamba", "moe", "mamba", "attention", "mlp",
]  # fmt: skip

# Decoder sizes from the calibration runs that learned (hidden 128, 8 Mamba heads of 16, lr <= 1e-3).
_TEXT = dict(
    hidden_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=256,
    mamba_num_heads=8,
    mamba_head_dim=16,
    ssm_state_size=32,
    n_groups=2,
    chunk_size=64,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=128,
    moe_shared_expert_intermediate_size=128,
)
# RADIO tower of the calibration runs: hidden 128 x 2 layers, patch 8 (one 16 px cell = one decoder token).
_VISION = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, patch_size=8)

# Frames the default embedded task uses; 32 frames x 16 tokens per tubelet / 2 = 256 visual tokens.
_CHECK_NUM_VISUAL = 256
_CHECK_KEEP = 0.25

_README = """\
# tiny-omni

A tiny `nemotron_h_omni` video VLM (transformers {transformers}), the embedded default model of hpft.

- Decoder: Nemotron-H, hidden {hidden}, vocab {vocab}, {num_blocks} blocks:
  `{pattern}`.
- Vision: RADIO, hidden {vision_hidden} x {vision_layers} layers, patch {patch}, pixel shuffle 2x2,
  temporal patch {temporal}: {image_size}x{image_size} frames give {tokens_per_tubelet} decoder tokens per tubelet.
- Pixels: `x / 255` in `[0, 1]`, tubelets `[frame 0 RGB, frame 1 RGB]` on the channel axis
  (`video_preprocessor_config.json`, or `hpft.models.processor.frames_to_pixel_values`).
- Tokenizer: word level over the synthetic needle task's text (`hpft.models.tokenizer`).
  `<video>` (id {video_id}) is the video placeholder: the model's `image_token_id` and `video_token_id`.
- Prompt (`hpft.data.prompts`): `<s>Video:<video>...<video> Question: ... Options: A. ... D. ... Answer:`,
  then the answer ` <option text></s>`.

Weights: {weights}.

Built with:

    {command}

Load with `AutoModelForImageTextToText.from_pretrained("data/tiny-omni")` (offline) or
`hpft.models.loading.load_vlm("data/tiny-omni")`.
"""


def check_schedules_reachable(
    pattern: Sequence[str], num_visual: int = _CHECK_NUM_VISUAL, keep: float = _CHECK_KEEP
) -> dict[str, float]:
    """Check that every reduction schedule reaches `keep` on a block pattern (cuts after Mamba and attention).

    Args:
        pattern: Decoder block kinds, e.g. `TINY_OMNI_PATTERN`.
        num_visual: Visual tokens entering block 0.
        keep: Budget to check.

    Returns:
        The realised keep of each schedule.

    Raises:
        ValueError: Naming every schedule that cannot reach `keep`.
    """
    cut_after = ReductionConfig().cut_after(list(pattern))
    realised, problems = {}, []
    for name in SCHEDULES:
        try:
            realised[name] = schedule_counts(name, keep, cut_after, num_visual).realised_keep
        except ValueError as err:
            problems.append(f"{name}: {err}")
    if problems:
        raise ValueError("decoder pattern cannot reach the budget:\n  - " + "\n  - ".join(problems))
    return realised


def tiny_omni_folder_config(
    vocab_size: int, video_token_id: int, pad_token_id: int, bos_token_id: int, eos_token_id: int, image_size: int = 64
) -> Any:
    """The tiny-omni `nemotron_h_omni` config for a tokenizer.

    Args:
        vocab_size: Embedding rows (the tokenizer's length rounded up to a multiple of 8).
        video_token_id: Id of `<video>`, used as both `image_token_id` and `video_token_id` (the model's
            placeholder check counts `image_token_id` for videos too).
        pad_token_id: Id of `<pad>`.
        bos_token_id: Id of `<s>`.
        eos_token_id: Id of `</s>`.
        image_size: Square frame side in px.

    Returns:
        The config (`model_type == "nemotron_h_omni"`).
    """
    text = dict(
        _TEXT,
        vocab_size=vocab_size,
        layers_block_type=list(TINY_OMNI_PATTERN),
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    return tiny_omni_config(
        text_overrides=text,
        image_size=image_size,
        vision_overrides=_VISION,
        vision_hidden_size=_VISION["hidden_size"],
        projector_hidden_size=256,
        image_token_id=video_token_id,
        video_token_id=video_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def build_tiny_omni_folder(out_dir: str | os.PathLike[str], seed: int = 0, command: str | None = None) -> Path:
    """Train the tokenizer, build a random-init tiny `nemotron_h_omni` and save both as a model folder.

    Deterministic: the same seed writes the same bytes. Existing files of the same names are overwritten.

    Args:
        out_dir: Folder to write (created).
        seed: Weight-initialisation seed.
        command: Command line recorded in the folder's README (default: the CLI call for these arguments).

    Returns:
        The folder.
    """
    out = Path(out_dir)
    check_schedules_reachable(TINY_OMNI_PATTERN)
    tokenizer = train_tokenizer(synthetic_corpus())
    # A multiple of 8 keeps embedding and head matmuls on aligned shapes (tensor cores, vectorised CPU kernels).
    vocab_size = -(-len(tokenizer) // 8) * 8
    config = tiny_omni_folder_config(
        vocab_size=vocab_size,
        video_token_id=tokenizer.video_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tiny_video_processor(config).save_pretrained(out)
    import transformers

    text, vision = config.text_config, config.vision_config
    readme = _README.format(
        transformers=transformers.__version__,
        num_blocks=len(TINY_OMNI_PATTERN),
        pattern=" ".join(TINY_OMNI_PATTERN),
        hidden=text.hidden_size,
        vocab=vocab_size,
        vision_hidden=vision.hidden_size,
        vision_layers=vision.num_hidden_layers,
        patch=vision.patch_size,
        temporal=config.video_temporal_patch_size,
        image_size=config.force_image_size,
        tokens_per_tubelet=tokens_per_tubelet(config),
        video_id=tokenizer.video_token_id,
        weights=f"**random initialisation (seed {seed}), not trained yet**. `scripts/pretrain_tiny.py` overwrites "
        "`model.safetensors` with weights trained on the synthetic needle task",
        command=command or f"python -m hpft.models.tiny_omni --out {out_dir} --seed {seed}",
    )
    (out / "README.md").write_text(readme, encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: build the folder and print what was written."""
    p = argparse.ArgumentParser(prog="python -m hpft.models.tiny_omni", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/tiny-omni", help="model folder to write")
    p.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    a = p.parse_args(argv)
    out = build_tiny_omni_folder(a.out, a.seed)
    total = 0
    for f in sorted(out.iterdir()):
        total += f.stat().st_size
        print(f"{f.stat().st_size / 1024:9.1f} KiB  {f}")
    print(f"{total / 1024 / 1024:.2f} MiB in {out}")
    print("command: python -m hpft.models.tiny_omni " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
