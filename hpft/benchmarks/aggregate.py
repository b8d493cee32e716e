"""Scoring helpers shared by the benchmark `aggregate` functions: records, the seeded guess, per-bucket counts.

A *record* is one evaluated item: `make_record(item, output, pred)` gives
`{"id", "output", "pred", "answer", "num_options", "meta"}`, where `pred` is what the benchmark's
`parse_answer` returned (`""` when it found no letter, None when the item was not evaluated at all, e.g. its
video failed to decode). Records must stay in the benchmark's row order: the seeded guess below consumes one
draw per unparsed record in that order, which is what makes it reproduce the reference.

`score_records` turns records into scored records. Where the reference guesses (LongVideoBench and EgoSchema
call `random.choice` on an unparsable output; the lmms-eval CLI seeds Python's `random` with 0 per task), it
draws from a fresh `random.Random(seed)` over the item's valid letters. With seed 0 this reproduces the
reference's own guesses on the golden tables. Video-MME, MLVU and the needle task never guess: an empty
prediction is simply wrong.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hpft.benchmarks.common import LETTERS, Item

__all__ = [
    "REFERENCE",
    "field_value",
    "group_counts",
    "make_record",
    "rates",
    "score_records",
    "summary",
]

REFERENCE = "lmms-eval 0.7.3"


def make_record(item: Item, output: str | None, pred: str | None) -> dict[str, Any]:
    """Build the record `aggregate` reads for one item.

    Args:
        item: The benchmark item.
        output: The model's raw text (kept for logs), or None when the item was not evaluated.
        pred: `parse_answer(output, item.doc)`: a letter, `""` when none was found, or None when not evaluated.

    Returns:
        `{"id", "output", "pred", "answer", "num_options", "meta"}` (`meta` is a copy of `item.meta`).
    """
    return {
        "id": item.id,
        "output": output,
        "pred": pred,
        "answer": item.answer,
        "num_options": len(item.options),
        "meta": dict(item.meta),
    }


def score_records(records: Iterable[Mapping[str, Any]], *, guess: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Score records, drawing the reference's random guess for unparsed ones where it guesses.

    Args:
        records: Records in row order (see module docstring); each needs `pred` and `answer`, and
            `num_options` when `guess`.
        guess: Whether an empty `pred` becomes a random letter among the first `num_options` letters (the
            reference's `random.choice(all_choices)`); otherwise it stays empty and counts as wrong.
        seed: Seed of the guess generator (`random.Random(seed)`, one draw per unparsed record in order).

    Returns:
        New dicts: the record plus `final` (the letter scored: `pred` or the guess; None when not evaluated),
        `parsed` (pred was a letter), `guessed`, and `correct` (bool; None when not evaluated).
    """
    rng = random.Random(seed)
    out = []
    for rec in records:
        pred = rec.get("pred")
        if pred is None:
            out.append({**rec, "final": None, "parsed": False, "guessed": False, "correct": None})
            continue
        final, guessed = pred, False
        if pred == "" and guess:
            n = int(rec["num_options"])
            if not 1 <= n <= len(LETTERS):
                raise ValueError(f"record {rec.get('id')!r}: num_options must be in [1, {len(LETTERS)}], got {n}")
            final, guessed = rng.choice(LETTERS[:n]), True
        out.append({**rec, "final": final, "parsed": pred != "", "guessed": guessed, "correct": final == rec["answer"]})
    return out


def field_value(record: Mapping[str, Any], name: str) -> Any:
    """A breakdown field of a record: `record["meta"][name]`, else `record[name]`, else None."""
    meta = record.get("meta")
    if isinstance(meta, Mapping) and name in meta:
        return meta[name]
    return record.get(name)


def group_counts(scored: Iterable[Mapping[str, Any]], name: str) -> dict[str, tuple[int, int]]:
    """Correct and total counts per value of a breakdown field, over evaluated records.

    Args:
        scored: Output of `score_records`.
        name: Field name (looked up with `field_value`); records without it count under `"unknown"`.

    Returns:
        `{str(value): (n_correct, n)}` in first-seen order.
    """
    groups: dict[str, list[int]] = {}
    for rec in scored:
        if rec.get("correct") is None:
            continue
        value = field_value(rec, name)
        key = "unknown" if value is None else str(value)
        cell = groups.setdefault(key, [0, 0])
        cell[0] += bool(rec["correct"])
        cell[1] += 1
    return {k: (c, n) for k, (c, n) in groups.items()}


def rates(table: Mapping[str, tuple[int, int]], scale: float = 1.0) -> dict[str, float]:
    """Turn `group_counts` output into accuracies: `{key: scale * correct / n}` (0 for an empty cell).

    Args:
        table: `{key: (n_correct, n)}`.
        scale: 100 for percent, 1 for a fraction.

    Returns:
        `{key: accuracy}`.
    """
    return {k: scale * c / n if n else 0.0 for k, (c, n) in table.items()}


def summary(
    benchmark: str,
    metric: str,
    score: float,
    units: str,
    scored: Sequence[Mapping[str, Any]],
    by: Mapping[str, Mapping[str, float]],
    **extra: Any,
) -> dict[str, Any]:
    """The dict every `aggregate` returns.

    Args:
        benchmark: Module name, e.g. `"videomme"`.
        metric: The reference's metric key (misspellings included, e.g. `"mlvu_percetion_score"`).
        score: The reference's headline number.
        units: `"percent"` or `"fraction"` (the reference's own scale).
        scored: Output of `score_records`.
        by: Breakdowns, `{field: {value: score}}`, in `units`.
        **extra: Benchmark-specific additions.

    Returns:
        `{benchmark, reference, metric, score, units, accuracy, n_total, n_scored, n_correct, n_unparsed,
        n_guessed, by, counts, ...extra}`. `n_total` counts every record, `n_scored` the evaluated ones (the
        denominator), `n_unparsed` evaluated records where no letter was found (scored wrong or guessed),
        `accuracy` the plain micro accuracy in [0, 1], and `counts` the number of records behind each `by` cell.
    """
    evaluated = [r for r in scored if r.get("correct") is not None]
    n_correct = sum(bool(r["correct"]) for r in evaluated)
    counts = {name: {k: n for k, (_, n) in group_counts(evaluated, name).items()} for name in by}
    return {
        "benchmark": benchmark,
        "reference": REFERENCE,
        "metric": metric,
        "score": score,
        "units": units,
        "accuracy": n_correct / len(evaluated) if evaluated else 0.0,
        "n_total": len(scored),
        "n_scored": len(evaluated),
        "n_correct": n_correct,
        "n_unparsed": sum(not r["parsed"] for r in evaluated),
        "n_guessed": sum(bool(r["guessed"]) for r in evaluated),
        "by": {name: dict(table) for name, table in by.items()},
        "counts": counts,
        **extra,
    }
