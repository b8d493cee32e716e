"""Collate encoded video-QA examples into one right-padded batch with its masks and option candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hpft.data.prompts import IGNORE_INDEX, EncodedPrompt

__all__ = ["VideoQACollator"]


class VideoQACollator:
    """Right-pad a list of dataset items into a batch dict.

    Items are dicts with `prompt` (`EncodedPrompt`), `pixel_values_videos` (`(tubelets, 6, H, W)` float32),
    `answer_index` (int), `candidates` (4 id lists), `id` and `kind` (str) — what `NeedleQADataset` returns.

    The batch (B samples, S = longest sequence):

    * `input_ids` `(B, S)` long, padded with `pad_id`; `attention_mask` `(B, S)` long, 1 on real tokens;
    * `labels` `(B, S)` long, answer ids and -100 elsewhere (padding included);
    * `query_mask`, `visual_mask` `(B, S)` bool, False on padding;
    * `pixel_values_videos` `(B, tubelets, temporal_patch * 3, H, W)` float32 (one video per sample);
    * `answer_index` `(B,)` long, the correct option (0-3 = A-D); `prompt_len` `(B,)` long, where the answer starts;
    * `candidates`: per sample, the 4 option id lists each option appends after the prompt (option text + `</s>`);
    * `id`, `kind`: lists of B strings.

    Padding is on the right only: the reduction engine and the Mamba scan assume real tokens come first.

    Args:
        pad_id: Id written at padded `input_ids` positions (never attended to, never a label).
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Collate items (see the class docstring) into the batch dict."""
        if not items:
            raise ValueError("cannot collate an empty list of examples")
        prompts: list[EncodedPrompt] = [item["prompt"] for item in items]
        shapes = {tuple(item["pixel_values_videos"].shape) for item in items}
        if len(shapes) > 1:
            detail = ", ".join(f"{item['id']}: {tuple(item['pixel_values_videos'].shape)}" for item in items)
            raise ValueError(
                f"all videos of a batch need the same tubelets and frame size, got {detail}; sample a fixed "
                f"num_frames and resize frames to one size"
            )
        batch, seq = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, seq), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, seq), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(batch, seq, dtype=torch.long)
        query_mask = torch.zeros(batch, seq, dtype=torch.bool)
        visual_mask = torch.zeros(batch, seq, dtype=torch.bool)
        for i, p in enumerate(prompts):
            n = len(p)
            input_ids[i, :n] = torch.tensor(p.input_ids, dtype=torch.long)
            labels[i, :n] = torch.tensor(p.labels, dtype=torch.long)
            attention_mask[i, :n] = 1
            query_mask[i, :n] = torch.tensor(p.query_mask, dtype=torch.bool)
            visual_mask[i, :n] = torch.tensor(p.visual_mask, dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "query_mask": query_mask,
            "visual_mask": visual_mask,
            "pixel_values_videos": torch.stack([item["pixel_values_videos"] for item in items]),
            "answer_index": torch.tensor([int(item["answer_index"]) for item in items], dtype=torch.long),
            "prompt_len": torch.tensor([p.answer_start for p in prompts], dtype=torch.long),
            "candidates": [[list(c) for c in item["candidates"]] for item in items],
            "id": [str(item["id"]) for item in items],
            "kind": [str(item.get("kind", "")) for item in items],
        }
