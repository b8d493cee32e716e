"""Tiny Nemotron-H configs: the real transformers classes at toy sizes, for tests and the embedded default."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, NemotronHConfig, NemotronHForCausalLM

# Every block kind Nemotron-H has, so each code path of the engine runs in tests.
TINY_PATTERN = ["mamba", "attention", "mlp", "mamba", "moe", "attention", "mamba", "mlp"]


def tiny_decoder_config(**overrides: Any) -> NemotronHConfig:
    """A Nemotron-H decoder config with Mamba-2, attention, MLP and MoE blocks, small enough for CPU tests.

    Args:
        **overrides: Fields of `NemotronHConfig` to change (e.g. `layers_block_type`, `hidden_size`).
    """
    fields: dict[str, Any] = dict(
        vocab_size=128,
        hidden_size=64,
        layers_block_type=list(TINY_PATTERN),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        mamba_num_heads=4,
        mamba_head_dim=16,
        ssm_state_size=16,
        n_groups=2,
        chunk_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32,
        n_group=1,
        topk_group=1,
        use_bias=False,
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    return NemotronHConfig(**fields)


def build_tiny_decoder(seed: int = 0, **overrides: Any) -> NemotronHForCausalLM:
    """A random-weight tiny `NemotronHForCausalLM` (eval mode), deterministic for a given seed."""
    torch.manual_seed(seed)
    return NemotronHForCausalLM(tiny_decoder_config(**overrides)).eval()


def tiny_omni_config(
    text_overrides: dict[str, Any] | None = None,
    image_size: int = 64,
    vision_overrides: dict[str, Any] | None = None,
    **overrides: Any,
):
    """A `nemotron_h_omni` config: small RADIO tower (patch 8), pixel-shuffle projector, tiny Nemotron-H decoder.

    With patch 8, pixel shuffle 2x2 and temporal patch 2, one 16x16-pixel cell over 2 frames is one decoder token:
    a 64x64 video gives 16 visual tokens per 2 frames.

    Args:
        text_overrides: Fields of the decoder config (see `tiny_decoder_config`).
        image_size: Square frame side in px.
        vision_overrides: Fields of the RADIO config (e.g. `hidden_size`; keep `vision_hidden_size` equal).
        **overrides: Top-level `nemotron_h_omni` fields.
    """
    text = tiny_decoder_config(**(text_overrides or {})).to_dict()
    vision = dict(
        model_type="radio",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        patch_size=8,
        max_img_size=256,
        num_cls_tokens=2,  # RADIO's summary gather needs >= 2 cls tokens with summary_idxs [0, 1]
        num_registers=0,
        summary_idxs=[0, 1],
        video_temporal_patch_size=2,
        image_size=image_size,
    )
    vision.update(vision_overrides or {})
    fields: dict[str, Any] = dict(
        model_type="nemotron_h_omni",
        vision_config=vision,
        text_config=text,
        force_image_size=image_size,
        downsample_ratio=0.5,
        projector_hidden_size=128,
        vision_hidden_size=64,
        video_temporal_patch_size=2,
        image_token_id=text["vocab_size"] - 1,
        video_token_id=text["vocab_size"] - 1,
    )
    fields.update(overrides)
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def build_tiny_omni(seed: int = 0, **kwargs: Any):
    """A random-weight tiny `nemotron_h_omni` VLM (eval mode)."""
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(tiny_omni_config(**kwargs)).eval()


# A 12-block decoder with Nemotron-H's mix (Mamba-2 heavy, two attention blocks), hidden 512: large enough that
# prefill cost is dominated by the visual tokens, small enough to run 16k-token prompts on a CPU.
MEDIUM_PATTERN = [
    "mamba", "mlp", "mamba", "attention", "mlp", "mamba",
    "mlp", "mamba", "attention", "mlp", "mamba", "mlp",
]  # fmt: skip


def medium_decoder_config(**overrides: Any) -> NemotronHConfig:
    """The benchmark decoder of `scripts/bench_prefill.py` (about 30M parameters)."""
    fields: dict[str, Any] = dict(
        vocab_size=1024,
        hidden_size=512,
        layers_block_type=list(MEDIUM_PATTERN),
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=2048,
        mamba_num_heads=16,
        mamba_head_dim=64,
        ssm_state_size=64,
        n_groups=2,
        chunk_size=128,
    )
    fields.update(overrides)
    return tiny_decoder_config(**fields)
