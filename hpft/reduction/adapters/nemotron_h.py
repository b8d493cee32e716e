"""Adapter between the reduction engine and transformers' Nemotron-H decoder (`NemotronHForCausalLM`).

The engine only asks an adapter four things: the block kinds (the layer pattern, as data), how to run one
block on the current sequence, how to recompute the score inputs of a token-mixing block from its input
and its own weights, and how to turn final hidden states into logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN
from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask

from hpft.reduction.weights import effective_linear

# transformers' names for Nemotron-H block types -> the engine's kinds.
_KIND_OF_BLOCK_TYPE = {
    "linear_attention": "mamba",
    "mamba": "mamba",
    "full_attention": "attention",
    "attention": "attention",
    "mlp": "mlp",
    "moe": "moe",
}
MIXING_KINDS = ("attention", "mamba")


def block_kinds(config) -> list[str]:
    """The decoder's layer pattern as engine kinds: `mamba`, `attention`, `mlp` or `moe`, one per block.

    This is the one place that reads `layers_block_type`; LoRA targets, scoring and logging ask it.
    """
    pattern = getattr(config, "layers_block_type", None) or config.layer_types
    unknown = sorted(set(pattern) - set(_KIND_OF_BLOCK_TYPE))
    if unknown:
        raise ValueError(f"Nemotron-H block types {unknown} are unknown; known: {sorted(_KIND_OF_BLOCK_TYPE)}")
    return [_KIND_OF_BLOCK_TYPE[t] for t in pattern]


@dataclass
class MambaScoreInputs:
    """What the Mamba-2 score needs, recomputed from one block's input (shapes in `scoring.py` notation)."""

    C_query: torch.Tensor  # (B, Q, G, N)
    B: torch.Tensor  # (B, S, G, N)
    dt: torch.Tensor  # (B, S, H)
    A: torch.Tensor  # (H,)


@dataclass
class AttentionScoreInputs:
    """What the attention score needs, recomputed from one block's input."""

    query: torch.Tensor  # (B, H, Q, d)
    key: torch.Tensor  # (B, G, S, d)
    scaling: float


class NemotronHAdapter:
    """Runs a `NemotronHForCausalLM` block by block for the reduction engine."""

    def __init__(self, lm) -> None:
        decoder = getattr(lm, "model", None)
        if decoder is None or not hasattr(decoder, "layers") or not hasattr(lm, "lm_head"):
            raise TypeError(f"expected a transformers NemotronHForCausalLM, got {type(lm).__name__}")
        self.lm = lm
        self.decoder = decoder
        self.config = lm.config
        self.blocks = list(decoder.layers)
        self.kinds = block_kinds(lm.config)

    # -- running the model -------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`(B, S) -> (B, S, D)` token embeddings."""
        return self.decoder.embeddings(input_ids)

    def masks(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, object]:
        """Per-kind masks for the current (possibly shortened) sequence, built by transformers' mask utils.

        `position_ids` here are the indices in the *current* sequence: causality follows the kept order, and
        passing original (gapped) positions would make the mask builder read them as packed sequences.
        """
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        kwargs = dict(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None)
        return {
            "attention": create_causal_mask(**kwargs, position_ids=positions),
            "mamba": create_recurrent_attention_mask(**kwargs),
        }

    def run_block(self, index: int, hidden: torch.Tensor, masks: dict, position_ids: torch.Tensor, cache=None):
        """Run block `index` on `(B, S, D)` hidden states with transformers' own block forward (any kernel)."""
        block = self.blocks[index]
        return block(
            hidden,
            attention_mask=masks.get(self.kinds[index]),
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: `(B, S, D) -> (B, S, vocab)` float32, as the model's forward returns."""
        return self.lm.lm_head(self.decoder.norm_f(hidden)).float()

    # -- score inputs ------------------------------------------------------------------------------

    def normed_input(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """The block's pre-norm applied to its input, as the block's mixer sees it."""
        block = self.blocks[index]
        return block.norm(hidden.to(dtype=block.norm.weight.dtype))

    def attention_inputs(self, index: int, hidden: torch.Tensor, query_positions: torch.Tensor):
        """Recompute queries (question rows only) and keys (all rows) of attention block `index`.

        Nemotron-H attention has no rotary embedding, so no positions are applied here.
        """
        attn = self.blocks[index].mixer
        x = self.normed_input(index, hidden)
        batch = x.shape[0]
        x_query = x.gather(1, query_positions[..., None].expand(-1, -1, x.shape[-1]))
        w_q, b_q = effective_linear(attn.q_proj)
        w_k, b_k = effective_linear(attn.k_proj)
        query = F.linear(x_query, w_q, b_q).view(batch, x_query.shape[1], -1, attn.head_dim).transpose(1, 2)
        key = F.linear(x, w_k, b_k).view(batch, x.shape[1], -1, attn.head_dim).transpose(1, 2)
        return AttentionScoreInputs(query=query, key=key, scaling=attn.scaling)

    def mamba_inputs(self, index: int, hidden: torch.Tensor, query_positions: torch.Tensor, attention_mask=None):
        """Recompute B (all rows), C (question rows), dt (all rows) and A of Mamba-2 block `index`.

        Only the in_proj rows for B, C and dt are projected, and C only over the conv window of each question
        row, so the cost is a small fraction of the block. `in_proj` rows are laid out
        `[gate (I) | x (I) | B (G*N) | C (G*N) | dt (H)]`; the depthwise causal conv mixes each channel with
        its K-1 predecessors, so channels can be recomputed independently.
        """
        mixer = self.blocks[index].mixer
        x = self.normed_input(index, hidden)
        if attention_mask is not None:  # the mixer zeroes padding before in_proj; right padding only
            x = x * attention_mask[..., None].to(x.dtype)
        inner, gn, heads = mixer.intermediate_size, mixer.n_groups * mixer.ssm_state_size, mixer.num_heads
        kernel = mixer.conv_kernel_size
        act = ACT2FN[mixer.activation]
        conv_w = mixer.conv1d.weight[:, 0, :].detach()  # (conv_dim, K)
        conv_b = mixer.conv1d.bias.detach() if mixer.conv1d.bias is not None else None
        b_rows = slice(2 * inner, 2 * inner + gn)
        c_rows = slice(2 * inner + gn, 2 * inner + 2 * gn)
        dt_rows = slice(2 * inner + 2 * gn, 2 * inner + 2 * gn + heads)
        b_conv, c_conv = slice(inner, inner + gn), slice(inner + gn, inner + 2 * gn)
        batch, seq = x.shape[:2]

        w, b = effective_linear(mixer.in_proj, b_rows)
        B_pre = F.linear(x, w, b).transpose(1, 2)  # (B, G*N, S)
        B_out = F.conv1d(
            B_pre,
            conv_w[b_conv, None, :],
            conv_b[b_conv] if conv_b is not None else None,
            padding=kernel - 1,
            groups=gn,
        )[..., :seq]
        B_all = act(B_out).transpose(1, 2).reshape(batch, seq, mixer.n_groups, mixer.ssm_state_size)

        # C at question rows: gather each row's conv window [t-K+1, t]; positions before 0 are the conv's zeros.
        offsets = torch.arange(-(kernel - 1), 1, device=x.device)
        window = query_positions[..., None] + offsets  # (B, Q, K)
        inside = window >= 0
        x_win = x.gather(1, window.clamp_min(0).flatten(1)[..., None].expand(-1, -1, x.shape[-1]))
        w, b = effective_linear(mixer.in_proj, c_rows)
        C_pre = F.linear(x_win, w, b).view(batch, *window.shape[1:], gn) * inside[..., None]  # (B, Q, K, GN)
        C_out = torch.einsum("bqkc,ck->bqc", C_pre, conv_w[c_conv].to(C_pre.dtype))
        if conv_b is not None:
            C_out = C_out + conv_b[c_conv]
        C_query = act(C_out).view(batch, -1, mixer.n_groups, mixer.ssm_state_size)

        w, b = effective_linear(mixer.in_proj, dt_rows)
        dt = F.softplus(F.linear(x, w, b).float() + mixer.dt_bias.detach().float())
        dt = dt.clamp(min=mixer.time_step_limit[0], max=mixer.time_step_limit[1])
        A = -torch.exp(mixer.A_log.detach().float())
        return MambaScoreInputs(C_query=C_query, B=B_all, dt=dt, A=A)
