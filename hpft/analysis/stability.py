"""Importance stability across depth: top-k overlap and rank correlation of blocks' visual scores (pure).

Inputs are the scores of the same visual tokens in M token-mixing blocks of one unreduced forward, `(M, V)`,
so every pair of blocks ranks the same token set.
"""

from __future__ import annotations

import torch


def top_k_count(num_visual: int, fraction: float) -> int:
    """Tokens in a top-`fraction` set of `num_visual` tokens: `round(fraction * V)`, at least 1."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * num_visual))


def pairwise_jaccard(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Jaccard overlap of every pair of rows' top-k token sets.

    Args:
        scores: `(M, V)` scores (one row per block).
        k: size of each top set, `1 <= k <= V`.

    Returns:
        `(M, M)` float32 `|T_a ∩ T_b| / |T_a ∪ T_b|`; 1 on the diagonal.
    """
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be in [1, {scores.shape[-1]}], got {k}")
    top = scores.float().topk(k, dim=-1).indices
    member = torch.zeros(scores.shape, dtype=torch.float32, device=scores.device).scatter_(-1, top, 1.0)
    inter = member @ member.T
    return inter / (2 * k - inter)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based) along the last axis, ties sharing their average rank, as Spearman's rho needs.

    Args:
        values: `(..., V)`.

    Returns:
        `(..., V)` float32 ranks.
    """
    ordered, order = values.float().sort(dim=-1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    group = starts.long().cumsum(dim=-1) - 1  # tie group of each sorted position
    position = torch.arange(values.shape[-1], dtype=torch.float32, device=values.device).expand_as(ordered)
    sums = torch.zeros_like(ordered).scatter_add_(-1, group, position)
    counts = torch.zeros_like(ordered).scatter_add_(-1, group, torch.ones_like(ordered))
    mean_rank = (sums / counts.clamp_min(1.0)).gather(-1, group)
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def pairwise_spearman(scores: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of every pair of rows (Pearson correlation of their average ranks).

    Args:
        scores: `(M, V)` scores (one row per block).

    Returns:
        `(M, M)` float32 in [-1, 1]; NaN in the rows and columns of a constant score row (no ranking).
    """
    ranks = average_ranks(scores)
    centred = ranks - ranks.mean(dim=-1, keepdim=True)
    norm = centred.norm(dim=-1)
    corr = (centred @ centred.T) / (norm[:, None] * norm[None, :])
    return corr.clamp(-1.0, 1.0)


def stability_matrices(scores: torch.Tensor, top_fractions: list[float]) -> dict[str, torch.Tensor]:
    """Item-mean pairwise stability of M blocks' scores.

    Args:
        scores: `(N, M, V)` visual scores of N items in M token-mixing blocks.
        top_fractions: top-set sizes as fractions of V (e.g. `[0.1, 0.25]`).

    Returns:
        `{"jaccard_<pct>": (M, M) for each fraction, "spearman": (M, M)}`, float32 means over items (NaN pairs of
        an item are skipped); `<pct>` is the fraction in percent (`jaccard_10`, `jaccard_25`).
    """
    num_visual = scores.shape[-1]
    out = {}
    for fraction in top_fractions:
        k = top_k_count(num_visual, fraction)
        out[f"jaccard_{round(100 * fraction)}"] = torch.stack([pairwise_jaccard(s, k) for s in scores]).nanmean(0)
    out["spearman"] = torch.stack([pairwise_spearman(s) for s in scores]).nanmean(0)
    return out


def adjacent(matrix: torch.Tensor) -> torch.Tensor:
    """The values between consecutive blocks: `(M, M) -> (M - 1,)`, entry m is `matrix[m, m + 1]`."""
    return matrix.diagonal(offset=1)
