"""LongVideoBench validation: load the release, prompt, parse and score as lmms-eval 0.7.3 (`longvideobench_val_v`).

Release layout read by `load(root)`::

    <root>/validation-00000-of-00001.parquet   # option0..option4, "N/A" past the last option; correct_choice 0-based
      or <root>/lvb_val.json                    # the official loader's form: candidates list
    <root>/videos/<video_path>
    <root>/subtitles/<subtitle_path>           # optional

Scoring: after the reasoning strip, delete a few answer prefixes and take the **first capital A-E anywhere**
(so "Answer: C" reads as "A" and "E" counts even on a 4-option question); with none, the reference draws
`random.choice` over the valid letters, reproduced by the seeded guess of `aggregate.score_records`. The
headline `lvb_acc` is the micro accuracy as a fraction rounded to 5 decimals, computed the reference's way
(instance-weighted over the duration-group and category subsets).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hpft.benchmarks.aggregate import field_value, group_counts, score_records, summary
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
)
from hpft.benchmarks.parsing import first_capital_letter, strip_reasoning

__all__ = ["LAYOUT", "aggregate", "build_prompt", "load", "parse_answer"]

ANNOTATIONS = ("validation-00000-of-00001.parquet", "validation-*.parquet", "lvb_val.json")
LAYOUT = (
    "  <root>/validation-00000-of-00001.parquet   (or <root>/lvb_val.json)\n"
    "  <root>/videos/<video_path>\n"
    "  <root>/subtitles/<subtitle_path>   (optional)"
)
POST_PROMPT = "Answer with the option's letter from the given choices directly.\n"
BREAKDOWNS = ("duration_group", "question_category")
_NA = "N/A"


def _options(row: Mapping[str, Any]) -> list[str]:
    if "candidates" in row and "option0" not in row:
        return require_options(row, "candidates", range(2, 6))
    options: list[str] = []
    for i in range(5):
        value = row.get(f"option{i}")
        if value is None or value == _NA:
            # The reference's valid letters stop at the first "N/A"; a real option after it would be misread.
            if any(row.get(f"option{j}") not in (None, _NA) for j in range(i + 1, 5)):
                raise RowError(f"option{i}", "an option follows an 'N/A' option")
            break
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"option{i}", f"expected a non-empty string, got {value!r}")
        options.append(value)
    if len(options) < 2:
        raise RowError("option0", f"expected at least 2 options, got {len(options)}")
    return options


def _row_to_item(row: dict[str, Any], index: int, base: Path) -> Item:
    question = require_str(row, "question")
    options = _options(row)
    choice = require_int(row, "correct_choice")
    if not 0 <= choice < len(options):
        raise RowError("correct_choice", f"expected 0..{len(options) - 1} for {len(options)} options, got {choice}")
    name = require_str(row, "video_path")
    video = find_video(base / "videos", name)
    if video is None:
        raise RowError("video_path", f"video not found: {base / 'videos' / name}")
    sub_name = row.get("subtitle_path")
    sub = base / "subtitles" / sub_name if isinstance(sub_name, str) and sub_name else None
    qid = row.get("id")
    meta = {name: row.get(name) for name in (*BREAKDOWNS, "topic_category", "duration", "level")}
    return Item(
        id=qid if isinstance(qid, str) and qid.strip() else f"{row.get('video_id', 'lvb')}-{index}",
        video=str(video),
        question=question,
        options=options,
        answer=LETTERS[choice],
        doc=row,
        meta=meta,
        subtitle_path=str(sub) if sub is not None and sub.is_file() else None,
    )


def load(root: str | os.PathLike[str]) -> LoadResult:
    """Read the LongVideoBench validation split under `root`.

    Args:
        root: Folder with the layout in the module docstring.

    Returns:
        A `LoadResult` (a `list[Item]` with `.skipped`). `options` stop at the first "N/A"; `meta` holds
        `duration_group, question_category, topic_category, duration, level`.

    Raises:
        BenchmarkLayoutError: If `root` or the annotation file is missing.
    """
    base = require_root(root, "LongVideoBench", LAYOUT)
    path = find_file(base, ANNOTATIONS, "LongVideoBench", LAYOUT)
    items, skipped = collect_items(path, lambda row, i: _row_to_item(row, i, base))
    result = LoadResult(items, skipped, str(base))
    log_skips("LongVideoBench", result)
    return result


def build_prompt(item: Item) -> str:
    """The lmms-eval `longvideobench_val_v` prompt (video only, no interleaved subtitles).

    Args:
        item: A LongVideoBench item.

    Returns:
        `question`, the "A. .." option lines, then "Answer with the option's letter from the given choices
        directly." and a newline.
    """
    options = "\n".join(f"{letter}. {opt}" for letter, opt in zip(LETTERS, item.options))
    return f"{item.question}\n{options}\n{POST_PROMPT}"


def parse_answer(text: str, doc: Mapping[str, Any]) -> str:
    """The letter lmms-eval 0.7.3 extracts for LongVideoBench: reasoning strip, prefixes out, first capital A-E.

    Args:
        text: Raw model output.
        doc: The raw row (unused: even a 4-option question can yield "E").

    Returns:
        "A".."E", or `""` where the reference guesses (the scorer draws the seeded guess).
    """
    return first_capital_letter(strip_reasoning(text), "ABCDE")


def aggregate(records: Iterable[Mapping[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """LongVideoBench's `lvb_acc` (fraction, 5 decimals) and its duration-group / category breakdowns.

    Args:
        records: From `aggregate.make_record`, in row order (the guesses depend on it).
        seed: Seed of the guess for unparsed outputs (0 reproduces the reference).

    Returns:
        The `aggregate.summary` dict: `score` = `lvb_acc`; `by["duration_group"]`, `by["question_category"]`
        (fractions rounded to 5 decimals).
    """
    scored = score_records(records, guess=True, seed=seed)
    evaluated = [r for r in scored if r["correct"] is not None]
    by = {name: {k: round(c / n, 5) for k, (c, n) in group_counts(evaluated, name).items()} for name in BREAKDOWNS}
    # The reference's overall: sum(acc * n) / sum(n) over both subset families (each item counted twice),
    # replicated so the last bit matches before rounding.
    # Keyed by the bare value, as upstream (a group 600 and a category "600" would share a subset there too).
    subsets: dict[Any, list[bool]] = {}
    for r in evaluated:
        for name in BREAKDOWNS:
            subsets.setdefault(field_value(r, name), []).append(r["correct"])
    total = sum(len(v) for v in subsets.values())
    overall = sum(sum(v) / len(v) * len(v) for v in subsets.values()) / total if total else 0
    return summary("longvideobench", "lvb_acc", round(overall, 5), "fraction", scored, by)
