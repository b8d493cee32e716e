"""Per-block visual scores on the unreduced forward: every token-mixing block scores every visual token.

The scores are the engine's own (`hpft.reduction.engine.score_block_input`: question-to-visual attention in attention
blocks, decay-free implicit attention in Mamba-2 blocks, or whatever the configured scorer computes), read from
each block's input exactly as a cut would read them, but nothing is cut, so all blocks rank the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hpft.reduction.adapters.nemotron_h import MIXING_KINDS
from hpft.reduction.config import ReductionConfig
from hpft.reduction.engine import SequenceState, adapter_for, score_block_input


@dataclass
class BlockScores:
    """Visual scores of one batch in every token-mixing block.

    Attributes:
        blocks: decoder indices of the M token-mixing blocks, ascending.
        kinds: their kinds (`attention` or `mamba`).
        scores: `(B, M, V)` float32 scores of the V visual tokens, in video order.
    """

    blocks: list[int]
    kinds: list[str]
    scores: torch.Tensor


def mixing_blocks(kinds: list[str]) -> list[int]:
    """Indices of the token-mixing (attention or Mamba) blocks of a layer pattern."""
    return [b for b, kind in enumerate(kinds) if kind in MIXING_KINDS]


@torch.no_grad()
def unreduced_block_scores(
    lm,
    inputs_embeds: torch.Tensor,
    visual_mask: torch.Tensor,
    query_mask: torch.Tensor,
    reduction: ReductionConfig,
    attention_mask: torch.Tensor | None = None,
) -> BlockScores:
    """Run the decoder block by block without cuts, scoring the visual tokens before every token-mixing block.

    Args:
        lm: a transformers `NemotronHForCausalLM`.
        inputs_embeds: `(B, S, D)` embeddings with the video features placed.
        visual_mask: `(B, S)` bool; the same number V of visual tokens in every sample.
        query_mask: `(B, S)` bool, the question tokens (after the video).
        reduction: its scorer settings pick the scores (`scorer`, `decay`, `use_dt`, `normalize`).
        attention_mask: `(B, S)` 1 on real tokens, 0 on right padding; None for none.

    Returns:
        The `BlockScores` of the batch.
    """
    adapter = adapter_for(lm)
    visual_mask, query_mask = visual_mask.bool(), query_mask.bool()
    batch, seq = visual_mask.shape
    index = torch.arange(seq, device=visual_mask.device).expand(batch, seq)
    state = SequenceState(index, index, visual_mask, query_mask, attention_mask, None)
    visual = state.visual_index()
    masks = adapter.masks(inputs_embeds, attention_mask)
    hidden = inputs_embeds
    blocks, kinds, scores = [], [], []
    for b, kind in enumerate(adapter.kinds):
        if kind in MIXING_KINDS:
            blocks.append(b)
            kinds.append(kind)
            scores.append(score_block_input(adapter, b, hidden, state, reduction).float().gather(1, visual))
        hidden = adapter.run_block(b, hidden, masks, state.position_ids)
    return BlockScores(blocks=blocks, kinds=kinds, scores=torch.stack(scores, dim=1))
