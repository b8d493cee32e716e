"""The sections of `analysis.json`: the pure metrics of `sparsity`, `stability` and `linear_probe`, as plain dicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hpft.analysis.collect import BlockScores
from hpft.analysis.linear_probe import fit_probe, majority_accuracy
from hpft.analysis.needles import PROBE_QUESTION
from hpft.analysis.probing import centre_per_needle, colour_variance_share
from hpft.analysis.sparsity import layerwise_sparsity, score_share
from hpft.analysis.stability import adjacent, stability_matrices, top_k_count
from hpft.data.synthetic import COLOURS


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe is fitted (`probe.*` of `conf/analyze.yaml`).

    Attributes:
        steps: optimiser steps.
        lr: learning rate.
        l2: weight penalty.
        centre: centre each needle's features over its colour versions (`probing.centre_per_needle`).
    """

    steps: int = 300
    lr: float = 0.05
    l2: float = 1.0
    centre: bool = True


def _key(fraction: float) -> str:
    """`0.5 -> "50"`: how masses and top fractions appear in key names (`cover_50`, `jaccard_10`)."""
    return f"{round(100 * fraction)}"


def sparsity_section(scores: BlockScores, needle: torch.Tensor | None, masses: Sequence[float]) -> dict[str, Any]:
    """Per-block and per-kind coverage fractions, and the share of the score mass on the asked needle's tokens.

    Args:
        scores: the per-block visual scores of N questions.
        needle: `(N, V)` bool, the asked needle's tokens per question; None to leave `needle_share` out.
        masses: the score-mass shares to cover.

    Returns:
        The `sparsity` section of `analysis.json`.
    """
    cover = layerwise_sparsity(scores.scores, list(masses))  # (M, len(masses))
    share = score_share(scores.scores, needle[:, None]).nanmean(0) if needle is not None else None
    rows = []
    for m, (block, kind) in enumerate(zip(scores.blocks, scores.kinds, strict=True)):
        row = {"block": block, "kind": kind}
        row.update({f"cover_{_key(mass)}": float(cover[m, j]) for j, mass in enumerate(masses)})
        row["needle_share"] = None if share is None else float(share[m])
        rows.append(row)
    by_kind = {}
    for kind in ("attention", "mamba"):
        picked = [r for r in rows if r["kind"] == kind]
        summary: dict[str, Any] = {"blocks": [r["block"] for r in picked]}
        for key in [f"cover_{_key(mass)}" for mass in masses] + ["needle_share"]:
            values = [r[key] for r in picked if r[key] is not None and not math.isnan(r[key])]
            summary[key] = sum(values) / len(values) if values else None
        by_kind[kind] = summary
    uniform = None if needle is None else float(needle.float().mean())
    return {"masses": list(masses), "blocks": rows, "by_kind": by_kind, "uniform_needle_share": uniform}


def stability_section(scores: BlockScores, top_fractions: Sequence[float]) -> dict[str, Any]:
    """Pairwise Jaccard / Spearman matrices, their adjacent-block values and what random rankings would give.

    Args:
        scores: the per-block visual scores of N questions.
        top_fractions: top-set sizes for the Jaccard overlap, as fractions of the visual tokens.

    Returns:
        The `stability` section of `analysis.json`.
    """
    matrices = stability_matrices(scores.scores, list(top_fractions))
    num_visual = scores.scores.shape[-1]
    chance = {"spearman": 0.0}
    for fraction in top_fractions:
        k = top_k_count(num_visual, fraction)
        overlap = k * k / num_visual  # expected intersection of two random k-subsets
        chance[f"jaccard_{_key(fraction)}"] = overlap / (2 * k - overlap)
    pairs = []
    for m in range(len(scores.blocks) - 1):
        pair = {
            "from": scores.blocks[m],
            "to": scores.blocks[m + 1],
            "kinds": f"{scores.kinds[m]}->{scores.kinds[m + 1]}",
        }
        pair.update({name: float(adjacent(matrix)[m]) for name, matrix in matrices.items()})
        pairs.append(pair)
    return {
        "blocks": scores.blocks,
        "kinds": scores.kinds,
        "top_fractions": list(top_fractions),
        "top_k": [top_k_count(num_visual, f) for f in top_fractions],
        "matrices": {name: matrix.tolist() for name, matrix in matrices.items()},
        "adjacent": pairs,
        "adjacent_mean": {name: float(adjacent(matrix).nanmean()) for name, matrix in matrices.items()},
        "chance": chance,
    }


def probe_section(
    features: dict[str, torch.Tensor],
    train: Sequence[int],
    test: Sequence[int],
    probe: ProbeSettings,
    cut: tuple[int, str],
    dropped_tokens: float,
) -> dict[str, Any]:
    """Fit one probe per variant on the training needles, score it on the test needles.

    Args:
        features: `{variant: (N, C, D)}` pooled features of N needles in the C colours of `COLOURS`.
        train: indices of the training needles in `features`.
        test: indices of the test needles.
        probe: how to fit the probe.
        cut: `(block, kind)` of the cut (for the record).
        dropped_tokens: mean number of visual tokens cut per needle.

    Returns:
        The `probing` section of `analysis.json`.
    """
    num_colours = len(COLOURS)
    labels = torch.arange(num_colours)
    y_train, y_test = labels.repeat(len(train)), labels.repeat(len(test))
    accuracy, share = {}, {}
    for variant, value in features.items():
        share[variant] = colour_variance_share(value[[*train, *test]])
        value = centre_per_needle(value) if probe.centre else value
        x_train = value[list(train)].flatten(0, 1)
        x_test = value[list(test)].flatten(0, 1)
        fitted = fit_probe(x_train, y_train, num_colours, steps=probe.steps, lr=probe.lr, l2=probe.l2)
        accuracy[variant] = fitted.accuracy(x_test, y_test)
    return {
        "cut_block": cut[0],
        "cut_kind": cut[1],
        "question": PROBE_QUESTION,
        "pooling": "mean of the last block's output over kept visual tokens and question tokens",
        "centred": probe.centre,
        "colours": list(COLOURS),
        "train_needles": len(train),
        "test_needles": len(test),
        "train_examples": len(y_train),
        "test_examples": len(y_test),
        "dropped_tokens": dropped_tokens,
        "accuracy": accuracy,
        "colour_variance_share": share,
        "chance": 1.0 / num_colours,
        "majority": majority_accuracy(y_train, y_test),
    }
