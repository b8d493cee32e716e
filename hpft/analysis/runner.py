"""Run the three analyses over the first videos of a needle split and collect the numbers of `analysis.json`.

1. One unreduced forward per question, scoring every visual token before every token-mixing block
   (`collect.unreduced_block_scores`) -> layerwise sparsity and depth stability (`sections`).
2. Per needle, the counterfactual probe batch under each cut variant (`probing.needle_probe_features`) ->
   a logistic-regression probe per variant, trained and tested on needles of disjoint videos (`sections`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from hpft.analysis.collect import BlockScores, unreduced_block_scores
from hpft.analysis.needles import (
    ProbeExample,
    needle_token_index,
    probe_examples,
    probe_prompt,
    split_by_video,
    token_grid,
    video_of,
)
from hpft.analysis.probing import VARIANTS, needle_probe_features, recoloured_needle_features
from hpft.analysis.sections import ProbeSettings, probe_section, sparsity_section, stability_section
from hpft.data.collate import VideoQACollator
from hpft.reduction.config import ReductionConfig
from hpft.reduction.engine import adapter_for
from hpft.reduction.vlm import embed_video_prompt


@dataclass(frozen=True)
class AnalysisSettings:
    """What to analyse and how (the `conf/analyze.yaml` keys, validated by `hpft.analysis.checks`).

    Attributes:
        num_videos: videos read from the start of the split.
        num_items: questions of those videos scored for sparsity and stability (None: all of them).
        batch_size: questions per scoring forward.
        masses: score-mass shares for the sparsity coverage (e.g. 0.5, 0.9).
        top_fractions: top-set sizes for the Jaccard overlap, as fractions of the visual tokens.
        cut_block: block after which the probed needle's tokens are cut.
        train_size: needles (each shown in every colour) the probe is fitted on.
        test_size: needles the probe is tested on, from other videos.
        seed: seed of the probe's train/test split.
        probe: how the probe is fitted.
        progress: show tqdm bars.
    """

    num_videos: int
    num_items: int | None
    batch_size: int
    masses: tuple[float, ...]
    top_fractions: tuple[float, ...]
    cut_block: int
    train_size: int
    test_size: int
    seed: int
    probe: ProbeSettings = ProbeSettings()
    progress: bool = True


def first_video_rows(rows: Sequence[dict], num_videos: int) -> list[int]:
    """Indices of the rows that belong to the first `num_videos` distinct videos, in file order."""
    videos: set[str] = set()
    picked = []
    for i, row in enumerate(rows):
        video = video_of(row)
        if video not in videos:
            if len(videos) == num_videos:
                continue
            videos.add(video)
        picked.append(i)
    return picked


def _device(vlm) -> torch.device:
    return next(vlm.parameters()).device


# ------------------------------------------------------------------------------------------------ scoring pass


def score_items(
    vlm, dataset, indices: Sequence[int], reduction: ReductionConfig, batch_size: int, progress: bool = True
) -> tuple[BlockScores, torch.Tensor | None]:
    """Visual scores of every token-mixing block for each question (unreduced forward).

    Args:
        vlm: a transformers `nemotron_h_omni` model.
        dataset: a `NeedleQADataset`.
        indices: rows to score.
        reduction: scorer settings.
        batch_size: questions per forward.
        progress: show a tqdm bar.

    Returns:
        `(BlockScores with scores (N, M, V), needle mask (N, V) bool or None when rows carry no needle)`.
    """
    pad = dataset.tokenizer.pad_token_id
    pad = dataset.tokenizer.eos_token_id if pad is None else pad
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, collate_fn=VideoQACollator(pad))
    device = _device(vlm)
    parts, blocks, kinds = [], [], []
    with tqdm(total=len(indices), desc="scores", unit="item", disable=not progress) as bar:
        for batch in loader:
            embeds, visual_mask = embed_video_prompt(
                vlm, batch["input_ids"].to(device), batch["pixel_values_videos"].to(device, vlm.dtype)
            )
            out = unreduced_block_scores(
                vlm.language_model,
                embeds,
                visual_mask,
                batch["query_mask"].to(device),
                reduction,
                attention_mask=batch["attention_mask"].to(device),
            )
            parts.append(out.scores.cpu())
            blocks, kinds = out.blocks, out.kinds
            bar.update(len(batch["id"]))
    needle = None
    rows = [dataset.rows[i] for i in indices]
    if all("needle" in row for row in rows):
        needle = torch.zeros(len(rows), dataset.num_visual, dtype=torch.bool)
        for n, row in enumerate(rows):
            needle[n, needle_token_index(row["needle"], dataset.tokens_per_tubelet, dataset.temporal_patch_size)] = True
    return BlockScores(blocks=blocks, kinds=kinds, scores=torch.cat(parts)), needle


# -------------------------------------------------------------------------------------------------- probe pass


def probe_features(
    vlm, dataset, examples: Sequence[ProbeExample], cut_block: int, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Pooled last-block features of every example in every colour under every variant.

    Args:
        vlm: a transformers `nemotron_h_omni` model.
        dataset: the `NeedleQADataset` the examples come from.
        examples: the needles to probe.
        cut_block: the block after which each needle's tokens are cut.
        progress: show a tqdm bar.

    Returns:
        `{variant: (len(examples), len(COLOURS), D) float32}`; colour c of an example is `COLOURS[c]`.
    """
    device = _device(vlm)
    grid = token_grid(dataset.tokens_per_tubelet)
    out: dict[str, list[torch.Tensor]] = {v: [] for v in VARIANTS}
    cached_row, pixels = None, None
    for example in tqdm(examples, desc="probe", unit="needle", disable=not progress):
        if example.row != cached_row:  # examples come grouped by video: decode each video once
            cached_row = example.row
            pixels = dataset[example.row]["pixel_values_videos"].to(device, vlm.dtype)
        needle = recoloured_needle_features(vlm, pixels, example.needle, list(example.drop), grid)
        ids, visual_positions, first_query = probe_prompt(
            dataset.tokenizer, example.needle["glyph"], dataset.num_visual, dataset.video_token_id,
            dataset.frame_labels,
        )  # fmt: skip
        length = len(ids)
        drop = torch.zeros(length, dtype=torch.bool, device=device)
        drop[[visual_positions[t] for t in example.drop]] = True
        visual = torch.zeros(length, dtype=torch.bool, device=device)
        visual[visual_positions] = True
        position = torch.arange(length, device=device)
        pool = (visual & ~drop) | (position >= first_query)
        features = needle_probe_features(
            vlm, torch.tensor([ids], device=device), pixels[None], needle, drop, pool, cut_block
        )
        for variant, value in features.items():
            out[variant].append(value.cpu())
    return {variant: torch.stack(values) for variant, values in out.items()}


# ----------------------------------------------------------------------------------------------------- the run


def probe_split(
    rows: Sequence[dict],
    indices: Sequence[int],
    tokens_per_tubelet: int,
    temporal_patch: int,
    settings: AnalysisSettings,
) -> tuple[list[ProbeExample], list[int], list[int]]:
    """The probed needles of the analysed rows and their video-disjoint train/test split (`settings.seed`).

    Returns:
        `(examples, train indices, test indices)`; the parts are shorter than asked when the rows hold too few
        needles (`hpft.analysis.checks` reports that before the model loads).
    """
    picked = [rows[i] for i in indices]
    examples = probe_examples(picked, tokens_per_tubelet, temporal_patch)
    examples = [ProbeExample(indices[e.row], e.video_id, e.needle, e.drop) for e in examples]  # back to file rows
    train, test = split_by_video(examples, settings.train_size, settings.test_size, settings.seed)
    return examples, train, test


def run_analysis(vlm, dataset, reduction: ReductionConfig, settings: AnalysisSettings) -> dict[str, Any]:
    """Sparsity, stability and probing on the first `settings.num_videos` videos of `dataset`.

    Args:
        vlm: a transformers `nemotron_h_omni` model (eval mode).
        dataset: a `NeedleQADataset` whose rows carry `needle` records.
        reduction: the scorer settings (its schedule is not used: nothing is cut in the scoring pass).
        settings: what to analyse.

    Returns:
        The sections of `analysis.json` (see `docs/analyze.md` for every key).
    """
    kinds = list(adapter_for(vlm.language_model).kinds)
    indices = first_video_rows(dataset.rows, settings.num_videos)
    scored = indices if settings.num_items is None else indices[: settings.num_items]
    scores, needle = score_items(vlm, dataset, scored, reduction, settings.batch_size, settings.progress)
    examples, train, test = probe_split(
        dataset.rows, indices, dataset.tokens_per_tubelet, dataset.temporal_patch_size, settings
    )
    chosen = [examples[i] for i in [*train, *test]]
    features = probe_features(vlm, dataset, chosen, settings.cut_block, settings.progress)
    probing = probe_section(
        features,
        train=range(len(train)),
        test=range(len(train), len(chosen)),
        probe=settings.probe,
        cut=(settings.cut_block, kinds[settings.cut_block]),
        dropped_tokens=sum(len(e.drop) for e in chosen) / len(chosen),
    )
    return {
        "num_videos": len({video_of(dataset.rows[i]) for i in indices}),
        "num_items": len(scored),
        "num_visual": dataset.num_visual,
        "layer_pattern": kinds,
        "sparsity": sparsity_section(scores, needle, settings.masses),
        "stability": stability_section(scores, settings.top_fractions),
        "probing": probing,
    }
