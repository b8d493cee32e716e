"""Video-MME (lmms-lab/Video-MME): load the release, prompt, parse and score exactly as lmms-eval 0.7.3 does.

Release layout read by `load(root)`::

    <root>/videomme/test-00000-of-00001.parquet   # 2,700 rows; `options` is list<string> "A. ..".."D. .."
    <root>/data/<videoID>.mp4                      # .MP4 and .mkv are accepted too, in that order
    <root>/subtitle/<videoID>.srt                  # optional, per video

Scoring: `extract_mcq_answer` (A-D) after the reasoning strip; an empty prediction is wrong (lmms-eval counts
it in the denominator; the official script would drop it, reported as `score_excluding_unparsed`). The
headline `videomme_perception_score` is 100 * correct / answered over all rows.

Deliberate differences from the reference, none of which changes a score:

* a row without its video is skipped and reported (the reference calls `sys.exit`);
* `aggregate` accepts domains and task types outside the release's fixed lists (the reference's fixed key
  table raises `KeyError`, e.g. on the synthetic needle split);
* with subtitles, cues are kept in time order (the reference's `list(set(...))` scrambles them) and a cue
  without the `<font ...>` wrapper keeps its raw text (the reference drops it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpft.benchmarks.aggregate import group_counts, rates, score_records, summary
from hpft.benchmarks.common import (
    Item,
    LoadResult,
    RowError,
    collect_items,
    find_file,
    find_video,
    log_skips,
    require_options,
    require_root,
    require_str,
    strip_letter_prefix,
)
from hpft.benchmarks.parsing import extract_mcq_answer, strip_reasoning

__all__ = [
    "ANNOTATION",
    "LAYOUT",
    "aggregate",
    "build_prompt",
    "load",
    "parse_answer",
    "parse_srt",
    "select_subtitles",
]

ANNOTATION = "videomme/test-00000-of-00001.parquet"
LAYOUT = (
    "  <root>/videomme/test-00000-of-00001.parquet\n"
    "  <root>/data/<videoID>.mp4   (or .MP4 / .mkv)\n"
    "  <root>/subtitle/<videoID>.srt   (optional)"
)
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv")
LETTERS = "ABCD"
BREAKDOWNS = ("duration", "domain", "sub_category", "task_type")

# lmms-eval says "and the subtitles" even without subtitles: upstream wording, kept for comparability.
OPTION_PROMPT = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SUBTITLE_PROMPT = "This video's subtitles are listed below: \n"
SUBTITLE_POST_PROMPT = "The best answer is:"
NO_SUBTITLES = "No subtitles available"
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')


def _row_to_item(row: dict[str, Any], index: int, root: Path) -> Item:
    video_id = require_str(row, "videoID")
    question = require_str(row, "question")
    options = require_options(row, "options", (4,))
    answer = require_str(row, "answer").strip()
    if answer not in LETTERS:
        raise RowError("answer", f"expected one of {', '.join(LETTERS)}, got {row['answer']!r}")
    video = find_video(root / "data", video_id, VIDEO_SUFFIXES)
    if video is None:
        raise RowError("videoID", f"video not found: {root / 'data' / video_id}{{{','.join(VIDEO_SUFFIXES)}}}")
    srt = root / "subtitle" / f"{video_id}.srt"
    qid = row.get("question_id")
    meta = {name: row.get(name) for name in BREAKDOWNS}
    meta.update(question_id=qid, videoID=video_id)
    return Item(
        id=qid if isinstance(qid, str) and qid.strip() else f"{video_id}-{index}",
        video=str(video),
        question=question,
        options=[strip_letter_prefix(opt, letter) for opt, letter in zip(options, LETTERS, strict=True)],
        answer=answer,
        doc=row,
        meta=meta,
        subtitle_path=str(srt) if srt.is_file() else None,
    )


def load(root: str | os.PathLike[str]) -> LoadResult:
    """Read the Video-MME release under `root`.

    Args:
        root: Folder with the layout in the module docstring.

    Returns:
        A `LoadResult`: the items (a `list[Item]`) with `.skipped` listing rows that were left out (missing or
        malformed field, answer outside A-D, missing video). `meta` holds `duration, domain, sub_category,
        task_type, question_id, videoID`.

    Raises:
        BenchmarkLayoutError: If `root` or the parquet file is missing.
    """
    base = require_root(root, "Video-MME", LAYOUT)
    path = find_file(base, (ANNOTATION, "videomme/test-*.parquet"), "Video-MME", LAYOUT)
    items, skipped = collect_items(path, lambda row, i: _row_to_item(row, i, base))
    result = LoadResult(items, skipped, str(base))
    log_skips("Video-MME", result)
    return result


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """Parse an SRT file's text into `(start_s, end_s, text)` cues, as lmms-eval reads Video-MME subtitles.

    Blocks are separated by blank lines; line 2 is `HH:MM:SS,mmm --> HH:MM:SS,mmm`, lines 3+ the text (joined
    by spaces). The text inside the first `<font color="white" size=".72c">...</font>` is kept, or the raw text
    when that wrapper is absent. Blocks with the same time span keep the last text (the reference keys a dict
    by span). Malformed blocks are ignored.

    Args:
        text: The file's contents.

    Returns:
        Cues sorted by start time.
    """

    def seconds(stamp: str) -> float:
        h, m, s_ms = stamp.strip().split(":")
        s, ms = s_ms.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    cues: dict[tuple[float, float], str] = {}
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) < 3 or " --> " not in lines[1]:
            continue
        try:
            start, end = (seconds(t) for t in lines[1].split(" --> ", 1))
        except ValueError:
            continue
        raw = " ".join(lines[2:])
        m = _FONT.search(raw)
        cues[(start, end)] = m.group(1) if m else raw.strip()
    return sorted((s, e, t) for (s, e), t in cues.items())


def select_subtitles(
    cues: Iterable[tuple[float, float, str]], fps: float, total_frames: int, frame_num: int = 32
) -> str:
    """The subtitle text lmms-eval's `videomme_w_subtitle` puts in the prompt: cues covering a sampled frame.

    Frames are `np.linspace(0, total_frames - 1, frame_num, dtype=int)` (`frame_num=-1`: every frame); a cue
    `[start, end)` in seconds covers frame `f` when `int(start * fps) <= f < int(end * fps)`.

    Args:
        cues: From `parse_srt`.
        fps: The video's frame rate.
        total_frames: The video's frame count.
        frame_num: Frames sampled (the reference's default is 32; llava_vid uses 768).

    Returns:
        The covering cues' texts, in time order, joined by newlines.
    """
    if frame_num == -1:
        frame_num = total_frames
    frames = np.linspace(0, total_frames - 1, frame_num, dtype=int)
    kept = []
    for start, end, text in cues:
        lo, hi = int(start * fps), int(end * fps)
        if np.any((frames >= lo) & (frames < hi)):
            kept.append(text)
    return "\n".join(kept)


def build_prompt(
    item: Item,
    subtitles: bool = False,
    *,
    fps: float | None = None,
    total_frames: int | None = None,
    frame_num: int = 32,
) -> str:
    """The lmms-eval prompt: task `videomme` (default) or `videomme_w_subtitle` (`subtitles=True`).

    Args:
        item: A Video-MME item.
        subtitles: Add the subtitle block and end with "The best answer is:".
        fps: The video's frame rate; with `total_frames`, keep only cues covering the `frame_num` sampled frames
            (the reference's behaviour). Without them every cue is used (its "full subtitle" mode).
        total_frames: The video's frame count.
        frame_num: Frames sampled for the subtitle selection.

    Returns:
        The prompt text (options as stored in the release, "A. ..." lines).
    """
    options = "\n".join(str(o) for o in item.doc.get("options") or (f"{L}. {o}" for L, o in zip(LETTERS, item.options)))
    body = f"{OPTION_PROMPT}\n{item.question}\n{options}\n"
    if not subtitles:
        return body + POST_PROMPT
    if item.subtitle_path is None:
        text = NO_SUBTITLES
    else:
        cues = parse_srt(Path(item.subtitle_path).read_text(encoding="utf-8", errors="replace"))
        if fps is not None and total_frames is not None:
            text = select_subtitles(cues, fps, total_frames, frame_num)
        else:
            text = "\n".join(t for _, _, t in cues)
    return f"{SUBTITLE_PROMPT}{text}\n{body}{SUBTITLE_POST_PROMPT}"


def parse_answer(text: str, doc: Mapping[str, Any]) -> str:
    """The letter lmms-eval 0.7.3 extracts for Video-MME: reasoning strip, then `extract_mcq_answer` over A-D.

    Args:
        text: Raw model output.
        doc: The raw row (unused: the parser does not look at the options).

    Returns:
        "A".."D", or `""` (counted wrong).
    """
    return extract_mcq_answer(strip_reasoning(text), LETTERS)


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Video-MME's `videomme_perception_score` and its breakdowns, in percent.

    Args:
        records: From `aggregate.make_record`, in row order.

    Returns:
        The `aggregate.summary` dict: `score` = 100 * correct / evaluated; `by` = `duration`, `domain`,
        `sub_category`, `task_type` (percent); plus `score_excluding_unparsed` (the official script's
        convention: empty predictions left out of the denominator).
    """
    scored = score_records(records, guess=False)
    evaluated = [r for r in scored if r["correct"] is not None]
    n_correct = sum(r["correct"] for r in evaluated)
    answered = sum(r["parsed"] for r in evaluated)
    by = {name: rates(group_counts(evaluated, name), 100) for name in BREAKDOWNS}
    return summary(
        "videomme",
        "videomme_perception_score",
        100 * n_correct / len(evaluated) if evaluated else 0,
        "percent",
        scored,
        by,
        score_excluding_unparsed=100 * n_correct / answered if answered else 0,
    )
