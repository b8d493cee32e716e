"""The synthetic needle benchmark: Video-MME rules plus a V-NIAH grid (needle depth x video length -> accuracy).

`hpft.data.synthetic` writes every non-train split in the Video-MME release layout, so this module reads it with
`videomme.load` and scores it with Video-MME's prompt, parser and percent accuracy; what it adds comes from the
generator's own question records (`<split>.jsonl`): the question kind, where the needle sits and how long the
video is. Layout read by `load(root)` (one split folder)::

    <root>/videomme/test-00000-of-00001.parquet
    <root>/data/<videoID>.mp4            # relative links to videos/
    <root>/<split>.jsonl                 # one record per question: id, video_id, question, kind, needle, num_frames

`niah_grid` turns scored records into the V-NIAH table of LongVA's `eval_vision_niah.py`: rows are needle depths
(the needle's first frame as a percent of the video, binned to `depth_step`), columns frame counts, cells the
mean correctness. `save_niah_heatmap` writes it as `<name>.png` (red-yellow-green, 0-1, like LongVA's plot) and
`<name>.json` (the table plus LongVA's `{"Num. Frame", "Frame Depth", "Score"}` cell list).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpft.benchmarks import videomme
from hpft.benchmarks.aggregate import field_value, group_counts, rates, score_records, summary
from hpft.benchmarks.common import (
    BenchmarkLayoutError,
    Item,
    LoadResult,
    Skip,
    log_skips,
    read_rows,
    require_root,
)

__all__ = [
    "LAYOUT",
    "aggregate",
    "build_prompt",
    "depth_bin",
    "load",
    "niah_grid",
    "parse_answer",
    "save_niah_heatmap",
]

LAYOUT = (
    "  <root>/videomme/test-00000-of-00001.parquet\n"
    "  <root>/data/<videoID>.mp4\n"
    "  <root>/<split>.jsonl   (written by `python -m hpft.data.synthetic --split <split>`)"
)
BREAKDOWNS = ("kind", "num_frames", "depth_percent", "quarter", "duration", "task_type")
# LongVA's V-NIAH colours: red -> yellow -> green.
NIAH_COLOURS = ("#F0496E", "#EBB839", "#9ad5b3")


def _find_jsonl(base: Path) -> Path:
    found = sorted(p for p in base.glob("*.jsonl") if not p.name.endswith(".videos.jsonl"))
    if len(found) == 1:
        return found[0]
    what = "no question file" if not found else f"{len(found)} question files ({', '.join(p.name for p in found)})"
    raise BenchmarkLayoutError(
        f"needle split {base}: expected exactly one <split>.jsonl, found {what}. Expected:\n{LAYOUT}"
    )


def depth_bin(depth: float, step: int = 10) -> int:
    """Bin a needle depth (fraction of the video) to the nearest multiple of `step` percent (halves round up).

    LongVA labels its rows with `round(depth * 100, -1)`; our synthetic needles sit at arbitrary depths, so they
    are binned the same way (without Python's round-half-to-even).

    Args:
        depth: Needle start frame / frame count, in [0, 1].
        step: Bin width in percent.

    Returns:
        The depth in percent, a multiple of `step`.
    """
    return int(math.floor(depth * 100 / step + 0.5)) * step


def load(root: str | os.PathLike[str], *, depth_step: int = 10) -> LoadResult:
    """Read a synthetic needle split: the Video-MME items, joined with the generator's records.

    Args:
        root: A split folder written by `hpft.data.synthetic.generate` (non-train splits).
        depth_step: Bin width (percent) for `meta["depth_percent"]`.

    Returns:
        A `LoadResult` (a `list[Item]` with `.skipped`). Items keep the Video-MME `meta` and add `kind`,
        `depth` (needle start frame / frame count), `depth_percent` (binned), `num_frames`, `quarter`,
        `needle_frames` ([start, end)); `id` is the generator's question id.

    Raises:
        BenchmarkLayoutError: If `root`, its Video-MME parquet or its `<split>.jsonl` is missing.
    """
    base = require_root(root, "needle", LAYOUT)
    jsonl = _find_jsonl(base)
    loaded = videomme.load(base)
    records: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for i, rec in enumerate(read_rows(jsonl)):
        if isinstance(rec, dict):
            records.setdefault((str(rec.get("video_id")), str(rec.get("question"))), []).append((i, rec))
    items: list[Item] = []
    skipped: list[Skip] = list(loaded.skipped)
    for item in loaded:
        queue = records.get((item.meta["videoID"], item.question))
        if not queue:
            skipped.append(Skip(str(jsonl), None, "question", f"item {item.id}: no record for this video and question"))
            continue
        row, rec = queue.pop(0)
        try:
            start, end = (int(f) for f in rec["needle"]["frames"])
            num_frames = int(rec["num_frames"])
            if num_frames < 1 or not 0 <= start < end <= num_frames:
                raise ValueError(f"needle frames [{start}, {end}) do not fit {num_frames} frames")
            if rec.get("answer_letter") != item.answer:
                raise ValueError(f"answer_letter {rec.get('answer_letter')!r} != parquet answer {item.answer!r}")
            kind = str(rec["kind"])
        except (KeyError, TypeError, ValueError) as exc:
            skipped.append(Skip(str(jsonl), row, "needle", f"malformed record: {exc!r}"))
            continue
        depth = start / num_frames
        meta = {
            **item.meta,
            "kind": kind,
            "depth": depth,
            "depth_percent": depth_bin(depth, depth_step),
            "num_frames": num_frames,
            "quarter": rec["needle"].get("quarter"),
            "needle_frames": [start, end],
        }
        items.append(dataclasses.replace(item, id=str(rec.get("id", item.id)), meta=meta))
    result = LoadResult(items, skipped, str(base))
    log_skips("needle", result)
    return result


def build_prompt(item: Item) -> str:
    """Video-MME's prompt (no subtitles): the needle split is evaluated as Video-MME.

    Args:
        item: A needle item.

    Returns:
        The prompt text.
    """
    return videomme.build_prompt(item)


def parse_answer(text: str, doc: Mapping[str, Any]) -> str:
    """Video-MME's parser (lmms-eval 0.7.3 `extract_mcq_answer` over A-D after the reasoning strip).

    Args:
        text: Raw model output.
        doc: The raw Video-MME row (unused).

    Returns:
        "A".."D", or `""` (counted wrong).
    """
    return videomme.parse_answer(text, doc)


def niah_grid(records: Iterable[Mapping[str, Any]], depth_step: int = 10) -> dict[str, Any]:
    """The V-NIAH table: accuracy per (needle depth bin, frame count) cell (pure).

    Args:
        records: Scored records (`correct` set by `score_records`) or raw ones (`pred == answer` is used);
            each needs `depth` (fraction) and `num_frames` in its `meta`. Not-evaluated records are ignored.
        depth_step: Depth bin width in percent.

    Returns:
        `{"depth_step", "depths": [percent, ...], "lengths": [num_frames, ...], "accuracy": rows x cols of
        float in [0, 1] or None for an empty cell, "counts": rows x cols of int, "average": mean over filled
        cells (LongVA's "Average Accuracy"), "cells": [{"Num. Frame", "Frame Depth", "Score"}, ...]}`, rows
        sorted by depth, columns by length.
    """
    cells: dict[tuple[int, int], list[bool]] = {}
    for rec in records:
        if "correct" in rec:
            correct = rec["correct"]
        else:
            correct = None if rec.get("pred") is None else rec["pred"] == rec["answer"]
        if correct is None:
            continue
        depth, length = field_value(rec, "depth"), field_value(rec, "num_frames")
        if depth is None or length is None:
            raise ValueError(f"record {rec.get('id')!r} lacks meta 'depth' or 'num_frames' (load it with needle.load)")
        cells.setdefault((depth_bin(float(depth), depth_step), int(length)), []).append(bool(correct))
    depths = sorted({d for d, _ in cells})
    lengths = sorted({n for _, n in cells})
    accuracy = [[sum(cells[d, n]) / len(cells[d, n]) if (d, n) in cells else None for n in lengths] for d in depths]
    counts = [[len(cells.get((d, n), ())) for n in lengths] for d in depths]
    filled = [a for row in accuracy for a in row if a is not None]
    return {
        "depth_step": depth_step,
        "depths": depths,
        "lengths": lengths,
        "accuracy": accuracy,
        "counts": counts,
        "average": sum(filled) / len(filled) if filled else None,
        "cells": [
            {"Num. Frame": n, "Frame Depth": d, "Score": accuracy[i][j]}
            for i, d in enumerate(depths)
            for j, n in enumerate(lengths)
            if accuracy[i][j] is not None
        ],
    }


def _length_label(n: int) -> str:
    # LongVA writes 1,200 frames as "1.2K".
    return f"{n / 1000:.1f}K" if n >= 1000 else str(n)


def save_niah_heatmap(
    table: Mapping[str, Any], out_dir: str | os.PathLike[str], name: str = "niah"
) -> tuple[Path, Path]:
    """Write a `niah_grid` table as a heatmap PNG and as JSON.

    Uses matplotlib's Agg canvas directly, so it neither needs a display nor changes the global backend.

    Args:
        table: From `niah_grid`.
        out_dir: Folder to write into (created).
        name: File stem.

    Returns:
        `(png_path, json_path)`.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / f"{name}.png", out / f"{name}.json"
    js.write_text(json.dumps(dict(table), indent=2) + "\n", encoding="utf-8")

    depths: Sequence[int] = table["depths"]
    lengths: Sequence[int] = table["lengths"]
    grid = np.array([[np.nan if a is None else a for a in row] for row in table["accuracy"]], dtype=float)
    grid = grid.reshape(len(depths), len(lengths))
    fig = Figure(figsize=(max(4.0, 0.9 * len(lengths) + 2.5), max(3.0, 0.45 * len(depths) + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = LinearSegmentedColormap.from_list("vniah", NIAH_COLOURS).with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto", origin="upper")
    fig.colorbar(image, ax=ax).set_label("Score")
    ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths], rotation=45)
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlabel("Num. of Frames")
    ax.set_ylabel("Depth Percent")
    average = table.get("average")
    ax.set_title("V-NIAH" + (f" (average {average:.3f})" if average is not None else ""))
    # White separators between cells, as in LongVA's seaborn plot.
    ax.set_xticks(np.arange(-0.5, len(lengths)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(depths)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return png, js


def aggregate(records: Iterable[Mapping[str, Any]], *, depth_step: int = 10) -> dict[str, Any]:
    """Needle accuracy (percent, Video-MME's convention), its breakdowns and the V-NIAH grid.

    Args:
        records: From `aggregate.make_record` on `needle.load` items, in row order.
        depth_step: Depth bin width (percent) of the grid.

    Returns:
        The `aggregate.summary` dict: `score` = 100 * correct / evaluated; `by` = `kind`, `num_frames`,
        `depth_percent`, `quarter`, `duration`, `task_type` (percent); `niah` = `niah_grid(...)`.
    """
    scored = score_records(records, guess=False)
    evaluated = [r for r in scored if r["correct"] is not None]
    n_correct = sum(r["correct"] for r in evaluated)
    by = {name: rates(group_counts(evaluated, name), 100) for name in BREAKDOWNS}
    return summary(
        "needle",
        "videomme_perception_score",
        100 * n_correct / len(evaluated) if evaluated else 0,
        "percent",
        scored,
        by,
        niah=niah_grid(evaluated, depth_step),
    )
