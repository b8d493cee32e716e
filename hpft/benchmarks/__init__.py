"""Long-video benchmarks scored exactly as lmms-eval 0.7.3 scores them: one module per benchmark, one surface.

Each of `videomme`, `mlvu`, `longvideobench`, `egoschema` and `needle` exposes:

* `load(root) -> LoadResult` — the items (`list[Item]`) read from the release layout under `root`, with the
  rows it could not use in `.skipped` (a missing root or annotation file raises `BenchmarkLayoutError`, a
  `FileNotFoundError`);
* `build_prompt(item) -> str` — the reference's prompt (Video-MME: `build_prompt(item, subtitles=True)` too);
* `parse_answer(text, doc) -> str` — the letter the reference extracts, `""` where it finds none;
* `aggregate(records) -> dict` — the reference's headline `score` plus breakdowns under `by`.

Typical use::

    from hpft.benchmarks import get_benchmark
    from hpft.benchmarks.aggregate import make_record

    bench = get_benchmark("videomme")
    items = bench.load(root)
    records = [make_record(it, out, bench.parse_answer(out, it.doc)) for it, out in zip(items, outputs)]
    result = bench.aggregate(records)   # result["score"], result["by"]["duration"]["short"], ...

Shared pieces: `common` (`Item`, `Skip`, `LoadResult`, checked reads), `parsing` (the reference's parsers)
and `aggregate` (records, the seeded guess, per-bucket counts). Record the reference version
(`aggregate.REFERENCE`) next to every score.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hpft.benchmarks.common import BenchmarkLayoutError, Item, LoadResult, Skip

__all__ = ["BENCHMARKS", "BenchmarkLayoutError", "Item", "LoadResult", "Skip", "get_benchmark"]

BENCHMARKS = ("videomme", "mlvu", "longvideobench", "egoschema", "needle")


def get_benchmark(name: str) -> ModuleType:
    """Return a benchmark module by name.

    Args:
        name: One of `BENCHMARKS`.

    Returns:
        The module (`load`, `build_prompt`, `parse_answer`, `aggregate`).

    Raises:
        ValueError: For an unknown name.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"hpft.benchmarks.{name}")
