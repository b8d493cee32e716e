"""Generate the synthetic long-video "needle" data set: seeded H.264 videos of glyphs plus questions about them.

The task is built for what a tiny model can learn (see `reference/tiny-calibration.md`):

* Frames are black, `size` x `size` px (default 64), split into a grid of `cell` px cells (default 16). With
  patch 8, a 2x2 pixel shuffle and a temporal patch of 2, one cell over one 2-frame tubelet is exactly **one
  decoder token**, so every object is drawn to fill one cell and is static inside a tubelet (objects move only
  at even frame boundaries). One token then carries a whole object: its glyph *and* its colour.
* Objects are one of 6 very distinct glyphs (`GLYPHS`) in one of 8 saturated colours (`PALETTE`), drawn on an
  8x8 grid of `cell // 8` px units so strokes are 2-px aligned and survive 4:2:0 chroma subsampling.
* **Needles** (`num_needles`, default 3) are static objects visible for `needle_pairs` tubelets, each inside one
  quarter of the video (distinct quarters while there are at most 4 needles). Each needle's glyph and colour
  belong to no other object in the video, so "what colour is the <glyph>?", "which shape is <colour>?" and
  "in which quarter does the <glyph> appear?" each have exactly one answer.
* **Distractors** keep `num_distractors` cells busy in every frame: random walks (moving with probability
  `move_prob` per tubelet) whose lifetimes are drawn down to the needles' lifetime, so neither motion, onset
  nor duration marks the needles; only the question says which token matters.
* Every wrong option is a value that appears in the video (other needles' values first, then distractors'),
  so knowing which colours are present is worth nothing; `shortcut_accuracy` measures what is left.

Outputs of `generate(out_dir, split, ...)` (one split per folder):

* `videos/<video_id>.mp4` — H.264 (libx264, yuv420p, CRF `crf`; settings chosen so bytes are reproducible).
* `<split>.jsonl` — one question per line (fields documented in `generate`).
* `<split>.videos.jsonl` — one scene per line: every object track with its cell per tubelet (for checks).
* non-train splits also get the Video-MME release layout: `videomme/test-00000-of-00001.parquet` and
  `data/<videoID>.mp4` (relative symlinks to `videos/`), so the Video-MME loader reads them unchanged.

Same arguments and seed give a byte-identical JSONL and identical decoded frames. CLI:
`python -m hpft.data.synthetic --out DIR --split train --num-videos N --frames 32 --seed 0`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "GLYPHS",
    "KINDS",
    "LETTERS",
    "COLOURS",
    "PALETTE",
    "QUARTERS",
    "Scene",
    "SplitFiles",
    "Track",
    "caption",
    "duration_bucket",
    "encode_mp4",
    "ensure_dataset",
    "generate",
    "glyph_mask",
    "make_questions",
    "make_scene",
    "read_jsonl",
    "render",
    "rgb_to_yuv420p",
    "scene_objects",
    "shortcut_accuracy",
]

# Bump when the bytes written for the same arguments change, so `ensure_dataset` caches are rebuilt.
FORMAT_VERSION = 1

LETTERS = ("A", "B", "C", "D")
QUARTERS = ("first", "second", "third", "fourth")
KINDS = ("colour", "shape", "quarter")

# 8x8 unit bitmaps with a 1-unit black margin, so neighbouring objects never touch and each glyph stays inside
# its own token. Chosen to differ in every 8 px patch quadrant, not only as a whole. "cross" is the diagonal X.
_GLYPH_ART = {
    "square": ["........", ".######.", ".######.", ".######.", ".######.", ".######.", ".######.", "........"],
    "ring": ["........", ".######.", ".#....#.", ".#....#.", ".#....#.", ".#....#.", ".######.", "........"],
    "plus": ["........", "...##...", "...##...", ".######.", ".######.", "...##...", "...##...", "........"],
    "cross": ["........", ".##..##.", ".##..##.", "...##...", "...##...", ".##..##.", ".##..##.", "........"],
    "bars": ["........", ".######.", ".######.", "........", "........", ".######.", ".######.", "........"],
    "triangle": ["........", ".#......", ".##.....", ".###....", ".####...", ".#####..", ".######.", "........"],
}
GLYPHS: tuple[str, ...] = tuple(_GLYPH_ART)

# Saturated, far apart in hue and in YUV (so H.264 4:2:0 keeps them apart); each name is one plain word.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 60, 230),
    "yellow": (230, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 220),
    "orange": (245, 140, 20),
    "white": (240, 240, 240),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

_TASK_TYPES = {"colour": "Attribute Perception", "shape": "Object Recognition", "quarter": "Temporal Perception"}
_VIDEOMME_COLUMNS = (
    "video_id", "duration", "domain", "sub_category", "url", "videoID",
    "question_id", "task_type", "question", "options", "answer",
)  # fmt: skip
_COMPLETE = ".complete"


# --------------------------------------------------------------------------------------------------------------
# Pure scene model
# --------------------------------------------------------------------------------------------------------------


def glyph_mask(glyph: str, cell: int = 16) -> np.ndarray:
    """Pixel mask of a glyph filling one cell.

    Args:
        glyph: A name in `GLYPHS`.
        cell: Cell side in px, a multiple of 8 (each bitmap unit becomes `cell // 8` px).

    Returns:
        Boolean mask, shape `(cell, cell)`.
    """
    if glyph not in _GLYPH_ART:
        raise ValueError(f"unknown glyph {glyph!r}; expected one of {GLYPHS}")
    if cell < 8 or cell % 8:
        raise ValueError(f"cell must be a positive multiple of 8, got {cell}")
    art = np.array([[ch == "#" for ch in row] for row in _GLYPH_ART[glyph]], dtype=bool)
    unit = cell // 8
    return np.kron(art, np.ones((unit, unit), dtype=bool)).astype(bool)


@dataclass(frozen=True)
class Track:
    """One object's life: a fixed glyph and colour at one grid cell per tubelet.

    Attributes:
        glyph: Name in `GLYPHS`.
        colour: Name in `PALETTE`.
        role: `"needle"` or `"distractor"`.
        start: First tubelet (frames `2*start, 2*start + 1`).
        cells: `(row, col)` grid cell for each tubelet from `start`; length = lifetime in tubelets.
    """

    glyph: str
    colour: str
    role: str
    start: int
    cells: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        """One past the last tubelet."""
        return self.start + len(self.cells)


@dataclass(frozen=True)
class Scene:
    """Everything needed to render a needle video and ask about it.

    Attributes:
        num_frames: Frame count T (a multiple of 8, so quarters hold whole tubelets).
        size: Frame side in px.
        cell: Grid cell side in px.
        tracks: Needle tracks first (`tracks[:num_needles]`), then distractor tracks in creation order.
        num_needles: How many of `tracks` are needles.
    """

    num_frames: int
    size: int
    cell: int
    tracks: tuple[Track, ...]
    num_needles: int

    @property
    def needles(self) -> tuple[Track, ...]:
        """The needle tracks."""
        return self.tracks[: self.num_needles]


def _check_geometry(num_frames: int, size: int, cell: int) -> None:
    if cell < 8 or cell % 8:
        raise ValueError(f"cell must be a positive multiple of 8 (glyph units are cell // 8 px), got {cell}")
    if size < cell or size % cell:
        raise ValueError(f"size must be a multiple of cell={cell}, got {size}")
    if num_frames < 8 or num_frames % 8:
        raise ValueError(
            f"num_frames must be a multiple of 8 and >= 8 (each quarter must hold whole 2-frame tubelets), "
            f"got {num_frames}"
        )


def make_scene(
    rng: np.random.Generator,
    num_frames: int,
    *,
    size: int = 64,
    cell: int = 16,
    num_needles: int = 3,
    num_distractors: int = 8,
    needle_pairs: int = 2,
    move_prob: float = 0.5,
) -> Scene:
    """Draw a random scene: needle tracks and distractor random walks on the cell grid.

    Pure given `rng` (all randomness comes from it, in a fixed order).

    Args:
        rng: Source of randomness.
        num_frames: T, a multiple of 8.
        size: Frame side in px (a multiple of `cell`).
        cell: Grid cell side in px (a multiple of 8).
        num_needles: Needles, 0..6 (each takes a glyph and a colour no other object uses).
        num_distractors: Distractor objects visible in every tubelet.
        needle_pairs: Needle lifetime in tubelets (2 frames each); clamped to a quarter of the video so a short
            curriculum video (e.g. 8 frames) still works.
        move_prob: Probability that a distractor moves to a neighbouring cell at a tubelet boundary.

    Returns:
        The scene. Within any tubelet no two objects share a cell.
    """
    _check_geometry(num_frames, size, cell)
    grid = size // cell
    num_cells = grid * grid
    if not 0 <= num_needles <= min(len(GLYPHS), len(COLOURS)):
        raise ValueError(f"num_needles must be in [0, {len(GLYPHS)}], got {num_needles}")
    if num_distractors < 0 or num_needles + num_distractors > num_cells:
        raise ValueError(
            f"num_needles + num_distractors must fit the {grid}x{grid} grid ({num_cells} cells), "
            f"got {num_needles} + {num_distractors}"
        )
    if num_distractors and num_needles == len(GLYPHS):
        raise ValueError("with 6 needles every glyph is taken and no distractor can be drawn; use fewer needles")
    if needle_pairs < 1:
        raise ValueError(f"needle_pairs must be >= 1, got {needle_pairs}")
    n_tub = num_frames // 2
    per_quarter = n_tub // 4
    pairs = min(needle_pairs, per_quarter)

    needle_glyphs = [GLYPHS[i] for i in rng.permutation(len(GLYPHS))[:num_needles]]
    needle_colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))[:num_needles]]
    # Distractors never reuse a needle's glyph or colour: that is what makes every question single-answer.
    pool = [(g, c) for g in GLYPHS if g not in needle_glyphs for c in COLOURS if c not in needle_colours]

    quarters = rng.permutation(4)[:num_needles] if num_needles <= 4 else rng.integers(0, 4, num_needles)
    needle_cells = rng.permutation(num_cells)[:num_needles]
    reserved: list[set[tuple[int, int]]] = [set() for _ in range(n_tub)]
    tracks: list[Track] = []
    for glyph, colour, quarter, flat in zip(needle_glyphs, needle_colours, quarters, needle_cells, strict=True):
        start = int(quarter) * per_quarter + int(rng.integers(0, per_quarter - pairs + 1))
        rc = (int(flat) // grid, int(flat) % grid)
        for t in range(start, start + pairs):
            reserved[t].add(rc)
        tracks.append(Track(glyph, colour, "needle", start, (rc,) * pairs))

    # Distractor lifetimes go down to the needles' lifetime, so a short-lived object is not a needle cue.
    life_lo, life_hi = pairs, max(pairs, n_tub // 2)
    slots: list[dict | None] = [None] * num_distractors
    finished: list[dict] = []
    for t in range(n_tub):
        taken = set(reserved[t])
        for s in range(num_distractors):
            cur = slots[s]
            if cur is not None and t - cur["start"] >= cur["life"]:
                finished.append(cur)
                cur = slots[s] = None
            free = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in taken]
            if cur is None:
                glyph, colour = pool[int(rng.integers(len(pool)))]
                life = int(rng.integers(life_lo, life_hi + 1))
                rc = free[int(rng.integers(len(free)))]
                cur = slots[s] = {"glyph": glyph, "colour": colour, "start": t, "life": life, "cells": [rc]}
            else:
                r, c = cur["cells"][-1]
                wants_move = rng.random() < move_prob
                blocked = (r, c) in taken  # a needle appears here, or another distractor walked in
                rc = (r, c)
                if wants_move or blocked:
                    near = [n for n in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)) if n in free]
                    if near:
                        rc = near[int(rng.integers(len(near)))]
                    elif blocked:
                        rc = free[int(rng.integers(len(free)))]
                cur["cells"].append(rc)
            taken.add(cur["cells"][-1])
    finished.extend(s for s in slots if s is not None)
    finished.sort(key=lambda d: d["start"])  # stable: ties keep slot order
    for d in finished:
        cells = tuple(d["cells"][: min(d["life"], n_tub - d["start"])])
        tracks.append(Track(d["glyph"], d["colour"], "distractor", d["start"], cells))
    return Scene(num_frames=num_frames, size=size, cell=cell, tracks=tuple(tracks), num_needles=num_needles)


def render(scene: Scene) -> np.ndarray:
    """Draw a scene.

    Args:
        scene: From `make_scene`.

    Returns:
        Frames, shape `(T, size, size, 3)`, uint8 RGB on black; frames `2t` and `2t+1` are identical.
    """
    frames = np.zeros((scene.num_frames, scene.size, scene.size, 3), dtype=np.uint8)
    masks = {g: glyph_mask(g, scene.cell) for g in GLYPHS}
    k = scene.cell
    for tr in scene.tracks:
        rgb = np.array(PALETTE[tr.colour], dtype=np.uint8)
        for i, (r, c) in enumerate(tr.cells):
            t = tr.start + i
            frames[2 * t : 2 * t + 2, r * k : (r + 1) * k, c * k : (c + 1) * k][:, masks[tr.glyph]] = rgb
    return frames


def scene_objects(scene: Scene) -> list[list]:
    """Every distinct (glyph, colour) object in a scene, in order of first appearance.

    Order: first tubelet, then the cell in raster order, so it can be read off the video.

    Args:
        scene: From `make_scene`.

    Returns:
        `[[glyph, colour, frames_visible], ...]`, one entry per distinct pair (a pair drawn by several tracks
        is merged; `frames_visible` counts its frames).
    """
    first: dict[tuple[str, str], tuple[int, int, int]] = {}
    frames: dict[tuple[str, str], int] = {}
    for tr in scene.tracks:
        key = (tr.glyph, tr.colour)
        r, c = tr.cells[0]
        first[key] = min(first.get(key, (tr.start, r, c)), (tr.start, r, c))
        frames[key] = frames.get(key, 0) + 2 * len(tr.cells)
    return [[g, c, frames[(g, c)]] for (g, c) in sorted(first, key=first.__getitem__)]


def caption(objects: Iterable[Sequence]) -> str:
    """Dense caption target: every object of a video as "<glyph> <colour>", comma separated.

    A pure function of the object list (`scene_objects` or a record's `objects`), used as dense supervision so
    each visual token learns to carry both its glyph and its colour before questions are asked.

    Args:
        objects: `[glyph, colour, ...]` entries; extra fields are ignored.

    Returns:
        E.g. `"ring red, square blue, plus cyan"`.
    """
    return ", ".join(f"{o[0]} {o[1]}" for o in objects)


def needle_quarter(track: Track, num_frames: int) -> int:
    """The quarter (0-3) of a `num_frames` video in which `track` first appears."""
    return (2 * track.start) * 4 // num_frames


def quarter_question(glyph: str) -> str:
    """The "which quarter" question about the object drawn as `glyph` (answers are `QUARTERS`)."""
    return f"In which quarter of the video does the {glyph} appear?"


def _check_kinds(kinds: Sequence[str]) -> None:
    if isinstance(kinds, str) or not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty sequence drawn from {KINDS}, got {kinds!r}")


def make_questions(
    scene: Scene,
    rng: np.random.Generator,
    letters: Sequence[str],
    kinds: Sequence[str] = KINDS,
    num_questions: int | None = None,
) -> list[dict]:
    """Ask one question per needle (about `num_questions` needles, in needle order), answer at the given letter.

    Wrong options are values present in the video: the other needles' values first (they are as rare and
    short-lived as the answer, which defeats "pick the rare colour" shortcuts), then distractors' values, and only
    when the video holds too few distinct values, absent ones.

    Args:
        scene: From `make_scene`.
        rng: Source of randomness (kinds and option order).
        letters: Answer letter for each question, length >= number of questions.
        kinds: Question kinds to draw from (subset of `KINDS`).
        num_questions: Ask about a random subset of this many needles; `None` asks about every needle. Needles
            nobody asks about still serve as wrong options, which keeps "pick the rarest value" near chance.

    Returns:
        One dict per question with keys `question, options (4 plain texts in A-D order), answer, answer_letter,
        kind, needle`.
    """
    _check_kinds(kinds)
    n = scene.num_needles
    q = n if num_questions is None else num_questions
    if not 1 <= q <= n:
        raise ValueError(f"num_questions must be in [1, num_needles={n}], got {num_questions}")
    if len(letters) < q or any(x not in LETTERS for x in letters):
        raise ValueError(f"need {q} answer letters from {LETTERS}, got {list(letters)}")
    asked = sorted(int(i) for i in rng.permutation(n)[:q])
    out = []
    for letter, j in zip(letters, asked, strict=False):
        needle = scene.needles[j]
        kind = kinds[int(rng.integers(len(kinds)))]
        quarter = needle_quarter(needle, scene.num_frames)
        others = [n for i, n in enumerate(scene.needles) if i != j]
        distractors = scene.tracks[scene.num_needles :]
        if kind == "colour":
            question, answer = f"What colour is the {needle.glyph}?", needle.colour
            tiers = [[n.colour for n in others], [d.colour for d in distractors], list(COLOURS)]
        elif kind == "shape":
            question, answer = f"Which shape is {needle.colour}?", needle.glyph
            tiers = [[n.glyph for n in others], [d.glyph for d in distractors], list(GLYPHS)]
        else:
            question, answer = quarter_question(needle.glyph), QUARTERS[quarter]
            tiers = [list(QUARTERS)]
        wrong: list[str] = []
        for tier in tiers:
            cand = sorted(set(tier) - {answer} - set(wrong), key=tier.index)  # dedupe, order-stable
            wrong.extend(cand[i] for i in rng.permutation(len(cand)))
        options = wrong[:3]
        options.insert(LETTERS.index(letter), answer)
        out.append(
            {
                "question": question,
                "options": options,
                "answer": answer,
                "answer_letter": letter,
                "kind": kind,
                "needle": {
                    "glyph": needle.glyph,
                    "colour": needle.colour,
                    "cell": list(needle.cells[0]),
                    "frames": [2 * needle.start, 2 * needle.end],
                    "quarter": QUARTERS[quarter],
                },
            }
        )
    return out


def duration_bucket(num_frames: int) -> str:
    """Video-MME `duration` class for a synthetic video: by frame count, since that is what costs tokens.

    Args:
        num_frames: T.

    Returns:
        `"short"` for T <= 64, `"medium"` for T <= 128, `"long"` above.
    """
    return "short" if num_frames <= 64 else "medium" if num_frames <= 128 else "long"


def shortcut_accuracy(
    records: Iterable[dict], seed: int = 0, strategy: str = "present", expected: bool = False
) -> float:
    """Accuracy of a question-blind guesser, the floor every needle accuracy must be read against.

    Strategies (both ignore the question; ties are broken uniformly at random with a seeded generator):

    * `"present"`: pick an option whose value appears anywhere in the video (record `objects`); quarters
      always "appear". Falls back to all 4 options when none appears.
    * `"rarest"`: pick the present option whose value is visible in the fewest frames (needles are short-lived,
      so this is the natural saliency shortcut); quarter questions fall back to `"present"`.

    Args:
        records: Question records as written by `generate` (need `kind, options, answer_letter, objects`).
        seed: Seed of the tie-break generator.
        strategy: `"present"` or `"rarest"`.
        expected: Return the exact expectation over tie-breaks instead of one seeded draw.

    Returns:
        Accuracy in [0, 1] (0.0 for no records).
    """
    if strategy not in ("present", "rarest"):
        raise ValueError(f"strategy must be 'present' or 'rarest', got {strategy!r}")
    rng = np.random.default_rng(seed)
    scores = []
    for rec in records:
        frames: dict[str, int] = {}
        for o in rec["objects"]:
            idx = 0 if rec["kind"] == "shape" else 1
            frames[o[idx]] = frames.get(o[idx], 0) + (o[2] if len(o) > 2 else 1)
        if rec["kind"] == "quarter":
            cand = list(range(4))
        else:
            cand = [i for i, v in enumerate(rec["options"]) if v in frames] or list(range(4))
            if strategy == "rarest" and any(v in frames for v in rec["options"]):
                low = min(frames[rec["options"][i]] for i in cand)
                cand = [i for i in cand if frames[rec["options"][i]] == low]
        right = LETTERS.index(rec["answer_letter"])
        if expected:
            scores.append((right in cand) / len(cand))
        else:
            scores.append(float(cand[int(rng.integers(len(cand)))] == right))
    return float(np.mean(scores)) if scores else 0.0


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """Convert RGB frames to planar YUV 4:2:0 (BT.601 limited range, what decoders assume when untagged).

    Chroma is the mean of each aligned 2x2 block, so a colour region on even coordinates (every glyph stroke
    here) keeps its exact chroma, unlike a wider resampling filter that bleeds black into 2-px strokes.

    Args:
        frames: Shape `(..., H, W, 3)`, uint8 RGB, H and W even (one frame or a whole video).

    Returns:
        Shape `(..., H * 3 // 2, W)`, uint8: the Y plane, then the U and V planes (each `(H/2, W/2)`) packed
        row-wise, the layout `av.VideoFrame.from_ndarray(..., format="yuv420p")` expects.
    """
    *lead, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frame sides must be even for 4:2:0, got {h}x{w}")
    rgb = frames.astype(np.float64)
    y = 16.0 + rgb @ np.array([65.481, 128.553, 24.966]) / 255.0
    block = rgb.reshape(*lead, h // 2, 2, w // 2, 2, 3).mean(axis=(-4, -2))
    u = 128.0 + block @ np.array([-37.797, -74.203, 112.0]) / 255.0
    v = 128.0 + block @ np.array([112.0, -93.786, -18.214]) / 255.0
    y, u, v = (np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, u, v))
    return np.concatenate([y, u.reshape(*lead, h // 4, w), v.reshape(*lead, h // 4, w)], axis=-2)


def encode_mp4(frames: np.ndarray, path: str | os.PathLike[str], fps: int = 8, crf: int = 10) -> None:
    """Write frames as an H.264 mp4 with PyAV.

    The bytes depend only on the frames and settings. Measured here (x264 core 165): with x264's default
    macroblock-tree rate control, re-encoding the same frames in one process gave a different bitstream (and
    different decoded pixels) about one time in ten, so MB-tree is off (`mbtree=0`; 25 repeats x 11 videos were
    then identical); libx264 runs single-threaded (threaded x264 splits frames per thread count); and frames are
    converted to YUV here (`rgb_to_yuv420p`), not by PyAV's implicit converter.

    Args:
        frames: Shape `(T, H, W, 3)`, uint8 RGB, H and W even.
        path: Output file (`.mp4`).
        fps: Frame rate written into the stream.
        crf: x264 constant rate factor; small (default 10) so flat saturated colours survive.
    """
    import av  # lazy: only writers need the encoder

    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
        for plane in rgb_to_yuv420p(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(plane, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict]:
    """Read a JSONL file (one JSON object per non-empty line).

    Args:
        path: File to read.

    Returns:
        The objects in file order.
    """
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class SplitFiles:
    """What `generate` wrote.

    Attributes:
        root: The split folder.
        jsonl: Question records, `<root>/<split>.jsonl`.
        scenes: Scene descriptions, `<root>/<split>.videos.jsonl`.
        videos: The mp4 files, in video order.
        videomme: Video-MME parquet, or None when not written.
        num_questions: Lines in `jsonl`.
    """

    root: Path
    jsonl: Path
    scenes: Path
    videos: tuple[Path, ...]
    videomme: Path | None
    num_questions: int


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def _frame_choices(frames: int | Sequence[int]) -> list[int]:
    if isinstance(frames, int):
        return [frames]
    lo, hi = frames
    choices = [t for t in range(max(8, -(-lo // 8) * 8), hi + 1, 8)]
    if not choices:
        raise ValueError(f"frames range {lo}-{hi} holds no multiple of 8")
    return choices


def _letter_stream(rng: np.random.Generator) -> Iterable[str]:
    # Blocks of 4 that are each a permutation of A-D: exactly balanced every 4 questions, still unpredictable.
    while True:
        for i in rng.permutation(4):
            yield LETTERS[i]


def generate(
    out_dir: str | os.PathLike[str],
    split: str,
    num_videos: int,
    frames: int | Sequence[int] = 32,
    seed: int = 0,
    *,
    num_needles: int = 3,
    num_distractors: int = 8,
    kinds: Sequence[str] = KINDS,
    questions_per_video: int | None = None,
    size: int = 64,
    cell: int = 16,
    fps: int = 8,
    needle_pairs: int = 2,
    move_prob: float = 0.5,
    crf: int = 10,
    videomme: bool | None = None,
    progress: bool = True,
) -> SplitFiles:
    """Generate one split of needle videos and questions into `out_dir`.

    Video `i` depends only on `(seed, split, i)` and the scene arguments, so the first N videos of a larger
    split are the same videos; answer letters come from one per-split stream balanced in blocks of 4.

    Question record fields (`<split>.jsonl`, one line per question, `num_needles` questions per video):

    * `id` (`"<video_id>-q<k>"`), `video_id` (`"<split>-<i:05d>"`), `video` (path relative to `out_dir`),
    * `question`; `options`: 4 **plain option texts** in letter order A-D (the letter of `options[i]` is
      `"ABCD"[i]`; add `"A. "` prefixes when prompting); `answer`: the correct option text (the training
      target); `answer_letter`; `kind` (`colour` | `shape` | `quarter`),
    * `needle`: `{glyph, colour, cell: [row, col], frames: [start, end), quarter}`,
    * `objects`: `[[glyph, colour, frames_visible], ...]` every object in first-appearance order (for
      `caption` and `shortcut_accuracy`); `caption`: `caption(objects)`,
    * `num_frames`, `fps`, `duration_s`, `width`, `height`, `split`, `seed`.

    Args:
        out_dir: Split folder (created). One Video-MME root per folder, so give each split its own folder.
            Files of the same names are overwritten; other files already there are left alone.
        split: Split name; part of the seed and of every id. Non-`train` splits default to the Video-MME layout.
        num_videos: Videos to write.
        frames: Frames per video (a multiple of 8), or a `(lo, hi)` range: each video draws a multiple of 8.
        seed: Master seed.
        num_needles: Needles per video.
        num_distractors: Distractor objects visible in every tubelet.
        kinds: Question kinds drawn per question (subset of `KINDS`).
        questions_per_video: Questions per video, each about a different needle; default: one per needle.
        size: Frame side in px.
        cell: Grid cell side in px (one decoder token over a tubelet with patch 8 + 2x2 shuffle).
        fps: Frame rate; `duration_s = num_frames / fps`.
        needle_pairs: Needle lifetime in tubelets (2 frames each).
        move_prob: Distractor move probability per tubelet.
        crf: x264 CRF.
        videomme: Also write the Video-MME layout; default: every split except `"train"`.
        progress: Show a tqdm bar.

    Returns:
        The paths written.
    """
    from tqdm.auto import tqdm

    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if num_needles < 1:
        raise ValueError("num_needles must be >= 1: every question is about a needle")
    if questions_per_video is not None and not 1 <= questions_per_video <= num_needles:
        raise ValueError(f"questions_per_video must be in [1, num_needles={num_needles}], got {questions_per_video}")
    _check_kinds(kinds)
    choices = _frame_choices(frames)
    for t in choices:
        _check_geometry(t, size, cell)
    root = Path(out_dir)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    key = _split_key(split)
    letters = _letter_stream(np.random.default_rng([seed, key, 1, 0]))
    records, scenes, videos = [], [], []
    for i in tqdm(range(num_videos), desc=f"needle {split}", unit="video", disable=not progress):
        rng = np.random.default_rng([seed, key, 0, i])
        num_frames = choices[int(rng.integers(len(choices)))]
        scene = make_scene(
            rng, num_frames, size=size, cell=cell, num_needles=num_needles, num_distractors=num_distractors,
            needle_pairs=needle_pairs, move_prob=move_prob,
        )  # fmt: skip
        video_id = f"{split}-{i:05d}"
        rel = f"videos/{video_id}.mp4"
        encode_mp4(render(scene), root / rel, fps=fps, crf=crf)
        videos.append(root / rel)
        objects = scene_objects(scene)
        num_q = num_needles if questions_per_video is None else questions_per_video
        qs = make_questions(scene, rng, [next(letters) for _ in range(num_q)], kinds, num_q)
        for k, q in enumerate(qs):
            records.append(
                {"id": f"{video_id}-q{k}", "video_id": video_id, "video": rel, **q, "objects": objects,
                 "caption": caption(objects), "num_frames": num_frames, "fps": fps,
                 "duration_s": num_frames / fps, "width": size, "height": size, "split": split, "seed": seed}
            )  # fmt: skip
        scenes.append(
            {"video_id": video_id, "video": rel, "num_frames": num_frames, "size": size, "cell": cell,
             "tracks": [{"glyph": t.glyph, "colour": t.colour, "role": t.role, "start_frame": 2 * t.start,
                         "cells": [list(rc) for rc in t.cells]} for t in scene.tracks]}
        )  # fmt: skip
    jsonl, scenes_path = root / f"{split}.jsonl", root / f"{split}.videos.jsonl"
    _write_jsonl(jsonl, records)
    _write_jsonl(scenes_path, scenes)
    parquet = _write_videomme(root, records) if (split != "train" if videomme is None else videomme) else None
    return SplitFiles(root, jsonl, scenes_path, tuple(videos), parquet, len(records))


def _write_videomme(root: Path, records: list[dict]) -> Path:
    """Write the Video-MME release layout for `records` under `root`; returns the parquet path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir(exist_ok=True)
    numbers: dict[str, int] = {}
    asked: dict[str, int] = {}
    rows = {c: [] for c in _VIDEOMME_COLUMNS}
    for rec in records:
        vid = rec["video_id"]
        if vid not in numbers:
            numbers[vid] = len(numbers) + 1
            link = data / f"{vid}.mp4"
            if link.is_symlink() or link.exists():
                link.unlink()
            # Relative link: survives moving or renaming the split folder (ensure_dataset renames it).
            link.symlink_to(Path("..") / rec["video"])
        number = f"{numbers[vid]:03d}"
        asked[number] = k = asked.get(number, 0) + 1
        values = {
            "video_id": number,
            "duration": duration_bucket(rec["num_frames"]),
            "domain": "Synthetic",
            "sub_category": "Needle",
            "url": f"synthetic://needle/{vid}",
            "videoID": vid,
            "question_id": f"{number}-{k}",
            "task_type": _TASK_TYPES[rec["kind"]],
            "question": rec["question"],
            "options": [f"{letter}. {text}" for letter, text in zip(LETTERS, rec["options"], strict=True)],
            "answer": rec["answer_letter"],
        }
        for c in _VIDEOMME_COLUMNS:
            rows[c].append(values[c])
    schema = pa.schema([(c, pa.list_(pa.string()) if c == "options" else pa.string()) for c in _VIDEOMME_COLUMNS])
    path = root / "videomme" / "test-00000-of-00001.parquet"
    path.parent.mkdir(exist_ok=True)
    pq.write_table(pa.table(rows, schema=schema), path)
    return path


def ensure_dataset(
    cache_dir: str | os.PathLike[str],
    split: str = "train",
    num_videos: int = 256,
    frames: int | Sequence[int] = 32,
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> Path:
    """Return a generated split folder under `cache_dir`, generating it on first use.

    The folder name holds a hash of every argument (and `FORMAT_VERSION`), so different settings never share a
    cache. Generation writes into a temporary sibling folder, drops a `.complete` marker (the arguments as
    JSON) and renames it into place: an interrupted run leaves only a temp folder, never a folder that looks
    complete. Concurrent callers (e.g. several ranks) may both generate; the first rename wins.

    Args:
        cache_dir: Cache root (created).
        split: Split name.
        num_videos: Videos in the split.
        frames: Frames per video or a `(lo, hi)` range (see `generate`).
        seed: Master seed.
        progress: Show a tqdm bar while generating.
        **kwargs: Further `generate` keyword arguments (scene and encoding settings).

    Returns:
        The split folder (contains `<split>.jsonl`, `videos/`, ...).
    """
    params = {"format": FORMAT_VERSION, "split": split, "num_videos": num_videos,
              "frames": frames if isinstance(frames, int) else list(frames), "seed": seed,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in sorted(kwargs.items())}}  # fmt: skip
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(cache_dir)
    final = cache / f"needle-{split}-{digest}"
    if (final / _COMPLETE).is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    if final.exists():  # no marker: debris from an older, non-atomic writer; never trust it
        shutil.rmtree(final)
    tmp = cache / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    generate(tmp, split, num_videos, frames, seed, progress=progress, **kwargs)
    (tmp / _COMPLETE).write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        if not (final / _COMPLETE).is_file():
            raise
    return final


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def _parse_frames(text: str) -> int | tuple[int, int]:
    if "-" in text:
        lo, hi = text.split("-", 1)
        return int(lo), int(hi)
    return int(text)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: generate one split and print what was written."""
    p = argparse.ArgumentParser(prog="python -m hpft.data.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="split folder to write")
    p.add_argument("--split", default="train")
    p.add_argument("--num-videos", type=int, default=16)
    p.add_argument("--frames", type=_parse_frames, default=32, help="frames per video, or a range like 32-64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-needles", type=int, default=3)
    p.add_argument("--questions-per-video", type=int, default=None, help="default: one per needle")
    p.add_argument("--num-distractors", type=int, default=8)
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--cell", type=int, default=16)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--needle-pairs", type=int, default=2)
    p.add_argument("--move-prob", type=float, default=0.5)
    p.add_argument("--crf", type=int, default=10)
    p.add_argument("--videomme", action=argparse.BooleanOptionalAction, default=None,
                   help="write the Video-MME layout (default: every split except train)")  # fmt: skip
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = generate(
        a.out, a.split, a.num_videos, a.frames, a.seed, num_needles=a.num_needles,
        num_distractors=a.num_distractors, kinds=tuple(a.kinds.split(",")),
        questions_per_video=a.questions_per_video, size=a.size, cell=a.cell, fps=a.fps,
        needle_pairs=a.needle_pairs, move_prob=a.move_prob, crf=a.crf, videomme=a.videomme,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    records = read_jsonl(out.jsonl)
    nbytes = sum(v.stat().st_size for v in out.videos)
    print(f"wrote {len(out.videos)} videos ({nbytes / 1024:.1f} KiB) to {out.root / 'videos'}")
    print(f"wrote {out.num_questions} questions to {out.jsonl}")
    print(f"wrote scenes to {out.scenes}")
    if out.videomme is not None:
        print(f"wrote Video-MME layout: {out.videomme} and {out.root / 'data'}/<videoID>.mp4")
    print(
        f"question-blind shortcut accuracy: present {shortcut_accuracy(records, expected=True):.3f}, "
        f"rarest {shortcut_accuracy(records, strategy='rarest', expected=True):.3f} (chance 0.250)"
    )
    print(f"{dt:.2f} s ({dt / len(out.videos):.3f} s/video)")
    print("command: python -m hpft.data.synthetic " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
