"""An auxiliary pretraining loss that makes every visual token say which tubelet it belongs to.

Why it exists: the NemotronH decoder has no positional encoding; an attention block knows *where* a token is only
through what earlier Mamba blocks wrote into it. Frame labels in the prompt (`hpft.data.prompts.FrameLabels`) give
each tubelet a name, but answering "In which quarter of the video does the star appear?" needs the star's own
token to carry its label, and the quarter questions alone never taught the first blocks to write it there: after
6,000 steps of them, a linear probe read the tubelet of a visual token after block 0 at 0.29 (chance 0.25), and the
quarter of the asked object among several stayed at chance. A linear head on one block's output, trained with the
language-model loss to predict each visual token's tubelet, writes the label in directly (its loss falls to ~0.01
within a few hundred steps), for the attention that already finds the asked object for colour questions to read;
with it the quarter of the asked object rose above chance (README, Results).

The head is a pretraining device only: it is saved in the pretraining resume point, never in the model folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["POSITION_TARGETS", "TubeletProbe"]

POSITION_TARGETS = ("tubelet", "quarter")


class TubeletProbe(nn.Module):
    """A linear head reading block `layer`'s output at the visual tokens, trained to name each token's tubelet.

    Args:
        hidden_size: The decoder's hidden size.
        layer: The decoder block whose output is read (0: the first block).
        max_tubelets: The most tubelets a training video may have (classes of the head).
    """

    def __init__(self, hidden_size: int, layer: int = 0, max_tubelets: int = 128):
        super().__init__()
        if layer < 0:
            raise ValueError(f"layer must be >= 0, got {layer}")
        self.layer = layer
        self.max_tubelets = max_tubelets
        self.head = nn.Linear(hidden_size, max_tubelets)

    def loss(
        self,
        hidden_states: Sequence[torch.Tensor],
        visual_mask: torch.Tensor,
        tokens_per_tubelet: int,
        target: str = "tubelet",
    ) -> torch.Tensor:
        """Cross-entropy of the head's guess of where each visual token is, at every visual token.

        Args:
            hidden_states: The decoder's `output_hidden_states`: `num_blocks + 1` tensors `(B, S, D)`, the
                embeddings first, then each block's output.
            visual_mask: `(B, S)` bool, True at visual tokens; the same count in every sample (one video length
                per batch), in tubelet order.
            tokens_per_tubelet: Visual tokens per tubelet.
            target: What the head names: `"tubelet"`, the token's tubelet index; `"quarter"`, the quarter of the
                video it lies in (0-3; needs a whole number of tubelets per quarter). A causal token can know its
                quarter only from a prompt that says where in the video it is (relative frame labels).

        Returns:
            Scalar loss (mean over the batch's visual tokens).
        """
        if self.layer + 1 >= len(hidden_states):
            raise ValueError(f"the decoder has {len(hidden_states) - 1} blocks; cannot read block {self.layer}")
        visual_mask = visual_mask.bool()
        counts = visual_mask.sum(1)
        num_visual = int(counts[0])
        if bool((counts != num_visual).any()) or num_visual % tokens_per_tubelet:
            raise ValueError(
                f"every sample needs the same whole number of {tokens_per_tubelet}-token tubelets, got "
                f"{counts.tolist()} visual tokens"
            )
        num_tubelets = num_visual // tokens_per_tubelet
        if target not in POSITION_TARGETS:
            raise ValueError(f"target must be one of {POSITION_TARGETS}, got {target!r}")
        if target == "quarter" and num_tubelets % 4:
            raise ValueError(f"quarter targets need a multiple of 4 tubelets per video, got {num_tubelets}")
        if num_tubelets > self.max_tubelets:
            raise ValueError(f"{num_tubelets} tubelets exceed the probe's {self.max_tubelets}; raise max_tubelets")
        hidden = hidden_states[self.layer + 1]
        visual = hidden[visual_mask].view(hidden.shape[0], num_visual, -1)  # (B, V, D), visual tokens in order
        where = torch.arange(num_visual, device=hidden.device) // tokens_per_tubelet  # (V,) tubelet index
        if target == "quarter":
            where = where * 4 // num_tubelets
        # Normalised first: the residual stream's scale differs from block to block and grows in training; a raw
        # head starts with huge logits there, and its loss would swamp the language-model loss.
        logits = self.head(F.layer_norm(visual, visual.shape[-1:]))  # (B, V, max_tubelets)
        return F.cross_entropy(logits.flatten(0, 1), where.repeat(hidden.shape[0]))
