"""Video pixels for `nemotron_h_omni`: pack decoded frames into tubelets exactly as its video processor does.

transformers' `NemotronH_Omni_Reasoning_V3VideoProcessor` resizes frames to a patch-grid budget, normalises them
and stacks every `temporal_patch_size` consecutive frames along the channel axis (`[frame 0 RGB, frame 1 RGB]`).
`frames_to_pixel_values` does the same for frames that already have the model's size, as one reshape on a uint8
array: no PIL, no per-frame Python, which matters when a data loader decodes thousands of short videos. The
tiny-omni folder also ships the equivalent transformers video processor config (`video_preprocessor_config.json`,
from `tiny_video_processor`), and a test checks the two give identical tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hpft.data.prompts import FrameLabels

__all__ = [
    "FRAME_LABELS_KEY",
    "frame_labels_for",
    "frames_to_pixel_values",
    "tiny_video_processor",
    "tokens_per_tubelet",
]

# A model config key (config.json) saying the model was trained with each tubelet labelled: true (or "absolute")
# "Frame k:", "relative" "Frame k at p%:" (`hpft.data.prompts.FrameLabels`); absent or false: no labels.
FRAME_LABELS_KEY = "video_frame_labels"
FRAME_LABEL_STYLES = {True: False, "absolute": False, "relative": True}  # config value -> FrameLabels.relative


def frames_to_pixel_values(
    frames: np.ndarray | torch.Tensor,
    temporal_patch_size: int = 2,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Pack uint8 RGB frames into the tubelets `get_video_features` expects.

    Pixels are `(x / 255 - mean) / std`; the defaults give `[0, 1]`, the scaling the tiny model learns with
    (on black backgrounds `[-1, 1]` made video tokens nearly identical at init; see the calibration notes). A
    frame count that is not a multiple of `temporal_patch_size` is padded by repeating the last frame, as the
    transformers video processor does. Frames are not resized: H and W must already suit the vision tower.

    Args:
        frames: `(T, H, W, 3)` uint8 RGB.
        temporal_patch_size: Frames per tubelet (the model's `video_temporal_patch_size`).
        mean: Per-channel mean subtracted after scaling to `[0, 1]`.
        std: Per-channel standard deviation divided out after subtracting `mean`.

    Returns:
        `(1, ceil(T / temporal_patch_size), temporal_patch_size * 3, H, W)` float32; channel
        `3 * k + c` of tubelet `t` is channel `c` of frame `temporal_patch_size * t + k`.
    """
    video = torch.as_tensor(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {tuple(video.shape)}")
    if video.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (decoded video), got {video.dtype}")
    if temporal_patch_size < 1:
        raise ValueError(f"temporal_patch_size must be >= 1, got {temporal_patch_size}")
    num_frames, height, width, _ = video.shape
    remainder = num_frames % temporal_patch_size
    if remainder:
        video = torch.cat([video, video[-1:].expand(temporal_patch_size - remainder, -1, -1, -1)])
    pixels = video.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = (pixels - mean_t) / std_t
    return pixels.reshape(1, -1, temporal_patch_size * 3, height, width)


def tokens_per_tubelet(config: Any, height: int | None = None, width: int | None = None) -> int:
    """Decoder tokens one tubelet of a `nemotron_h_omni` video becomes.

    The vision tower cuts a `height x width` frame into `patch_size` patches; pixel shuffle then merges
    `1 / downsample_ratio` patches per side into one token, so a tubelet gives
    `(height / patch / merge) * (width / patch / merge)` tokens (16 for tiny-omni's 64x64 frames, patch 8).

    Args:
        config: The VLM config (`force_image_size`, `downsample_ratio`, `vision_config.patch_size`).
        height: Frame height in px; default `config.force_image_size`.
        width: Frame width in px; default `config.force_image_size`.

    Returns:
        Tokens per tubelet.

    Raises:
        ValueError: If a side does not split into whole merged patches.
    """
    patch = int(config.vision_config.patch_size)
    merge = int(round(1.0 / config.downsample_ratio))
    height = int(height if height is not None else config.force_image_size)
    width = int(width if width is not None else config.force_image_size)
    if height % (patch * merge) or width % (patch * merge):
        raise ValueError(
            f"frame size {height}x{width} must be a multiple of patch_size * pixel-shuffle factor = "
            f"{patch} * {merge} = {patch * merge} px; resize the frames first"
        )
    return (height // patch // merge) * (width // patch // merge)


def tiny_video_processor(config: Any):
    """The transformers video processor equivalent to `frames_to_pixel_values` for a `nemotron_h_omni` config.

    Pixels in `[0, 1]` (mean 0, std 1), the model's patch size, pixel-shuffle ratio and temporal patch, and a
    patch budget equal to the config's square frame, so frames of that size are never resized.

    Args:
        config: The VLM config (`force_image_size`, `downsample_ratio`, `video_temporal_patch_size`,
            `vision_config.patch_size`).

    Returns:
        A `NemotronH_Omni_Reasoning_V3VideoProcessor` (save it next to the model with `save_pretrained`).
    """
    # Imported here: only building or checking a model folder needs it.
    from transformers.models.nemotron_h_omni.video_processing_nemotron_h_omni import (
        NemotronH_Omni_Reasoning_V3VideoProcessor,
    )

    patch = int(config.vision_config.patch_size)
    side = int(config.force_image_size) // patch
    return NemotronH_Omni_Reasoning_V3VideoProcessor(
        norm_mean=[0.0, 0.0, 0.0],
        norm_std=[1.0, 1.0, 1.0],
        patch_size=patch,
        downsample_ratio=float(config.downsample_ratio),
        video_target_num_patches=side * side,
        temporal_patch_size=int(config.video_temporal_patch_size),
        do_sample_frames=False,  # frames are sampled by hpft.data.video.sample_frame_indices
    )


def frame_labels_for(config: Any, per_tubelet: int | None = None) -> FrameLabels | None:
    """The prompt layout a model was trained with: `FrameLabels` when its config sets `video_frame_labels`.

    Args:
        config: The VLM config (`video_frame_labels`, optional: false, true / "absolute" or "relative";
            `video_temporal_patch_size`; and, when `per_tubelet` is not given, what `tokens_per_tubelet` reads).
        per_tubelet: Placeholder tokens per tubelet of the video at hand (frames of another size than
            `force_image_size`); default `tokens_per_tubelet(config)`.

    Returns:
        `hpft.data.prompts.FrameLabels`, or None for the plain layout (placeholders only).
    """
    style = getattr(config, FRAME_LABELS_KEY, False)
    if not style:
        return None
    if style not in FRAME_LABEL_STYLES:
        raise ValueError(
            f'config {FRAME_LABELS_KEY}={style!r} is not a prompt layout: use false, true ("absolute") or '
            f'"relative" in the model\'s config.json'
        )
    frames = int(getattr(config, "video_temporal_patch_size", 1) or 1)
    per_tubelet = tokens_per_tubelet(config) if per_tubelet is None else int(per_tubelet)
    return FrameLabels(tokens_per_tubelet=per_tubelet, frames_per_tubelet=frames, relative=FRAME_LABEL_STYLES[style])
