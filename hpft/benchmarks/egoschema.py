"""EgoSchema, 500-question public subset: load, prompt, parse and score as lmms-eval 0.7.3 (`egoschema_subset`).

Release layout read by `load(root)` (HF lmms-lab/egoschema, config `Subset`)::

    <root>/Subset/test-00000-of-00001.parquet   # option: 5 strings "A. .".."E. ."; answer: "0".."4"
    <root>/videos/<video_idx>.mp4                # .MP4 accepted too

Scoring: after the reasoning strip, the MMMU-derived parser collects "(X)", "X " and "X." together and keeps the
candidate whose last occurrence is earliest (so "The answer is not A or B; it is D." reads as "A"). Its
option-text fallback compares whole option strings *including* their "A. " label, so it practically never
fires; unparsable outputs get the reference's `random.choice`, reproduced by the seeded guess. The headline
`score` is the plain accuracy as a fraction. The subset has no breakdown fields, so `by` is empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hpft.benchmarks.aggregate import score_records, summary
from hpft.benchmarks.common import (
    LETTERS,
    Item,
    LoadResult,
    RowError,
    collect_items,
    find_file,
    find_video,
    log_skips,
    require_int,
    require_options,
    require_root,
    require_str,
    strip_letter_prefix,
)
from hpft.benchmarks.parsing import mmmu_earliest_candidate, strip_reasoning

__all__ = ["ANNOTATION", "LAYOUT", "aggregate", "build_prompt", "load", "parse_answer"]

ANNOTATION = "Subset/test-00000-of-00001.parquet"
LAYOUT = "  <root>/Subset/test-00000-of-00001.parquet\n  <root>/videos/<video_idx>.mp4   (or .MP4)"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
NUM_OPTIONS = 5


def _row_to_item(row: dict[str, Any], index: int, base: Path) -> Item:
    question = require_str(row, "question")
    options = require_options(row, "option", (NUM_OPTIONS,))
    answer = require_int(row, "answer")
    if not 0 <= answer < NUM_OPTIONS:
        raise RowError("answer", f"expected an option index 0..{NUM_OPTIONS - 1}, got {row['answer']!r}")
    video_idx = require_str(row, "video_idx")
    video = find_video(base / "videos", video_idx, (".mp4", ".MP4"))
    if video is None:
        raise RowError("video_idx", f"video not found: {base / 'videos' / video_idx}.mp4 (or .MP4)")
    qid = row.get("question_idx")
    return Item(
        id=str(qid) if qid is not None and str(qid).strip() else f"{video_idx}-{index}",
        video=str(video),
        question=question,
        options=[strip_letter_prefix(opt, letter) for opt, letter in zip(options, LETTERS, strict=False)],
        answer=LETTERS[answer],
        doc=row,
        meta={"question_idx": qid, "video_idx": video_idx},
    )


def load(root: str | os.PathLike[str]) -> LoadResult:
    """Read the EgoSchema subset under `root`.

    Args:
        root: Folder with the layout in the module docstring.

    Returns:
        A `LoadResult` (a `list[Item]` with `.skipped`); `answer` is the letter of the answer index.

    Raises:
        BenchmarkLayoutError: If `root` or the parquet file is missing.
    """
    base = require_root(root, "EgoSchema", LAYOUT)
    path = find_file(base, (ANNOTATION, "Subset/test-*.parquet"), "EgoSchema", LAYOUT)
    items, skipped = collect_items(path, lambda row, i: _row_to_item(row, i, base))
    result = LoadResult(items, skipped, str(base))
    log_skips("EgoSchema", result)
    return result


def build_prompt(item: Item) -> str:
    """The lmms-eval `egoschema_subset` prompt: the question, the labelled options as released, the post prompt.

    Args:
        item: An EgoSchema item.

    Returns:
        The prompt text.
    """
    options = item.doc.get("option") or [f"{letter}. {opt}" for letter, opt in zip(LETTERS, item.options)]
    return item.question + "".join(f"\n{opt}" for opt in options) + POST_PROMPT


def parse_answer(text: str, doc: Mapping[str, Any]) -> str:
    """The letter lmms-eval 0.7.3 extracts for EgoSchema: reasoning strip, then the earliest-last candidate.

    Args:
        text: Raw model output.
        doc: The raw row; its `option` strings (labels included) feed the option-text fallback.

    Returns:
        "A".."E", or `""` where the reference guesses (the scorer draws the seeded guess).
    """
    options = doc.get("option") or [""] * NUM_OPTIONS
    index2ans = {letter: str(options[i]).strip() for i, letter in enumerate(LETTERS[:NUM_OPTIONS])}
    return mmmu_earliest_candidate(strip_reasoning(text), index2ans)


def aggregate(records: Iterable[Mapping[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """EgoSchema subset accuracy (fraction), the reference's `score` metric.

    Args:
        records: From `aggregate.make_record`, in row order (the guesses depend on it).
        seed: Seed of the guess for unparsed outputs (0 reproduces the reference).

    Returns:
        The `aggregate.summary` dict; `score` = correct / evaluated; `by` is empty.
    """
    scored = score_records(records, guess=True, seed=seed)
    evaluated = [r for r in scored if r["correct"] is not None]
    score = sum(r["correct"] for r in evaluated) / len(evaluated) if evaluated else 0.0
    return summary("egoschema", "score", score, "fraction", scored, {})
