"""MLVU dev, multiple choice: load either release, prompt, parse and score as lmms-eval 0.7.3 (`mlvu_dev`) does.

Layouts read by `load(root)` (the first that exists wins)::

    lmms-eval copy (HF sy1998/MLVU_dev), 2,174 rows:
      <root>/mlvu/test-00000-of-00001.parquet   # question embeds "(A) .." lines; answer is a letter
      <root>/<video_name>                        # videos extracted flat (also accepted: <root>/video/<video_name>)
    original release (HF MLVU/MVLU):
      <root>/json/<n>_<task>.json                # 1_plotQA .. 7_topic_reasoning; answer is the option *text*
      <root>/video/<n>_<task>/<video>

Original-format rows are normalised to the lmms-eval form: the task type is the file's task name
(`2_needle.json` -> `needle`), the answer text becomes its letter, and the prompt appends "(A) .." lines
because those questions do not embed them. The generation tasks (8_sub_scene, 9_summary) are not read.

Scoring: `extract_mcq_answer` over A-D after the reasoning strip; accuracy per task type (percent) and the
headline `mlvu_percetion_score` (sic), the mean over the **seven fixed dev task types, an absent type counting
0** (so 5 correct `count` items score 100/7). That is what the reference does; `m_avg_present` is the mean
over the types actually present, for partial runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hpft.benchmarks.aggregate import group_counts, rates, score_records, summary
from hpft.benchmarks.common import (
    LETTERS,
    BenchmarkLayoutError,
    Item,
    LoadResult,
    RowError,
    Skip,
    collect_items,
    find_video,
    log_skips,
    require_options,
    require_root,
    require_str,
)
from hpft.benchmarks.parsing import extract_mcq_answer, strip_reasoning

__all__ = ["ANNOTATION", "LAYOUT", "TASK_TYPES", "aggregate", "build_prompt", "load", "parse_answer"]

ANNOTATION = "mlvu/test-00000-of-00001.parquet"
LAYOUT = (
    "  <root>/mlvu/test-00000-of-00001.parquet and <root>/<video_name>   (lmms-eval copy, sy1998/MLVU_dev)\n"
    "  or <root>/json/<n>_<task>.json and <root>/video/<n>_<task>/<video>   (original MLVU release)"
)
# The reference's dev task types: its headline divides by all seven.
TASK_TYPES = ("plotQA", "needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")
PARSE_LETTERS = "ABCD"  # the reference parses A-D only
POST_PROMPT = "\nOnly give the best option.\nBest option: ("  # the trailing "(" is a deliberate answer prefill
_JSON_TASK = re.compile(r"(\d+)_(\w+)\.json")
_EMBEDDED = re.compile(r"\n\s*\(A\)")


def _answer_letter(row: Mapping[str, Any], candidates: list[str]) -> str:
    answer = row.get("answer")
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip() in LETTERS[: len(candidates)]:
        return answer.strip()
    if isinstance(answer, str) and answer in candidates:
        # Original-format rows store the option text; its letter is its index.
        return LETTERS[candidates.index(answer)]
    raise RowError("answer", f"expected a letter A-{LETTERS[len(candidates) - 1]} or an option text, got {answer!r}")


def _to_item(row: dict[str, Any], index: int, video_key: str, task_type: str, video: Path | None, tried: str) -> Item:
    question = require_str(row, "question")
    candidates = require_options(row, "candidates", range(2, 7))
    answer = _answer_letter(row, candidates)
    name = require_str(row, video_key)
    if video is None:
        raise RowError(video_key, f"video not found: {name} (tried {tried})")
    qid = row.get("question_id")
    return Item(
        id=qid if isinstance(qid, str) and qid.strip() else f"{task_type}-{index}",
        video=str(video),
        question=_EMBEDDED.split(question, maxsplit=1)[0].strip(),
        options=[c.strip() for c in candidates],
        answer=answer,
        doc=row,
        meta={"task_type": task_type, "duration": row.get("duration"), "question_id": qid},
    )


def _load_parquet(base: Path, path: Path) -> tuple[list[Item], list[Skip]]:
    def to_item(row: dict, i: int) -> Item:
        name = require_str(row, "video_name")
        task_type = require_str(row, "task_type")
        video = find_video(base, name) or find_video(base / "video", name)
        return _to_item(row, i, "video_name", task_type, video, f"{base / name}, {base / 'video' / name}")

    return collect_items(path, to_item)


def _load_json(base: Path, files: list[Path]) -> tuple[list[Item], list[Skip]]:
    items, skipped = [], []
    for path in files:
        task_type = _JSON_TASK.fullmatch(path.name).group(2)
        folder = base / "video" / path.stem

        def to_item(row: dict, i: int, task_type: str = task_type, folder: Path = folder) -> Item:
            name = require_str(row, "video")
            return _to_item(row, i, "video", task_type, find_video(folder, name), str(folder / name))

        found, bad = collect_items(path, to_item)
        items += found
        skipped += bad
    return items, skipped


def load(root: str | os.PathLike[str]) -> LoadResult:
    """Read MLVU dev (multiple choice) under `root`, from the lmms-eval parquet or the original JSON files.

    Args:
        root: Folder with one of the layouts in the module docstring.

    Returns:
        A `LoadResult` (a `list[Item]` with `.skipped`). `meta` holds `task_type, duration, question_id`.

    Raises:
        BenchmarkLayoutError: If `root` is missing or holds neither layout.
    """
    base = require_root(root, "MLVU", LAYOUT)
    parquet = base / ANNOTATION
    json_files = sorted(
        (p for p in (base / "json").glob("*.json") if _JSON_TASK.fullmatch(p.name)),
        key=lambda p: int(_JSON_TASK.fullmatch(p.name).group(1)),
    )
    json_files = [p for p in json_files if _JSON_TASK.fullmatch(p.name).group(2) in TASK_TYPES]
    if parquet.is_file():
        items, skipped = _load_parquet(base, parquet)
    elif json_files:
        items, skipped = _load_json(base, json_files)
    else:
        raise BenchmarkLayoutError(
            f"MLVU annotation file not found under {base} (tried {parquet} and {base / 'json'}/<n>_<task>.json "
            f"for {', '.join(TASK_TYPES)}). Expected:\n{LAYOUT}"
        )
    result = LoadResult(items, skipped, str(base))
    log_skips("MLVU", result)
    return result


def build_prompt(item: Item) -> str:
    """The lmms-eval `mlvu_dev` prompt: the question with its "(A) .." lines, then the "Best option: (" prefill.

    Args:
        item: An MLVU item.

    Returns:
        The prompt text.
    """
    question = str(item.doc.get("question", item.question))
    if not _EMBEDDED.search(question):
        question += "".join(f"\n({letter}) {opt}" for letter, opt in zip(LETTERS, item.options))
    return question + POST_PROMPT


def parse_answer(text: str, doc: Mapping[str, Any]) -> str:
    """The letter lmms-eval 0.7.3 extracts for MLVU: reasoning strip, then `extract_mcq_answer` over A-D.

    Args:
        text: Raw model output (after the "Best option: (" prefill, e.g. "B) Red").
        doc: The raw row (unused).

    Returns:
        "A".."D", or `""` (counted wrong).
    """
    return extract_mcq_answer(strip_reasoning(text), PARSE_LETTERS)


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """MLVU dev's `mlvu_percetion_score` (percent) and per-task-type accuracy.

    Args:
        records: From `aggregate.make_record`, in row order.

    Returns:
        The `aggregate.summary` dict: `score` = sum of the seven dev task types' accuracies / 7 (absent types
        count 0; summed in `TASK_TYPES` order, where the reference's set order can move the last bit);
        `by["task_type"]` for the types present; `m_avg_present` (mean over present types),
        `task_types_present`, and `unknown_task_types` (present but not dev types: excluded from `score`).
    """
    scored = score_records(records, guess=False)
    per_type = rates(group_counts(scored, "task_type"), 100)
    score = sum(per_type.get(t, 0.0) for t in TASK_TYPES) / len(TASK_TYPES)
    return summary(
        "mlvu",
        "mlvu_percetion_score",
        score,
        "percent",
        scored,
        {"task_type": per_type},
        m_avg_present=sum(per_type.values()) / len(per_type) if per_type else 0.0,
        task_types_present=sorted(per_type),
        unknown_task_types=sorted(t for t in per_type if t not in TASK_TYPES),
    )
