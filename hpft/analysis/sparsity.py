"""Layerwise sparsity: how few visual tokens hold a given share of a block's query-conditioned score mass (pure)."""

from __future__ import annotations

import torch

# A cumulative share within this of the target counts as reaching it: float32 cumsums of scores that were
# normalised elsewhere land a few ulps either side of values such as 0.9.
_MASS_TOLERANCE = 1e-6


def coverage_fraction(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """Smallest fraction of visual tokens whose scores sum to at least `mass` of the total.

    The top-scored tokens are taken first, so this is the fraction a perfect top-k selection would have to keep
    to preserve that share of the block's score mass: small values mean sparse importance.

    Args:
        scores: `(..., V)` non-negative scores of the V visual tokens (one row per item and block).
        mass: target share of the total, in (0, 1].

    Returns:
        `(...)` float32 fractions in [1/V, 1]; NaN for a row whose scores sum to 0 (no mass to cover).
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    values = scores.float().clamp_min(0).sort(dim=-1, descending=True).values
    total = values.sum(dim=-1, keepdim=True)
    share = values.cumsum(dim=-1) / total
    needed = (share < mass - _MASS_TOLERANCE).sum(dim=-1) + 1
    fraction = needed.float() / values.shape[-1]
    return fraction.masked_fill(total[..., 0] <= 0, float("nan"))


def score_share(scores: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Share of the total score mass that falls on selected tokens (e.g. the asked needle's tokens).

    Args:
        scores: `(..., V)` non-negative scores.
        selected: `(..., V)` bool, broadcastable to `scores`.

    Returns:
        `(...)` float32 shares in [0, 1]; NaN where the scores sum to 0.
    """
    values = scores.float().clamp_min(0)
    total = values.sum(dim=-1)
    share = (values * selected).sum(dim=-1) / total
    return share.masked_fill(total <= 0, float("nan"))


def layerwise_sparsity(scores: torch.Tensor, masses: list[float]) -> torch.Tensor:
    """Mean coverage fraction per block and target mass, over items.

    Args:
        scores: `(N, M, V)` visual scores of N items in M token-mixing blocks.
        masses: the target shares (e.g. `[0.5, 0.9]`).

    Returns:
        `(M, len(masses))` float32, the item mean of `coverage_fraction` (items with no mass are skipped).
    """
    per_item = torch.stack([coverage_fraction(scores, m) for m in masses], dim=-1)  # (N, M, len(masses))
    return per_item.nanmean(dim=0)
