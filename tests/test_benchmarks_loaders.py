"""Benchmark loaders on tiny releases written here in the exact real formats (column names, Arrow types, paths).

Each release has good rows, one malformed row and one row whose video is missing: both must come back as
reported skips, never as a crash. Videos are empty placeholder files: loaders check that they exist, decoding
is `hpft.data.video`'s job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpft.benchmarks import BENCHMARKS, egoschema, get_benchmark, longvideobench, mlvu, needle, videomme
from hpft.benchmarks.aggregate import make_record
from hpft.benchmarks.common import BenchmarkLayoutError, LoadResult
from hpft.errors import UserInputError

NEEDLE_TINY = Path(__file__).parent / "fixtures" / "needle_tiny" / "test"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# ------------------------------------------------------------------------------------------------- Video-MME

VIDEOMME_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id",
                                "task_type", "question")]
    + [("options", pa.list_(pa.string())), ("answer", pa.string())]
)  # fmt: skip
SRT = (
    "1\n00:00:00,000 --> 00:00:02,000\n"
    '<font color="white" size=".72c">hello and welcome</font>\n\n'
    "2\n00:00:02,000 --> 00:00:04,500\n"
    '<font color="white" size=".72c">today we decorate a tree</font>\n\n'
    "3\n00:00:10,000 --> 00:00:12,000\nplain cue without the font tag\n"
)


def vm_row(vid: str, number: str, k: int, duration: str, answer: str = "C", options=None) -> dict:
    return {
        "video_id": number, "duration": duration, "domain": "Knowledge", "sub_category": "Humanity & History",
        "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": f"{number}-{k}",
        "task_type": "Counting Problem", "question": f"Invented question {number}-{k}?",
        "options": options or ["A. Apples.", "B. Candles.", "C. Berries.", "D. All appear equally often."],
        "answer": answer,
    }  # fmt: skip


@pytest.fixture
def videomme_root(tmp_path: Path) -> Path:
    root = tmp_path / "Video-MME"
    rows = [
        vm_row("vidAAAAAAA1", "001", 1, "short"),
        vm_row("vidAAAAAAA1", "001", 2, "medium", answer="A"),
        vm_row("vidBBBBBBB2", "002", 1, "long", answer="D"),
        vm_row("vidBBBBBBB2", "002", 2, "long", answer="E"),  # malformed: answer outside A-D
        vm_row("vidMISSING3", "003", 1, "short"),  # its video is missing
        vm_row("vidBBBBBBB2", "002", 3, "long", options=["A. x", "B. y", "C. z"]),  # malformed: 3 options
    ]
    write_parquet(root / "videomme" / "test-00000-of-00001.parquet", rows, VIDEOMME_SCHEMA)
    touch(root / "data" / "vidAAAAAAA1.mp4")
    touch(root / "data" / "vidBBBBBBB2.MP4")  # the .MP4 fallback
    (root / "subtitle").mkdir()
    (root / "subtitle" / "vidAAAAAAA1.srt").write_text(SRT, encoding="utf-8")
    return root


def test_videomme_load(videomme_root: Path):
    items = videomme.load(videomme_root)
    assert isinstance(items, LoadResult) and isinstance(items, list)
    assert [it.id for it in items] == ["001-1", "001-2", "002-1"]
    first = items[0]
    assert first.video == str(videomme_root / "data" / "vidAAAAAAA1.mp4") and Path(first.video).is_absolute()
    assert items[2].video.endswith("vidBBBBBBB2.MP4")
    assert first.options == ["Apples.", "Candles.", "Berries.", "All appear equally often."]
    assert first.answer == "C" and items[1].answer == "A"
    assert first.meta["duration"] == "short" and first.meta["task_type"] == "Counting Problem"
    assert first.doc["options"][0] == "A. Apples."
    assert first.subtitle_path == str(videomme_root / "subtitle" / "vidAAAAAAA1.srt")
    assert items[2].subtitle_path is None
    skips = {s.row: s for s in items.skipped}
    assert sorted(skips) == [3, 4, 5]
    assert skips[3].field == "answer"
    assert skips[4].field == "videoID" and "video not found" in skips[4].reason
    assert skips[5].field == "options" and "3" in skips[5].reason
    assert all(s.file.endswith("test-00000-of-00001.parquet") for s in items.skipped)


def test_videomme_prompts(videomme_root: Path):
    first, _, third = videomme.load(videomme_root)
    assert videomme.build_prompt(first) == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "Invented question 001-1?\n"
        "A. Apples.\nB. Candles.\nC. Berries.\nD. All appear equally often.\n"
        "\nAnswer with the option's letter from the given choices directly."
    )
    with_subs = videomme.build_prompt(first, subtitles=True)
    assert with_subs.startswith(
        "This video's subtitles are listed below: \n"
        "hello and welcome\ntoday we decorate a tree\nplain cue without the font tag\nSelect the best answer"
    )
    assert with_subs.endswith("D. All appear equally often.\nThe best answer is:")
    # only cues covering one of the sampled frames: 3 frames of a 12 s video at 1 fps -> frames 0, 5, 11
    selected = videomme.build_prompt(first, subtitles=True, fps=1.0, total_frames=12, frame_num=3)
    assert "hello and welcome\nplain cue without the font tag\nSelect" in selected
    assert "today we decorate" not in selected
    assert "\nNo subtitles available\n" in videomme.build_prompt(third, subtitles=True)


def test_srt_parsing_order_and_fallback():
    cues = videomme.parse_srt(SRT.replace("\n", "\r\n"))
    assert cues == [
        (0.0, 2.0, "hello and welcome"),
        (2.0, 4.5, "today we decorate a tree"),
        (10.0, 12.0, "plain cue without the font tag"),
    ]
    assert videomme.select_subtitles(cues, fps=2.0, total_frames=10, frame_num=2) == "hello and welcome"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_missing_root_raises_file_not_found(tmp_path: Path, name: str):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        get_benchmark(name).load(missing)
    assert "<root>/" in str(info.value)  # the message shows the expected layout
    assert isinstance(info.value, UserInputError)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_missing_annotation_raises_file_not_found(tmp_path: Path, name: str):
    with pytest.raises(BenchmarkLayoutError, match="Expected"):
        get_benchmark(name).load(tmp_path)


def test_unreadable_annotation_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "videomme" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    path.write_text("not parquet")
    with pytest.raises(UserInputError, match="cannot read annotation file"):
        videomme.load(tmp_path)


def test_get_benchmark_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_benchmark("mvbench")


# ------------------------------------------------------------------------------------------------- MLVU

MLVU_SCHEMA = pa.schema(
    [("video_name", pa.string()), ("duration", pa.float64()), ("question", pa.string()),
     ("candidates", pa.list_(pa.string())), ("answer", pa.string()), ("task_type", pa.string()),
     ("question_id", pa.string())]
)  # fmt: skip


@pytest.fixture
def mlvu_root(tmp_path: Path) -> Path:
    root = tmp_path / "MLVU"
    cat = "Where is the cat?\n(A) Roof\n(B) Car\n(C) Bed\n(D) Box"
    six = "Which object was inserted?\n(A) a\n(B) b\n(C) c\n(D) d\n(E) e\n(F) f"
    rows = [
        {"video_name": "movie_1.mp4", "duration": 246.0, "question": cat, "candidates": ["Roof", "Car", "Bed", "Box"],
         "answer": "C", "task_type": "plotQA", "question_id": "plotQA_1"},
        # no embedded options: the prompt must add them
        {"video_name": "movie_1.mp4", "duration": 246.0, "question": "What colour is the car?",
         "candidates": ["Red", "Blue", "Green", "Black"], "answer": "B", "task_type": "plotQA",
         "question_id": "plotQA_2"},
        # six options, test-style answer F; its video sits under <root>/video/
        {"video_name": "needle_3.mp4", "duration": 600.5, "question": six, "candidates": list("abcdef"),
         "answer": "F", "task_type": "needle", "question_id": "needle_1"},
        # malformed: the answer is neither a letter nor an option
        {"video_name": "movie_1.mp4", "duration": 246.0, "question": "Q?\n(A) x\n(B) y",
         "candidates": ["x", "y"], "answer": "Z", "task_type": "plotQA", "question_id": "plotQA_3"},
        # missing video
        {"video_name": "gone.mp4", "duration": 10.0, "question": "Q?\n(A) x\n(B) y",
         "candidates": ["x", "y"], "answer": "A", "task_type": "ego", "question_id": "ego_1"},
    ]  # fmt: skip
    write_parquet(root / "mlvu" / "test-00000-of-00001.parquet", rows, MLVU_SCHEMA)
    touch(root / "movie_1.mp4")
    touch(root / "video" / "needle_3.mp4")  # also accepted: <root>/video/<video_name>
    return root


def test_mlvu_load_parquet(mlvu_root: Path):
    items = mlvu.load(mlvu_root)
    assert [it.id for it in items] == ["plotQA_1", "plotQA_2", "needle_1"]
    assert items[0].question == "Where is the cat?"
    assert items[0].options == ["Roof", "Car", "Bed", "Box"]
    assert [it.answer for it in items] == ["C", "B", "F"]
    assert items[2].video == str(mlvu_root / "video" / "needle_3.mp4")
    assert items[0].meta == {"task_type": "plotQA", "duration": 246.0, "question_id": "plotQA_1"}
    assert [(s.row, s.field) for s in items.skipped] == [(3, "answer"), (4, "video_name")]
    assert "video not found" in items.skipped[1].reason
    assert mlvu.build_prompt(items[0]) == (
        "Where is the cat?\n(A) Roof\n(B) Car\n(C) Bed\n(D) Box\nOnly give the best option.\nBest option: ("
    )
    assert mlvu.build_prompt(items[1]) == (
        "What colour is the car?\n(A) Red\n(B) Blue\n(C) Green\n(D) Black\nOnly give the best option.\nBest option: ("
    )


def test_mlvu_load_original_json(tmp_path: Path):
    root = tmp_path / "MVLU"
    (root / "json").mkdir(parents=True)
    plot = [
        {"video": "movie101_66.mp4", "duration": 246, "question": "Who opens the door?",
         "candidates": ["The man", "The dog", "The child", "Nobody"], "answer": "The child", "question_type": "plotQA"},
        {"video": "movie101_66.mp4", "duration": 246, "question": "Broken answer?",
         "candidates": ["x", "y"], "answer": "not an option", "question_type": "plotQA"},
    ]  # fmt: skip
    needle_rows = [{"video": "needle_9.mp4", "duration": 500, "question": "What was inserted?",
                    "candidates": ["A cup", "A hat"], "answer": "A hat", "question_type": "findNeedle"}]  # fmt: skip
    (root / "json" / "1_plotQA.json").write_text(json.dumps(plot))
    (root / "json" / "2_needle.json").write_text(json.dumps(needle_rows))
    (root / "json" / "9_summary.json").write_text(json.dumps([{"video": "x.mp4", "question": "Summarise."}]))
    touch(root / "video" / "1_plotQA" / "movie101_66.mp4")
    touch(root / "video" / "2_needle" / "needle_9.mp4")
    items = mlvu.load(root)
    assert [(it.meta["task_type"], it.answer) for it in items] == [("plotQA", "C"), ("needle", "B")]
    assert [(s.row, s.field) for s in items.skipped] == [(1, "answer")]
    assert mlvu.build_prompt(items[1]) == (
        "What was inserted?\n(A) A cup\n(B) A hat\nOnly give the best option.\nBest option: ("
    )


def test_mlvu_aggregate_present_types(mlvu_root: Path):
    items = mlvu.load(mlvu_root)
    outputs = ["C) Bed", "A) Red", "F"]  # right, wrong, right letter but the reference parses A-D only
    records = [make_record(it, out, mlvu.parse_answer(out, it.doc)) for it, out in zip(items, outputs, strict=True)]
    result = mlvu.aggregate(records)
    assert result["by"]["task_type"] == {"plotQA": 50.0, "needle": 0.0}
    assert result["score"] == 50.0 / 7  # the reference divides by all seven dev types
    assert result["m_avg_present"] == 25.0
    assert result["n_unparsed"] == 1 and result["accuracy"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------- LongVideoBench

LVB_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("id", pa.string()), ("video_path", pa.string()), ("subtitle_path", pa.string()),
     ("correct_choice", pa.int64()), ("question", pa.string())]
    + [(f"option{i}", pa.string()) for i in range(5)]
    + [("duration", pa.float64()), ("duration_group", pa.int64()), ("question_category", pa.string()),
       ("topic_category", pa.string()), ("starting_timestamp_for_subtitles", pa.float64())]
)  # fmt: skip


def lvb_row(vid: str, k: int, options: list[str], choice: int, group: int, category: str, video: str | None = None):
    opts = options + ["N/A"] * (5 - len(options))
    return {"video_id": vid, "id": f"{vid}_{k}", "video_path": video or f"{vid}.mp4", "subtitle_path": f"{vid}_en.json",
            "correct_choice": choice, "question": f"Invented question {k}?",
            **{f"option{i}": o for i, o in enumerate(opts)}, "duration": 3.0, "duration_group": group,
            "question_category": category, "topic_category": "NP-News-Programs",
            "starting_timestamp_for_subtitles": 0.0}  # fmt: skip


@pytest.fixture
def lvb_root(tmp_path: Path) -> Path:
    root = tmp_path / "LongVideoBench"
    rows = [
        lvb_row("86CxyhFV9MI", 0, ["A phone", "A cup", "A set of keys", "A book"], 2, 600, "E2O"),
        lvb_row("86CxyhFV9MI", 1, ["red", "green", "blue", "white", "black"], 4, 600, "S2E"),
        lvb_row("zzzzzzzzzzz", 0, ["x", "y", "z", "w"], 1, 15, "E2O"),
        lvb_row("86CxyhFV9MI", 2, ["x", "y", "z", "w"], 4, 15, "TOS"),  # malformed: choice 4 of 4 options
        lvb_row("missingvid0", 0, ["x", "y", "z", "w"], 0, 15, "TOS"),  # missing video
    ]
    write_parquet(root / "validation-00000-of-00001.parquet", rows, LVB_SCHEMA)
    touch(root / "videos" / "86CxyhFV9MI.mp4")
    touch(root / "videos" / "zzzzzzzzzzz.mp4")
    (root / "subtitles").mkdir()
    (root / "subtitles" / "86CxyhFV9MI_en.json").write_text(
        json.dumps([{"start": "00:00:00.500", "end": "00:00:01.000", "line": "hi"}])
    )
    (root / "subtitles" / "zzzzzzzzzzz_en.json").write_text(json.dumps([{"timestamp": [0.5, 1.0], "text": "hi"}]))
    return root


def test_longvideobench_load_parquet(lvb_root: Path):
    items = longvideobench.load(lvb_root)
    assert [it.id for it in items] == ["86CxyhFV9MI_0", "86CxyhFV9MI_1", "zzzzzzzzzzz_0"]
    assert items[0].options == ["A phone", "A cup", "A set of keys", "A book"]  # "N/A" dropped
    assert len(items[1].options) == 5
    assert [it.answer for it in items] == ["C", "E", "B"]
    assert items[0].meta["duration_group"] == 600 and items[0].meta["question_category"] == "E2O"
    assert items[2].subtitle_path == str(lvb_root / "subtitles" / "zzzzzzzzzzz_en.json")
    assert [(s.row, s.field) for s in items.skipped] == [(3, "correct_choice"), (4, "video_path")]
    assert longvideobench.build_prompt(items[0]) == (
        "Invented question 0?\nA. A phone\nB. A cup\nC. A set of keys\nD. A book\n"
        "Answer with the option's letter from the given choices directly.\n"
    )


def test_longvideobench_load_json(tmp_path: Path):
    rows = [
        {"video_id": "v1", "id": "v1_0", "video_path": "v1.mp4", "subtitle_path": "v1_en.json", "correct_choice": 1,
         "question": "Q?", "candidates": ["p", "q", "r"], "duration_group": 60, "question_category": "T3O",
         "level": "L2-Relation", "duration": 40.0},
        {"video_id": "v1", "id": "v1_1", "video_path": "v1.mp4", "correct_choice": "x", "question": "Q?",
         "candidates": ["p", "q"]},
    ]  # fmt: skip
    (tmp_path / "lvb_val.json").write_text(json.dumps(rows))
    touch(tmp_path / "videos" / "v1.mp4")
    items = longvideobench.load(tmp_path)
    assert [(it.id, it.options, it.answer, it.meta["level"]) for it in items] == [
        ("v1_0", ["p", "q", "r"], "B", "L2-Relation")
    ]
    assert [(s.row, s.field) for s in items.skipped] == [(1, "correct_choice")]


def test_longvideobench_aggregate_guesses_over_valid_letters(lvb_root: Path):
    items = longvideobench.load(lvb_root)
    outputs = ["C", "no letter here", "b"]  # right; guess among A-E; guess among A-D
    records = [
        make_record(it, out, longvideobench.parse_answer(out, it.doc)) for it, out in zip(items, outputs, strict=True)
    ]
    result = longvideobench.aggregate(records, seed=0)
    # random.Random(0).choice over 5 letters -> "D", then over 4 letters -> "D": wrong, wrong
    assert result["n_guessed"] == 2 and result["n_unparsed"] == 2
    assert result["score"] == round(1 / 3, 5)
    assert result["by"]["duration_group"] == {"600": 0.5, "15": 0.0}
    assert result["by"]["question_category"] == {"E2O": 0.5, "S2E": 0.0}
    assert result["units"] == "fraction"


# ------------------------------------------------------------------------------------------------- EgoSchema

EGO_SCHEMA = pa.schema(
    [("question_idx", pa.string()), ("question", pa.string()), ("video_idx", pa.string()),
     ("option", pa.list_(pa.string())), ("answer", pa.string())]
)  # fmt: skip
EGO_OPTIONS = [
    "A. c was cleaning.",
    "B. c was repairing.",
    "C. c was cooking.",
    "D. c was sorting.",
    "E. c was washing.",
]


def test_egoschema_load(tmp_path: Path):
    uuid = "0074f737-11cb-497d-8d07-77c3a8127391"
    rows = [
        {"question_idx": "0", "question": "What was c's main goal?", "video_idx": uuid, "option": EGO_OPTIONS,
         "answer": "3"},
        {"question_idx": "1", "question": "Four options?", "video_idx": uuid, "option": EGO_OPTIONS[:4],
         "answer": "1"},
        {"question_idx": "2", "question": "Missing video?", "video_idx": "feedbeef", "option": EGO_OPTIONS,
         "answer": "0"},
        {"question_idx": "3", "question": "Answer out of range?", "video_idx": uuid, "option": EGO_OPTIONS,
         "answer": "5"},
    ]  # fmt: skip
    write_parquet(tmp_path / "Subset" / "test-00000-of-00001.parquet", rows, EGO_SCHEMA)
    touch(tmp_path / "videos" / f"{uuid}.MP4")
    items = egoschema.load(tmp_path)
    assert len(items) == 1
    item = items[0]
    assert item.answer == "D" and item.id == "0" and item.video.endswith(f"{uuid}.MP4")
    assert item.options == ["c was cleaning.", "c was repairing.", "c was cooking.", "c was sorting.", "c was washing."]
    assert [(s.row, s.field) for s in items.skipped] == [(1, "option"), (2, "video_idx"), (3, "answer")]
    assert egoschema.build_prompt(item) == (
        "What was c's main goal?\n" + "\n".join(EGO_OPTIONS) + "\nAnswer with the option's letter from the given "
        "choices directly."
    )
    assert egoschema.parse_answer("D. c was sorting.", item.doc) == "D"
    result = egoschema.aggregate([make_record(item, "D", egoschema.parse_answer("D", item.doc))])
    assert result["score"] == 1.0 and result["by"] == {}


# ------------------------------------------------------------------------------------------------- needle


def test_needle_load_fixture():
    items = needle.load(NEEDLE_TINY)
    assert len(items) == 6 and not items.skipped
    records = [json.loads(line) for line in (NEEDLE_TINY / "test.jsonl").read_text().splitlines()]
    assert [it.id for it in items] == [r["id"] for r in records]
    for item, rec in zip(items, records, strict=True):
        assert item.answer == rec["answer_letter"]
        assert item.options == rec["options"]
        assert Path(item.video).is_file() and item.video.endswith(f"data/{rec['video_id']}.mp4")
        assert item.meta["kind"] == rec["kind"]
        assert item.meta["num_frames"] == 16
        assert item.meta["depth"] == rec["needle"]["frames"][0] / 16
        assert item.meta["needle_frames"] == rec["needle"]["frames"]
        assert item.meta["duration"] == "short"
    assert needle.build_prompt(items[0]) == videomme.build_prompt(items[0])
    assert "A. triangle\nB. square" in needle.build_prompt(items[0])


def test_needle_load_reports_unmatched_rows(tmp_path: Path):
    import shutil

    root = tmp_path / "test"
    shutil.copytree(NEEDLE_TINY, root, symlinks=True)
    lines = (root / "test.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    del bad["needle"]
    (root / "test.jsonl").write_text("\n".join([lines[0], json.dumps(bad), *lines[3:]]) + "\n")
    items = needle.load(root)
    assert len(items) == 4
    assert sorted((s.field, s.row) for s in items.skipped) == [("needle", 1), ("question", None)]
    (root / "test.jsonl").unlink()
    with pytest.raises(BenchmarkLayoutError, match="jsonl"):
        needle.load(root)
