"""Visual-token importance scores: pure tensor functions, no modules, no I/O.

Every function takes tensors already projected by an adapter from one block's input and that block's own
weights (see `hpft/reduction/adapters/`), and returns one score per position of the current sequence:
`(batch, seq)`, with non-visual positions set to 0. Selection (`select_top_visual`) keeps every non-visual
token and the top-k visual tokens per sample, in their original order.

Notation: B batch, S current sequence length, Q question tokens per sample (padded), H heads, G groups
(Mamba-2 B/C groups or attention key/value heads), N SSM state size, d head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAMBA_NORMALIZATIONS = ("abs_sum", "softmax")


def _mean_over_heads_and_queries(weights: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Average `(B, H, Q, S)` weights over heads and over the valid question rows -> `(B, S)`."""
    valid = query_valid.to(weights.dtype)[:, None, :, None]  # (B, 1, Q, 1)
    summed = (weights * valid).sum(dim=(1, 2))
    count = valid.sum(dim=(1, 2)).clamp_min(1.0) * weights.shape[1]
    return summed / count


def attention_visual_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    query_positions: torch.Tensor,
    query_valid: torch.Tensor,
    key_valid: torch.Tensor,
    visual_mask: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Attention of the question rows to the visual tokens (DESIGN §1.2), averaged over heads and rows.

    `s_j = mean_{i in Q} mean_h softmax_{j' <= i}(q_i^h . k_j'^h * scaling)[j]` for visual `j`.

    Args:
        query: `(B, H, Q, d)` queries of the question tokens (rotary already applied where the family has it).
        key: `(B, G, S, d)` keys of the whole current sequence; `G` divides `H` (grouped-query attention).
        query_positions: `(B, Q)` long, index of each question row in the current sequence (causal limit).
        query_valid: `(B, Q)` bool, False for rows that only pad a shorter question.
        key_valid: `(B, S)` bool, False at right padding.
        visual_mask: `(B, S)` bool, True at visual tokens.
        scaling: logit scale, normally `1 / sqrt(d)`.

    Returns:
        `(B, S)` float32 scores; 0 at non-visual positions. The full softmax (over all causal keys, text
        included) is used so that scores equal the attention weights the block itself computes.
    """
    num_heads, num_groups = query.shape[1], key.shape[1]
    key = key.repeat_interleave(num_heads // num_groups, dim=1)
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling  # (B, H, Q, S)
    positions = torch.arange(key.shape[2], device=key.device)
    allowed = (positions[None, None, :] <= query_positions[:, :, None]) & key_valid[:, None, :]  # (B, Q, S)
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    scores = _mean_over_heads_and_queries(weights, query_valid)
    return scores * visual_mask


def mamba2_implicit_attention(
    C_query: torch.Tensor,
    B: torch.Tensor,
    dt: torch.Tensor,
    query_positions: torch.Tensor,
    A: torch.Tensor | None = None,
    use_dt: bool = True,
) -> torch.Tensor:
    """The Mamba-2 (SSD) mixing matrix seen from the question rows: signed implicit attention.

    `M_ij^h = (C_i^g(h) . B_j^g(h)) * exp(A_h * sum_{k=j+1..i} dt_k^h) * dt_j^h` for `j <= i`, 0 for `j > i`.
    With `A=None` the decay factor is dropped (the decay-free proxy of DESIGN §1.2); with `use_dt=False` the
    `dt_j` factor is dropped. With `A` given, `y_i = sum_j M_ij x_j + D x_i` is exactly the SSM scan output.

    Args:
        C_query: `(B, Q, G, N)` C projections at the question rows (after conv and activation).
        B: `(B, S, G, N)` B projections of the whole current sequence (after conv and activation).
        dt: `(B, S, H)` discretisation steps after softplus(dt + dt_bias) and the block's clamp.
        query_positions: `(B, Q)` long, index of each question row in the current sequence.
        A: `(H,)` negative decay rates `-exp(A_log)`, or None for the decay-free proxy.
        use_dt: multiply by `dt_j`.

    Returns:
        `(B, H, Q, S)` float32 matrix, zero above the causal diagonal.
    """
    num_heads, num_groups = dt.shape[-1], B.shape[2]
    per_group = num_heads // num_groups
    CB = torch.einsum("bqgn,bsgn->bgqs", C_query.float(), B.float())  # (B, G, Q, S)
    M = CB.repeat_interleave(per_group, dim=1)  # (B, H, Q, S)
    dt = dt.float()
    if use_dt:
        M = M * dt.transpose(1, 2)[:, :, None, :]
    positions = torch.arange(B.shape[1], device=B.device)
    causal = positions[None, None, :] <= query_positions[:, :, None]  # (B, Q, S)
    if A is not None:
        # sum_{k=j+1..i} dt_k = cumsum_i - cumsum_j; masked before exp so that j > i never overflows.
        cumsum = dt.cumsum(dim=1).transpose(1, 2)  # (B, H, S)
        at_query = cumsum.gather(2, query_positions[:, None, :].expand(-1, num_heads, -1))  # (B, H, Q)
        segment = at_query[..., None] - cumsum[:, :, None, :]  # (B, H, Q, S)
        segment = segment.masked_fill(~causal[:, None], 0.0)
        M = M * torch.exp(A.float()[None, :, None, None] * segment)
    return M.masked_fill(~causal[:, None], 0.0)


def mamba2_visual_scores(
    implicit_attention: torch.Tensor,
    query_valid: torch.Tensor,
    visual_mask: torch.Tensor,
    normalize: str = "abs_sum",
) -> torch.Tensor:
    """Turn an implicit-attention matrix into one score per visual token (DESIGN §1.2).

    Per question row and head, the magnitudes `|M_ij|` over visual `j` are normalised to sum to one
    (`abs_sum`) or passed through a softmax over visual `j` (`softmax`), then averaged over heads and rows.

    Args:
        implicit_attention: `(B, H, Q, S)` from `mamba2_implicit_attention`.
        query_valid: `(B, Q)` bool.
        visual_mask: `(B, S)` bool.
        normalize: `abs_sum` or `softmax`.

    Returns:
        `(B, S)` float32 scores; 0 at non-visual positions.
    """
    if normalize not in MAMBA_NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is not one of {MAMBA_NORMALIZATIONS}")
    visual = visual_mask[:, None, None, :]
    magnitude = implicit_attention.abs()
    if normalize == "abs_sum":
        magnitude = magnitude * visual
        weights = magnitude / magnitude.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    else:
        weights = torch.softmax(magnitude.masked_fill(~visual, float("-inf")), dim=-1).nan_to_num(0.0)
    return _mean_over_heads_and_queries(weights, query_valid) * visual_mask


def mamba2_decay_free_visual_scores(
    C_query: torch.Tensor,
    B_visual: torch.Tensor,
    dt_visual: torch.Tensor,
    query_valid: torch.Tensor,
) -> torch.Tensor:
    """Fast path of `mamba2_visual_scores(mamba2_implicit_attention(..., A=None), normalize="abs_sum")`.

    Without the decay, `|M_ij^h| = |C_i^g . B_j^g| * dt_j^h` factorises over groups and heads, so the
    per-(row, head) normalisation and the mean become two batched matmuls over `(B, G, Q, V)` instead of a
    `(B, H, Q, S)` tensor. Valid because every visual token precedes every question row (causality is moot).

    Args:
        C_query: `(B, Q, G, N)` C at the question rows.
        B_visual: `(B, V, G, N)` B at the visual tokens.
        dt_visual: `(B, V, H)` dt at the visual tokens.
        query_valid: `(B, Q)` bool.

    Returns:
        `(B, V)` float32 scores of the visual tokens, in their order.
    """
    batch, num_visual, num_heads = dt_visual.shape
    num_groups = B_visual.shape[2]
    per_group = num_heads // num_groups
    cb = torch.einsum("bqgn,bvgn->bgqv", C_query.float(), B_visual.float()).abs()  # (B, G, Q, V)
    dt = dt_visual.float().view(batch, num_visual, num_groups, per_group).permute(0, 2, 1, 3)  # (B, G, V, H/G)
    row_mass = cb @ dt  # (B, G, Q, H/G): sum over visual j of |CB_ij| dt_j^h
    rows = query_valid.float().sum(1).clamp_min(1.0)  # (B,)
    weight = query_valid.float()[:, None, :, None] / row_mass.clamp_min(1e-30)  # (B, G, Q, H/G)
    weight = weight / (rows[:, None, None, None] * num_heads)
    per_head = weight.transpose(-1, -2) @ cb  # (B, G, H/G, V): sum over rows i of w_ih |CB_ij|
    return (per_head * dt.transpose(-1, -2)).sum(dim=(1, 2))


def norm_scores(hidden: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """Query-agnostic baseline: L2 norm of each visual hidden state. `(B, S, D), (B, S) -> (B, S)`."""
    return hidden.float().norm(dim=-1) * visual_mask


def mean_pool_scores(hidden: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """Query-agnostic baseline: cosine similarity of each visual token to the mean visual token.

    `(B, S, D), (B, S) -> (B, S)`; keeps the tokens most typical of the video.
    """
    visual = visual_mask[..., None].to(torch.float32)
    hidden = hidden.float()
    mean = (hidden * visual).sum(dim=1, keepdim=True) / visual.sum(dim=1, keepdim=True).clamp_min(1.0)
    return F.cosine_similarity(hidden, mean, dim=-1) * visual_mask


def random_scores(visual_mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Query-agnostic baseline: uniform random scores. `(B, S) -> (B, S)`."""
    noise = torch.rand(visual_mask.shape, generator=generator, device="cpu").to(visual_mask.device)
    return noise * visual_mask


def select_top_visual(scores: torch.Tensor, visual_mask: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Indices to keep: every non-visual position plus the `num_keep` best visual tokens, in original order.

    Every sample must hold the same number of visual tokens, so every row keeps the same count.

    Args:
        scores: `(B, S)` scores (only visual positions are read).
        visual_mask: `(B, S)` bool.
        num_keep: visual tokens kept per sample.

    Returns:
        `(B, S - V + num_keep)` long indices into the current sequence, ascending.
    """
    num_visual = int(visual_mask[0].sum())
    kept_len = visual_mask.shape[1] - num_visual + num_keep
    # Non-visual positions get +inf so top-k always takes them; NaN scores (degenerate rows) become -inf.
    ranked = scores.float().nan_to_num(nan=float("-inf")).masked_fill(~visual_mask, float("inf"))
    index = ranked.topk(kept_len, dim=1, sorted=False).indices
    return index.sort(dim=1).values
