"""Probe data from needle rows: each needle's visual tokens, its video in every colour, the question naming it (pure).

The synthetic needle task is built so that one grid cell over one tubelet is exactly one decoder token
(`hpft.data.synthetic`: 16 px cells, patch 8, 2x2 pixel shuffle, temporal patch 2), and the pixel shuffle keeps
raster order, so a needle drawn at cell `(r, c)` during frames `[f0, f1)` is visual token
`t * tokens_per_tubelet + r * grid + c` for every tubelet `t` those frames cover (a test checks this against
the model's own vision features). The probe redraws a needle in each palette colour with the generator's glyph
bitmaps (`recolour_needle`), so its colour is the one thing that differs between the versions of a video.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hpft.data.prompts import FrameLabels, encode_example
from hpft.data.synthetic import COLOURS, PALETTE, glyph_mask

# The dataset's own colour-question template (`hpft.data.synthetic.make_questions`): it names the glyph only.
PROBE_QUESTION = "What colour is the {glyph}?"


def video_of(row: dict) -> str:
    """The video a question row is about (`video_id`, else its `video` path)."""
    return str(row.get("video_id") or row["video"])


def token_grid(tokens_per_tubelet: int) -> int:
    """Cells per frame side: the token grid of one tubelet, which must be square."""
    grid = math.isqrt(tokens_per_tubelet)
    if grid * grid != tokens_per_tubelet:
        raise ValueError(f"tokens_per_tubelet={tokens_per_tubelet} is not a square grid of cells")
    return grid


def needle_token_index(needle: dict, tokens_per_tubelet: int, temporal_patch: int = 2) -> list[int]:
    """Visual-token positions (0-based, within the video's tokens) that show a needle.

    Args:
        needle: a row's `needle` record: `cell: [row, col]`, `frames: [start, end)`.
        tokens_per_tubelet: decoder tokens per tubelet; a square grid (`grid * grid`) of one token per cell.
        temporal_patch: frames per tubelet.

    Returns:
        Ascending token positions, one per tubelet the needle is visible in.
    """
    grid = token_grid(tokens_per_tubelet)
    row, col = (int(v) for v in needle["cell"])
    if not (0 <= row < grid and 0 <= col < grid):
        raise ValueError(f"needle cell {needle['cell']} lies outside the {grid}x{grid} token grid")
    start, end = (int(v) for v in needle["frames"])
    tubelets = range(start // temporal_patch, -(-end // temporal_patch))
    return [t * tokens_per_tubelet + row * grid + col for t in tubelets]


@dataclass(frozen=True)
class ProbeExample:
    """One needle of one video: the probe shows it in every colour and asks for the colour after its tokens are cut.

    Attributes:
        row: index of a dataset row of this video (its decoded frames are the example's video).
        video_id: the video.
        needle: the row's `needle` record (`glyph`, `colour`, `cell`, `frames`).
        drop: the needle's visual-token positions, cut at the cut block.
    """

    row: int
    video_id: str
    needle: dict
    drop: tuple[int, ...]


def probe_examples(rows: Sequence[dict], tokens_per_tubelet: int, temporal_patch: int = 2) -> list[ProbeExample]:
    """One example per distinct needle (by glyph) of each video, in row order.

    Args:
        rows: question rows of the split (`video_id`, `needle`), as `NeedleQADataset.rows`.
        tokens_per_tubelet: see `needle_token_index`.
        temporal_patch: see `needle_token_index`.

    Returns:
        The examples, grouped by video in first-appearance order.
    """
    examples, seen = [], set()
    for i, row in enumerate(rows):
        needle = row.get("needle")
        video = video_of(row)
        if needle is None or (video, needle["glyph"]) in seen:
            continue
        seen.add((video, needle["glyph"]))
        drop = tuple(needle_token_index(needle, tokens_per_tubelet, temporal_patch))
        examples.append(ProbeExample(row=i, video_id=video, needle=dict(needle), drop=drop))
    return examples


def split_by_video(
    examples: Sequence[ProbeExample], train_size: int, test_size: int, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded train/test split of examples that never puts two needles of one video on both sides.

    Videos are shuffled; whole videos fill the training part up to `train_size` examples, then the test part up
    to `test_size`. Needles of a video that would overfill a part are left out rather than moved across.

    Args:
        examples: the candidate examples.
        train_size: training examples wanted.
        test_size: test examples wanted.
        seed: shuffle seed.

    Returns:
        `(train indices, test indices)` into `examples`; shorter than asked when there are too few examples.
    """
    videos: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        videos.setdefault(example.video_id, []).append(i)
    order = torch.randperm(len(videos), generator=torch.Generator().manual_seed(seed)).tolist()
    groups = list(videos.values())
    train: list[int] = []
    test: list[int] = []
    for g in order:
        part, size = (train, train_size) if len(train) < train_size else (test, test_size)
        part.extend(groups[g][: size - len(part)])
    return train, test


def recolour_needle(
    pixels: torch.Tensor, needle: dict, colour: str, grid: int, temporal_patch: int = 2
) -> torch.Tensor:
    """The video with one needle redrawn in another colour (the generator's glyph bitmap on black).

    Args:
        pixels: `(tubelets, temporal_patch * 3, H, W)` float pixels in [0, 1] (tiny-omni's scaling), square
            frames split into a grid of equal cells, one per token.
        needle: the needle record (`glyph`, `cell`, `frames`).
        colour: a name in `hpft.data.synthetic.PALETTE`.
        grid: cells per frame side (`token_grid`); a cell must be a multiple of 8 px (the glyph bitmaps' unit).
        temporal_patch: frames per tubelet.

    Returns:
        A new `(tubelets, temporal_patch * 3, H, W)` tensor; only the needle's cell in its tubelets changed.
    """
    cell = pixels.shape[-1] // grid
    row, col = (int(v) for v in needle["cell"])
    mask = torch.from_numpy(glyph_mask(needle["glyph"], cell)).to(pixels.device)
    rgb = torch.tensor(PALETTE[colour], dtype=pixels.dtype, device=pixels.device) / 255.0
    drawn = torch.where(mask, rgb[:, None, None], torch.zeros((), dtype=pixels.dtype, device=pixels.device))
    out = pixels.clone()
    start, end = (int(v) for v in needle["frames"])
    for t in range(start // temporal_patch, -(-end // temporal_patch)):
        cells = out[t, :, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
        cells.copy_(drawn.repeat(temporal_patch, 1, 1))  # every frame of the tubelet: channels [f0 RGB, f1 RGB]
    return out


def probe_prompt(
    tokenizer, glyph: str, num_visual: int, video_token_id: int, frame_labels: FrameLabels | None = None
) -> tuple[list[int], list[int], int]:
    """The dataset's prompt layout cut right after the probe question: `<s>Video:<video>... Question: ...?`.

    The options and "Answer:" are left out: they list colours, and in a causal model the question tokens cannot
    see them anyway.

    Args:
        tokenizer: the model's tokenizer.
        glyph: the needle to ask about.
        num_visual: video placeholder tokens.
        video_token_id: the placeholder id.
        frame_labels: the model's prompt layout (the dataset's `frame_labels`).

    Returns:
        `(input_ids, position of each visual token in order, first question position)`; the question runs to the
        end. Visual token `t` (as `needle_token_index` counts) sits at `positions[t]`.
    """
    question = PROBE_QUESTION.format(glyph=glyph)
    prompt = encode_example(
        tokenizer, question, COLOURS[:4], num_visual, answer=None, video_token_id=video_token_id,
        frame_labels=frame_labels,
    )  # fmt: skip
    positions = [i for i, is_visual in enumerate(prompt.visual_mask) if is_visual]
    first_query = prompt.query_mask.index(True)
    head = list(tokenizer(f" Question: {question}", add_special_tokens=False)["input_ids"])
    if prompt.input_ids[first_query : first_query + len(head)] != head:
        raise ValueError(f"the tokenizer splits {question!r} differently inside the prompt; cannot cut the options")
    return prompt.input_ids[: first_query + len(head)], positions, first_query
