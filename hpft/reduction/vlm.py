"""Run the `nemotron_h_omni` VLM's forward (pixel values in) with its decoder going through the engine."""

from __future__ import annotations

import torch

from hpft.reduction.config import ReductionConfig
from hpft.reduction.engine import ReducedOutput, reduced_forward


def embed_video_prompt(
    vlm, input_ids: torch.Tensor, pixel_values_videos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings with the video features placed at the video placeholder tokens.

    Uses the model's own vision tower, projector and placeholder check, exactly as its forward does.

    Args:
        vlm: a transformers `nemotron_h_omni` model.
        input_ids: `(B, S)` prompt ids with one placeholder (`image_token_id`) per visual token.
        pixel_values_videos: `(num_videos, tubelets, temporal_patch * 3, H, W)` as the video processor packs them.

    Returns:
        `(inputs_embeds (B, S, D), visual_mask (B, S) bool)`.
    """
    if getattr(vlm, "video_pruning_rate", 0.0):
        raise ValueError(
            "video_pruning_rate (EVS) > 0 drops tokens before the decoder and changes the prompt length; "
            "set model.config.video_pruning_rate=0 when reducing inside the decoder"
        )
    embeds = vlm.get_input_embeddings()(input_ids)
    features = vlm.get_video_features(pixel_values_videos, return_dict=True).pooler_output
    video = torch.cat(list(features), dim=0).to(embeds.device, embeds.dtype)
    placeholder = vlm.get_placeholder_mask(input_ids, embeds, video, vlm.image_token_id)
    embeds = embeds.masked_scatter(placeholder, video)
    return embeds, input_ids == vlm.image_token_id


def reduced_vlm_forward(
    vlm,
    input_ids: torch.Tensor,
    pixel_values_videos: torch.Tensor,
    query_mask: torch.Tensor,
    config: ReductionConfig,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    use_cache: bool = False,
) -> ReducedOutput:
    """The VLM forward with reduction: vision tower + projector, then the decoder through the engine.

    `visual_mask` comes from the video placeholder positions; `query_mask` is supplied by the caller
    (question tokens only, never the answer). Other arguments as in `reduced_forward`.
    """
    embeds, visual_mask = embed_video_prompt(vlm, input_ids, pixel_values_videos)
    return reduced_forward(
        vlm.language_model,
        embeds,
        visual_mask,
        query_mask,
        config,
        attention_mask=attention_mask,
        labels=labels,
        use_cache=use_cache,
    )
