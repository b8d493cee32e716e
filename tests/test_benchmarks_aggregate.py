"""Aggregation on hand-made records: breakdowns, counts, the seeded guess, and the needle V-NIAH grid + heatmap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpft.benchmarks import egoschema, needle, videomme
from hpft.benchmarks.aggregate import score_records
from hpft.benchmarks.common import Item

NEEDLE_TINY = Path(__file__).parent / "fixtures" / "needle_tiny" / "test"


def rec(i: int, pred: str | None, answer: str = "A", **meta) -> dict:
    return {"id": str(i), "pred": pred, "answer": answer, "num_options": 4, "meta": meta}


def test_videomme_breakdowns_and_counts():
    records = [
        rec(0, "A", duration="short", domain="Knowledge", sub_category="Law", task_type="OCR Problems"),
        rec(1, "B", duration="short", domain="Knowledge", sub_category="Law", task_type="OCR Problems"),
        rec(2, "", duration="medium", domain="Multilingual", sub_category="Multilingual", task_type="OCR Problems"),
        rec(3, "A", duration="long", domain="Multilingual", sub_category="Multilingual", task_type="Counting Problem"),
        rec(4, None, duration="long", domain="Knowledge", sub_category="Law", task_type="Counting Problem"),
    ]
    result = videomme.aggregate(records)
    assert result["score"] == 50.0  # 2 of 4 evaluated; the empty prediction counts as wrong
    assert result["score_excluding_unparsed"] == pytest.approx(200 / 3)  # the official script's convention
    assert (result["n_total"], result["n_scored"], result["n_correct"], result["n_unparsed"]) == (5, 4, 2, 1)
    assert result["n_guessed"] == 0
    assert result["by"]["duration"] == {"short": 50.0, "medium": 0.0, "long": 100.0}
    assert result["by"]["domain"] == {"Knowledge": 50.0, "Multilingual": 50.0}
    assert result["by"]["task_type"] == {"OCR Problems": pytest.approx(100 / 3), "Counting Problem": 100.0}
    assert result["counts"]["duration"] == {"short": 2, "medium": 1, "long": 1}
    assert (result["units"], result["metric"]) == ("percent", "videomme_perception_score")
    json.dumps(result)  # results files are JSON


def test_empty_records():
    result = videomme.aggregate([])
    assert result["score"] == 0 and result["n_total"] == 0 and result["by"]["duration"] == {}


def test_score_records_seeded_guess():
    records = [rec(i, "", answer="B") for i in range(6)] + [rec(6, "C"), rec(7, None)]
    first = score_records(records, guess=True, seed=3)
    again = score_records(records, guess=True, seed=3)
    assert [r["final"] for r in first] == [r["final"] for r in again]
    assert all(r["guessed"] and r["final"] in "ABCD" for r in first[:6])
    assert first[6] == {**records[6], "final": "C", "parsed": True, "guessed": False, "correct": False}
    assert first[7]["correct"] is None and first[7]["final"] is None
    no_guess = score_records(records, guess=False)
    assert [r["final"] for r in no_guess[:6]] == [""] * 6 and not any(r["correct"] for r in no_guess[:6])
    with pytest.raises(ValueError, match="num_options"):
        score_records([{"id": "x", "pred": "", "answer": "A", "num_options": 0}], guess=True)


def test_egoschema_guesses_are_order_dependent_and_seeded():
    records = [
        {"id": str(i), "pred": p, "answer": "C", "num_options": 5, "meta": {}} for i, p in enumerate(["", "", "C"])
    ]
    result = egoschema.aggregate(records, seed=0)  # random.Random(0): D, D
    assert result["n_guessed"] == 2 and result["score"] == pytest.approx(1 / 3)


def needle_records(depths_lengths_correct):
    return [
        {"id": str(i), "pred": "A" if ok else "B", "answer": "A", "num_options": 4,
         "meta": {"depth": depth, "num_frames": length}}
        for i, (depth, length, ok) in enumerate(depths_lengths_correct)
    ]  # fmt: skip


def test_niah_grid_table():
    records = needle_records(
        [(0.0, 16, True), (0.04, 16, False), (0.5, 16, True), (0.5, 32, True), (0.96, 32, False), (0.25, 32, True)]
    )
    table = needle.niah_grid(records, depth_step=10)
    assert table["depths"] == [0, 30, 50, 100]  # 0.04 -> 0, 0.25 -> 30 (halves round up), 0.96 -> 100
    assert table["lengths"] == [16, 32]
    assert table["accuracy"] == [[0.5, None], [None, 1.0], [1.0, 1.0], [None, 0.0]]
    assert table["counts"] == [[2, 0], [0, 1], [1, 1], [0, 1]]
    assert table["average"] == pytest.approx(3.5 / 5)
    assert {"Num. Frame": 32, "Frame Depth": 100, "Score": 0.0} in table["cells"]
    assert len(table["cells"]) == 5
    assert needle.depth_bin(0.15, 10) == 20 and needle.depth_bin(0.149, 10) == 10 and needle.depth_bin(1.0, 20) == 100
    with pytest.raises(ValueError, match="depth"):
        needle.niah_grid([{"id": "x", "pred": "A", "answer": "A", "meta": {}}])


def test_niah_heatmap_written(tmp_path: Path):
    table = needle.niah_grid(needle_records([(0.0, 16, True), (0.5, 32, False), (0.5, 1200, True)]))
    png, js = needle.save_niah_heatmap(table, tmp_path / "plots", name="grid")
    assert png == tmp_path / "plots" / "grid.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 1000
    saved = json.loads(js.read_text())
    assert saved["accuracy"] == table["accuracy"] and saved["cells"] == table["cells"]


def test_needle_aggregate_on_fixture(tmp_path: Path):
    items = needle.load(NEEDLE_TINY)
    wrong = {"A": "B", "B": "C", "C": "D", "D": "A"}
    # right on even items, wrong on odd ones, and one unparsable output
    outputs = [it.answer if k % 2 == 0 else wrong[it.answer] for k, it in enumerate(items)]
    outputs[-1] = "no idea"
    from hpft.benchmarks.aggregate import make_record

    records = [make_record(it, o, needle.parse_answer(o, it.doc)) for it, o in zip(items, outputs, strict=True)]
    result = needle.aggregate(records)
    assert result["score"] == 50.0 and result["n_unparsed"] == 1
    assert set(result["by"]) == {"kind", "num_frames", "depth_percent", "quarter", "duration", "task_type"}
    assert result["by"]["num_frames"] == {"16": 50.0}
    grid = result["niah"]
    assert grid["lengths"] == [16]
    assert sum(sum(row) for row in grid["counts"]) == 6
    png, _ = needle.save_niah_heatmap(grid, tmp_path)
    assert png.is_file()


def test_item_is_a_plain_record():
    item = Item("q1", "/v.mp4", "Q?", ["a", "b"], "A", {"question": "Q?"})
    assert item.meta == {} and item.subtitle_path is None
    with pytest.raises(AttributeError):
        item.id = "q2"  # frozen: items are shared between workers and records
