"""Stateful probing: what the tokens kept at a cut still carry, at the last block, of the tokens cut there.

Four forwards of the same prompt, all pooled over the same positions (kept visual tokens and question tokens):

* `full`: nothing is cut (the content is in view: the ceiling).
* `hybrid`: the engine's cut. Blocks `0..cut` see every token; the dropped tokens are removed from the input of
  block `cut + 1` on. Whatever blocks up to the cut mixed into the kept tokens (Mamba scans, attention) flows on.
* `reset`: the same cut with the Mamba state reset at the cut, meaning: no Mamba block ever absorbed the dropped
  tokens. In this engine a Mamba block's "state" at a kept token is its scan over the tokens before it, and it
  leaves the block inside that token's hidden state, so the reset is made concrete by running every Mamba
  block `0..cut` for the kept tokens on the sequence *without* the dropped tokens (scan and causal conv alike,
  as if they had never been there), while the dropped tokens' own outputs come from the full sequence so that
  attention blocks before the cut still see them. Blocks after the cut are as in `hybrid`. So `hybrid - reset`
  is what the Mamba state carried; attention before the cut may still have copied some content.
* `deleted`: the dropped tokens are removed before block 0, i.e. the kept tokens are recomputed as if the dropped
  ones had never been in the sequence. This is the other reading of "reset at the cut": no block at all,
  attention included, saw them (the floor).

The probe data is counterfactual (`needle_probe_features`): each needle is shown in every colour with nothing
else changed, so the colour is the only thing that differs between the versions and the probe's chance level
(1 / colours) is exact; `deleted`, whose kept tokens never met the needle, sits at it by construction. On
tiny-omni, attention block 1 already copies the needle into kept tokens, so `hybrid` and `reset` only differ for
a cut at block 0, where a Mamba block is the only mixer before the cut.
"""

from __future__ import annotations

import torch

from hpft.analysis.needles import recolour_needle
from hpft.data.synthetic import COLOURS
from hpft.reduction.engine import adapter_for
from hpft.reduction.vlm import embed_video_prompt

VARIANTS = ("full", "hybrid", "reset", "deleted")


def _run(adapter, b: int, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return adapter.run_block(b, hidden, adapter.masks(hidden, None), positions)


@torch.no_grad()
def last_block_states(
    lm, inputs_embeds: torch.Tensor, keep: torch.Tensor, cut_block: int, variant: str
) -> torch.Tensor:
    """Last-block hidden states of the kept positions under one probing variant (see the module docstring).

    Args:
        lm: a transformers `NemotronHForCausalLM`.
        inputs_embeds: `(B, S, D)` embeddings of unpadded prompts of one layout (e.g. one video in several colours).
        keep: `(S,)` bool, False at the dropped (visual) positions; shared by the batch.
        cut_block: the block after which the dropped tokens leave the sequence (`hybrid`, `reset`).
        variant: one of `VARIANTS`.

    Returns:
        `(B, S_kept, D)` output of the last block at the kept positions, in order.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} must be one of {VARIANTS}")
    adapter = adapter_for(lm)
    num_blocks = len(adapter.blocks)
    if not 0 <= cut_block < num_blocks:
        raise ValueError(f"cut_block={cut_block} must be in [0, {num_blocks})")
    positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).expand(inputs_embeds.shape[:2])
    kept = keep.nonzero().squeeze(1).to(inputs_embeds.device)
    hidden = inputs_embeds
    # Blocks before `first` see every token; the dropped ones leave the sequence at the input of block `first`.
    first = {"full": num_blocks, "hybrid": cut_block + 1, "reset": cut_block + 1, "deleted": 0}[variant]
    for b in range(first):
        out = _run(adapter, b, hidden, positions)
        if variant == "reset" and adapter.kinds[b] == "mamba":
            out[:, kept] = _run(adapter, b, hidden[:, kept], positions[:, kept])
        hidden = out
    hidden, positions = hidden[:, kept], positions[:, kept]
    for b in range(first, num_blocks):
        hidden = _run(adapter, b, hidden, positions)
    return hidden


def pooled_features(states: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """The probe's features: the mean of the last-block states over the pooled kept positions.

    Args:
        states: `(B, S_kept, D)` last-block states of the kept positions.
        pool: `(S_kept,)` bool, the positions to average (kept visual tokens and question tokens).

    Returns:
        `(B, D)` float32 features.
    """
    return states[:, pool].float().mean(dim=1)


def centre_per_needle(features: torch.Tensor) -> torch.Tensor:
    """Subtract, per needle, the mean over its colour versions: `(B, C, D) -> (B, C, D)`.

    Every needle is shown in all C colours, so this removes everything that does not depend on the colour (the
    video, the question, the needle's place), which in a small model dwarfs the colour's own trace.
    """
    return features - features.mean(dim=1, keepdim=True)


def colour_variance_share(features: torch.Tensor) -> float:
    """Share of the features' variance that the needle's colour explains: a graded companion to probe accuracy.

    `sum_{n,c} |x_nc - mean_c x_nc|^2 / sum_{n,c} |x_nc - mean_{n,c} x_nc|^2` for `(N, C, D)` features of N needles
    in C colours: 0 when the colour leaves no trace (as in `deleted`), larger the more of the states' variation
    across videos and colours is the colour's doing. Accuracy saturates as soon as the trace is consistent; this
    keeps telling variants apart.
    """
    features = features.double()
    within = centre_per_needle(features).pow(2).sum()
    total = (features - features.mean(dim=(0, 1))).pow(2).sum()
    return float(within / total) if total > 0 else 0.0


@torch.no_grad()
def recoloured_needle_features(
    vlm, pixels: torch.Tensor, needle: dict, tokens: list[int], grid: int, colours: tuple[str, ...] = COLOURS
) -> torch.Tensor:
    """Video features of a needle's tokens with the needle redrawn in each colour.

    Only the tubelets that show the needle go through the vision tower (it encodes each tubelet on its own).

    Args:
        vlm: a transformers `nemotron_h_omni` model.
        pixels: `(tubelets, temporal_patch * 3, H, W)` the original video.
        needle: the needle record (`glyph`, `cell`, `frames`).
        tokens: the needle's visual-token positions (`needles.needle_token_index`), ascending.
        grid: cells per frame side.
        colours: palette names, one version each.

    Returns:
        `(len(colours), len(tokens), D)` projected video features.
    """
    temporal = int(vlm.config.video_temporal_patch_size)
    per_tubelet = grid * grid
    tubelets = sorted({t // per_tubelet for t in tokens})
    videos = torch.stack([recolour_needle(pixels, needle, c, grid, temporal)[tubelets] for c in colours])
    features = torch.stack(list(vlm.get_video_features(videos, return_dict=True).pooler_output))  # (C, T'*tpt, D)
    local = [tubelets.index(t // per_tubelet) * per_tubelet + t % per_tubelet for t in tokens]
    return features[:, local]


@torch.no_grad()
def needle_probe_features(
    vlm,
    input_ids: torch.Tensor,
    pixels: torch.Tensor,
    needle_features: torch.Tensor,
    drop: torch.Tensor,
    pool: torch.Tensor,
    cut_block: int,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, torch.Tensor]:
    """Pooled last-block features of one prompt whose needle tokens take each colour in turn.

    The colour versions differ only at the needle's tokens: their video features come from the recoloured
    videos, every other token's from the original video. The vision tower attends across a whole frame, so
    taking all features from the recoloured videos would let the colour leak into kept tokens before the
    decoder, where no cut can remove it; splicing keeps the kept tokens' inputs identical across colours, so
    whatever the probe reads afterwards came through the decoder.

    Args:
        vlm: a transformers `nemotron_h_omni` model.
        input_ids: `(1, S)` the probe prompt (`needles.probe_prompt`).
        pixels: `(1, tubelets, temporal_patch * 3, H, W)` the original video.
        needle_features: `(C, K, D)` the needle's K tokens in each colour (`recoloured_needle_features`).
        drop: `(S,)` bool, the needle's K positions (cut at `cut_block`).
        pool: `(S,)` bool, the positions averaged into features (kept visual and question tokens).
        cut_block: see `last_block_states`.
        variants: which of `VARIANTS` to run.

    Returns:
        `{variant: (C, D) float32 features}`.
    """
    embeds, _ = embed_video_prompt(vlm, input_ids, pixels)
    embeds = embeds.expand(len(needle_features), -1, -1).clone()
    embeds[:, drop] = needle_features.to(embeds.dtype)
    keep = ~drop
    pooled = pool[keep]
    return {
        variant: pooled_features(last_block_states(vlm.language_model, embeds, keep, cut_block, variant), pooled)
        for variant in variants
    }
