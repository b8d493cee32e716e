"""Per-block FLOP counts of a Nemotron-H prefill: the speedup a set of kept-token counts allows at best."""

from __future__ import annotations

from collections.abc import Sequence


def block_flops(kind: str, config, num_tokens: int) -> float:
    """Forward FLOPs (multiply-add = 2) of one block on `num_tokens` tokens.

    Counts the matmuls that dominate: projections, the causal attention product, the chunked SSD scan
    (intra-chunk `C.B` and its product with x, plus the state passing), MLP and the MoE experts a token uses.
    Norms, activations and the conv are linear-time and small; they are left out.
    """
    n, d = float(num_tokens), config.hidden_size
    if kind == "attention":
        q = config.num_attention_heads * config.head_dim
        kv = config.num_key_value_heads * config.head_dim
        projections = 2 * n * d * (2 * q + 2 * kv)
        scores_and_values = 2 * 2 * (n * (n + 1) / 2) * q  # causal: half of QK^T and of AV
        return projections + scores_and_values
    if kind == "mamba":
        heads, head_dim = config.mamba_num_heads, config.mamba_head_dim
        inner = heads * head_dim
        state = config.n_groups * config.ssm_state_size
        projections = 2 * n * d * (2 * inner + 2 * state + heads) + 2 * n * inner * d
        chunk = min(config.chunk_size, num_tokens) or 1
        scan = 2 * n * chunk * heads * (config.ssm_state_size + head_dim) + 2 * 2 * n * inner * config.ssm_state_size
        return projections + scan
    if kind == "mlp":
        return 2 * 2 * n * d * config.intermediate_size
    if kind == "moe":
        experts = config.num_experts_per_tok * config.moe_intermediate_size
        shared = config.moe_shared_expert_intermediate_size
        return 2 * 2 * n * d * (experts + shared) + 2 * n * d * config.n_routed_experts
    raise ValueError(f"unknown block kind {kind!r}")


def prefill_flops(config, kinds: Sequence[str], tokens_per_block: Sequence[int]) -> float:
    """Sum of `block_flops` over the decoder, block b running on `tokens_per_block[b]` tokens."""
    return sum(block_flops(kind, config, n) for kind, n in zip(kinds, tokens_per_block, strict=True))
