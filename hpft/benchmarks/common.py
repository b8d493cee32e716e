"""What every benchmark loader shares: the `Item` record, reported skips, and checked reads of release files.

A loader turns one benchmark's release layout into `Item`s. Rows that cannot be evaluated (a missing field,
an answer outside the options, a missing video) never crash a run: each becomes a `Skip` naming the file, the
row, the field and the reason. `load(root)` returns a `LoadResult`, a plain `list[Item]` that also carries
those skips in `.skipped`, so callers that only want items use it as a list and reports can print what was
left out. A missing root or annotation file is different: nothing can be loaded, so it raises
`BenchmarkLayoutError` (a `FileNotFoundError`) naming the path and the layout that was expected.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpft.errors import UserInputError

__all__ = [
    "LETTERS",
    "BenchmarkLayoutError",
    "Item",
    "LoadResult",
    "RowError",
    "Skip",
    "find_file",
    "find_video",
    "log_skips",
    "read_rows",
    "require_int",
    "require_options",
    "require_root",
    "require_str",
    "strip_letter_prefix",
]

LETTERS = "ABCDEFGH"

_log = logging.getLogger(__name__)


class BenchmarkLayoutError(UserInputError, FileNotFoundError):
    """A benchmark root or its annotation file is missing; the message names the path and the expected layout.

    A `FileNotFoundError` (what callers catch for missing data) and a `UserInputError` (entry points print it
    without a traceback).
    """


@dataclass(frozen=True)
class Item:
    """One benchmark question, ready to prompt and score.

    Attributes:
        id: Unique id within the benchmark (the release's question id where it has one).
        video: Absolute path of the video file (it existed when the item was loaded).
        question: The question text, without options.
        options: Option texts in letter order, without their "A. " / "(A) " labels.
        answer: The correct option letter ("A", "B", ...).
        doc: The raw annotation row, as the reference's parser and prompt read it (Python types, lists for
            list columns).
        meta: Breakdown fields for aggregation (e.g. `duration`, `task_type`), benchmark-specific.
        subtitle_path: Absolute path of the subtitle file when the release has one for this video.
    """

    id: str
    video: str
    question: str
    options: list[str]
    answer: str
    doc: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    subtitle_path: str | None = None


@dataclass(frozen=True)
class Skip:
    """A row that was left out, and why.

    Attributes:
        file: The annotation file the row came from.
        row: 0-based row index in that file (None for problems that are not about one row).
        field: The offending field (None when the whole row is unusable).
        reason: What is wrong, in words a user can act on.
    """

    file: str
    row: int | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}" + (f" [{self.field}]" if self.field else "") + f": {self.reason}"


class LoadResult(list):
    """The items a loader produced (a `list[Item]`), plus the rows it skipped.

    Attributes:
        skipped: One `Skip` per row that could not become an item, in file order.
        root: The benchmark root that was read.
    """

    def __init__(self, items: Iterable[Item] = (), skipped: Iterable[Skip] = (), root: str = "") -> None:
        super().__init__(items)
        self.skipped: list[Skip] = list(skipped)
        self.root = root


class RowError(Exception):
    """Raised inside a row parser to turn the row into a `Skip` (field + reason)."""

    def __init__(self, field_name: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def require_root(root: str | os.PathLike[str], benchmark: str, layout: str) -> Path:
    """Check that a benchmark root folder exists.

    Args:
        root: The folder holding the release layout.
        benchmark: Benchmark name, for the message.
        layout: The expected layout, for the message.

    Returns:
        `root` as an absolute `Path`.

    Raises:
        BenchmarkLayoutError: If `root` is not a directory.
    """
    path = Path(root).absolute()
    if not path.is_dir():
        raise BenchmarkLayoutError(f"{benchmark} root not found: {path} is not a directory. Expected layout:\n{layout}")
    return path


def find_file(root: Path, candidates: Sequence[str], benchmark: str, layout: str) -> Path:
    """Return the first candidate annotation file that exists under `root`.

    Args:
        root: Benchmark root.
        candidates: Relative paths in order of preference (glob patterns allowed; matches are sorted).
        benchmark: Benchmark name, for the message.
        layout: The expected layout, for the message.

    Returns:
        The annotation file.

    Raises:
        BenchmarkLayoutError: If no candidate exists.
    """
    for rel in candidates:
        matches = sorted(root.glob(rel)) if any(c in rel for c in "*?[") else [root / rel]
        for path in matches:
            if path.is_file():
                return path
    tried = ", ".join(str(root / c) for c in candidates)
    raise BenchmarkLayoutError(
        f"{benchmark} annotation file not found under {root} (tried {tried}). Expected:\n{layout}"
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Read an annotation table as a list of plain-Python row dicts.

    Parquet list columns become Python lists (pyarrow's `to_pylist`, not numpy arrays), so rows compare and
    serialise like the JSON form of the same data.

    Args:
        path: A `.parquet`, `.json` (a list of objects) or `.jsonl` file.

    Returns:
        The rows in file order.

    Raises:
        UserInputError: If the file cannot be parsed or is not a list of objects.
    """
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq  # lazy: only loaders pay for pyarrow

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except Exception as exc:  # pyarrow, json and OS errors: all mean "this file is unreadable"
        raise UserInputError(f"cannot read annotation file {path}: {exc}") from None
    if not isinstance(rows, list):
        raise UserInputError(f"annotation file {path} must hold a list of records, got {type(rows).__name__}")
    return rows


def collect_items(path: Path, to_item: Callable[[dict[str, Any], int], Item]) -> tuple[list[Item], list[Skip]]:
    """Turn every row of an annotation file into an `Item`, or into a reported `Skip` when it is malformed.

    Args:
        path: The annotation file (read with `read_rows`).
        to_item: Builds the item of one row (`row`, row index); raises `RowError` for a bad or missing field.

    Returns:
        `(items, skipped)`, both in file order.
    """
    items, skipped = [], []
    for i, row in enumerate(read_rows(path)):
        try:
            if not isinstance(row, dict):
                raise RowError(None, f"expected a record, got {type(row).__name__}")
            items.append(to_item(row, i))
        except RowError as err:
            skipped.append(Skip(str(path), i, err.field, err.reason))
    return items, skipped


def require_str(row: dict[str, Any], name: str, allow_empty: bool = False) -> str:
    """Return `row[name]` as a string, or raise `RowError` when it is missing, not a string, or empty."""
    value = row.get(name)
    if value is None:
        raise RowError(name, "field not present in the row")
    if not isinstance(value, str):
        raise RowError(name, f"expected a string, got {type(value).__name__} {value!r}")
    if not allow_empty and not value.strip():
        raise RowError(name, "empty")
    return value


def require_int(row: dict[str, Any], name: str) -> int:
    """Return `row[name]` as an int (ints and integer strings such as "2"), or raise `RowError`."""
    value = row.get(name)
    if value is None:
        raise RowError(name, "field not present in the row")
    if isinstance(value, bool):
        raise RowError(name, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise RowError(name, f"expected an integer, got {value!r}")


def require_options(row: dict[str, Any], name: str, counts: Sequence[int]) -> list[str]:
    """Return `row[name]` as a list of non-empty strings whose length is one of `counts`, or raise `RowError`."""
    value = row.get(name)
    if value is None:
        raise RowError(name, "field not present in the row")
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise RowError(name, f"expected a list of strings, got {type(value).__name__}")
    if len(value) not in counts:
        raise RowError(name, f"expected {' or '.join(map(str, counts))} options, got {len(value)}")
    for i, opt in enumerate(value):
        if not isinstance(opt, str) or not opt.strip():
            raise RowError(name, f"option {i} is not a non-empty string: {opt!r}")
    return list(value)


def strip_letter_prefix(option: str, letter: str) -> str:
    """Remove a leading "A. " / "A) " / "(A) " label for `letter` from an option text; other text is kept.

    Args:
        option: E.g. `"C. Berries."`.
        letter: The label expected at this position, e.g. `"C"`.

    Returns:
        E.g. `"Berries."`.
    """
    m = re.match(rf"\s*(?:\({letter}\)|{letter}[.)])\s*", option)
    return option[m.end() :].strip() if m else option.strip()


def find_video(folder: Path, stem_or_name: str, suffixes: Sequence[str] = ()) -> Path | None:
    """Find a video file, trying `suffixes` in order after the name itself.

    Args:
        folder: Folder the release puts videos in.
        stem_or_name: File name relative to `folder` (with `suffixes` empty) or a stem to add suffixes to.
        suffixes: E.g. `(".mp4", ".MP4", ".mkv")`, the fallbacks lmms-eval tries for Video-MME.

    Returns:
        The absolute path of the first existing file, or None.
    """
    names = [stem_or_name + s for s in suffixes] if suffixes else [stem_or_name]
    for name in names:
        path = folder / name
        if path.is_file():
            # absolute(), not resolve(): keep the release's own path (Video-MME symlinks stay data/<id>.mp4).
            return path.absolute()
    return None


def log_skips(benchmark: str, result: LoadResult) -> None:
    """Log how many rows a loader skipped and the first few reasons (the full list stays in `.skipped`)."""
    if result.skipped:
        head = "; ".join(str(s) for s in result.skipped[:3])
        more = f" (+{len(result.skipped) - 3} more)" if len(result.skipped) > 3 else ""
        _log.warning(
            "%s: loaded %d items, skipped %d rows: %s%s", benchmark, len(result), len(result.skipped), head, more
        )
