"""Tests for the synthetic needle generator (hpft.data.synthetic) and the decord reader (hpft.data.video)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpft.data import synthetic as syn
from hpft.data.video import VideoError, read_frames, sample_frame_indices, video_num_frames

FIXTURE = Path(__file__).parent / "fixtures" / "needle_tiny"
VIDEOMME_COLUMNS = [
    "video_id", "duration", "domain", "sub_category", "url", "videoID",
    "question_id", "task_type", "question", "options", "answer",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> syn.SplitFiles:
    """Two 16-frame test-split videos (with the Video-MME layout)."""
    out = tmp_path_factory.mktemp("needle") / "test"
    return syn.generate(out, "test", num_videos=2, frames=16, seed=0, progress=False)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> syn.SplitFiles:
    """40 questions (10 videos x 4 needles, one question per needle) at 16 frames, all kinds (train split)."""
    out = tmp_path_factory.mktemp("needle") / "train"
    return syn.generate(out, "train", num_videos=10, frames=16, seed=3, num_needles=4, progress=False)


def _scenes(files: syn.SplitFiles) -> dict[str, dict]:
    return {s["video_id"]: s for s in syn.read_jsonl(files.scenes)}


# --------------------------------------------------------------------------------------------------------------
# sample_frame_indices
# --------------------------------------------------------------------------------------------------------------


def test_sample_frame_indices_identity_when_counts_match():
    assert sample_frame_indices(16, 16) == list(range(16))


def test_sample_frame_indices_matches_lmms_eval_linspace():
    assert sample_frame_indices(100, 4) == [0, 33, 66, 99]
    assert sample_frame_indices(256, 32) == np.linspace(0, 255, 32, dtype=int).tolist()


def test_sample_frame_indices_edge_cases():
    assert sample_frame_indices(5, 1) == [0]
    assert sample_frame_indices(1, 4) == [0, 0, 0, 0]
    up = sample_frame_indices(3, 7)  # more frames requested than exist: indices repeat
    assert len(up) == 7 and up[0] == 0 and up[-1] == 2 and up == sorted(up)
    for bad in [(0, 4), (4, 0), (-1, 2)]:
        with pytest.raises(ValueError):
            sample_frame_indices(*bad)


# --------------------------------------------------------------------------------------------------------------
# reading videos
# --------------------------------------------------------------------------------------------------------------


def test_videos_decode_with_right_count_and_shape(tiny):
    assert len(tiny.videos) == 2
    for path in tiny.videos:
        assert video_num_frames(path) == 16
        frames = read_frames(path)
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
        assert read_frames(path, 8).shape == (8, 64, 64, 3)
        assert np.array_equal(read_frames(path, 8), frames[sample_frame_indices(16, 8)])


def test_missing_file_raises_video_error_naming_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoError, match="nope.mp4") as info:
        read_frames(path, 4)
    assert isinstance(info.value, ValueError) and "check the path" in str(info.value).lower()


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 500])
def test_corrupt_file_raises_video_error_naming_file(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match="broken.mp4") as info:
        read_frames(path, 4)
    assert "regenerate" in str(info.value)


def test_truncated_file_raises_video_error(tiny, tmp_path):
    data = tiny.videos[0].read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="truncated.mp4"):
        read_frames(path)


# --------------------------------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------------------------------


def test_same_seed_same_jsonl_and_frames(tiny, tmp_path):
    again = syn.generate(tmp_path / "again", "test", num_videos=2, frames=16, seed=0, progress=False)
    assert again.jsonl.read_bytes() == tiny.jsonl.read_bytes()
    assert again.scenes.read_bytes() == tiny.scenes.read_bytes()
    for a, b in zip(again.videos, tiny.videos, strict=True):
        assert np.array_equal(read_frames(a), read_frames(b))
        assert a.read_bytes() == b.read_bytes()  # even the mp4 bytes, within one process
    other = syn.generate(tmp_path / "other", "test", num_videos=2, frames=16, seed=1, progress=False)
    assert other.jsonl.read_bytes() != tiny.jsonl.read_bytes()


def test_record_fields(tiny):
    records = syn.read_jsonl(tiny.jsonl)
    assert len(records) == 2 * 3  # default: 3 needles, one question each
    for rec in records:
        assert (tiny.root / rec["video"]).is_file()
        assert len(rec["options"]) == 4 and len(set(rec["options"])) == 4
        assert rec["options"][syn.LETTERS.index(rec["answer_letter"])] == rec["answer"]
        assert rec["kind"] in syn.KINDS
        assert rec["num_frames"] == 16 and rec["duration_s"] == 16 / rec["fps"]
        assert rec["caption"] == syn.caption(rec["objects"])
        assert [rec["needle"]["glyph"], rec["needle"]["colour"]] in [o[:2] for o in rec["objects"]]


def test_colours_survive_encoding(tiny):
    for rec in syn.read_jsonl(tiny.jsonl):
        frames = read_frames(tiny.root / rec["video"])
        needle = rec["needle"]
        r, c = needle["cell"]
        mask = syn.glyph_mask(needle["glyph"], 16)
        palette = np.array(list(syn.PALETTE.values()), dtype=float)
        for f in range(*needle["frames"]):
            mean = frames[f, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16][mask].astype(float).mean(0)
            assert np.abs(mean - syn.PALETTE[needle["colour"]]).max() < 16, (rec["id"], f, mean)
            assert syn.COLOURS[np.abs(palette - mean).sum(1).argmin()] == needle["colour"]


def test_rgb_to_yuv420p_keeps_aligned_block_colours():
    frame = np.zeros((4, 4, 3), dtype=np.uint8)
    frame[:2, :2] = syn.PALETTE["red"]
    yuv = syn.rgb_to_yuv420p(frame)
    assert yuv.shape == (6, 4) and yuv.dtype == np.uint8
    assert (yuv[:2, :2] == yuv[0, 0]).all() and yuv[0, 0] > 16 and (yuv[2:4] == 16).all()  # luma; black = 16
    u, v = yuv[4].reshape(2, 2), yuv[5].reshape(2, 2)  # U then V planes, each (H/2, W/2) packed row-wise
    assert u[0, 0] < 128 < v[0, 0]  # red: blue-difference below neutral, red-difference above
    assert (u.ravel()[1:] == 128).all() and (v.ravel()[1:] == 128).all()  # black blocks stay neutral


def test_answers_balanced_over_letters(many):
    records = syn.read_jsonl(many.jsonl)
    assert len(records) == 40
    assert Counter(r["answer_letter"] for r in records) == {letter: 10 for letter in syn.LETTERS}
    assert len({r["kind"] for r in records}) == 3


def test_wrong_options_appear_in_video(many):
    for rec in syn.read_jsonl(many.jsonl):
        if rec["kind"] == "quarter":
            continue
        present = {o[0] if rec["kind"] == "shape" else o[1] for o in rec["objects"]}
        assert len(present) >= 4
        assert set(rec["options"]) <= present, rec


def test_each_question_has_exactly_one_correct_option(many):
    scenes = _scenes(many)
    for rec in syn.read_jsonl(many.jsonl):
        scene = scenes[rec["video_id"]]
        needle = rec["needle"]
        if rec["kind"] == "colour":
            truth = {t["colour"] for t in scene["tracks"] if t["glyph"] == needle["glyph"]}
        elif rec["kind"] == "shape":
            truth = {t["glyph"] for t in scene["tracks"] if t["colour"] == needle["colour"]}
        else:
            truth = {
                syn.QUARTERS[f * 4 // scene["num_frames"]]
                for t in scene["tracks"] if t["glyph"] == needle["glyph"]
                for f in range(t["start_frame"], t["start_frame"] + 2 * len(t["cells"]))
            }  # fmt: skip
        assert truth == {rec["answer"]}, rec
        assert sum(o in truth for o in rec["options"]) == 1


def test_questions_ask_about_different_needles(many):
    by_video: dict[str, list] = {}
    for rec in syn.read_jsonl(many.jsonl):
        by_video.setdefault(rec["video_id"], []).append(rec["needle"]["glyph"])
    assert all(len(g) == len(set(g)) == 4 for g in by_video.values())


def test_scene_invariants():
    rng = np.random.default_rng(0)
    scene = syn.make_scene(rng, 64, num_needles=3, num_distractors=8)
    needle_glyphs = {n.glyph for n in scene.needles}
    needle_colours = {n.colour for n in scene.needles}
    occupancy: Counter = Counter()
    for tr in scene.tracks[scene.num_needles :]:
        assert tr.glyph not in needle_glyphs and tr.colour not in needle_colours
    for tr in scene.tracks:
        occupancy.update((tr.start + i, rc) for i, rc in enumerate(tr.cells))
    assert max(occupancy.values()) == 1  # no two objects share a cell in a tubelet
    per_tubelet = Counter(t for t, _ in occupancy)
    assert min(per_tubelet[t] for t in range(32)) >= 8  # every frame is busy
    assert len({syn.needle_quarter(n, 64) for n in scene.needles}) == 3  # needles in distinct quarters
    frames = syn.render(scene)
    assert np.array_equal(frames[0::2], frames[1::2])  # static within each 2-frame tubelet


def test_frame_range_and_bad_arguments(tmp_path):
    out = syn.generate(tmp_path / "r", "train", 3, frames=(16, 32), seed=0, num_distractors=2, progress=False)
    assert {r["num_frames"] for r in syn.read_jsonl(out.jsonl)} <= {16, 24, 32}
    with pytest.raises(ValueError, match="multiple of 8"):
        syn.generate(tmp_path / "x", "train", 1, frames=12, progress=False)
    with pytest.raises(ValueError, match="kinds"):
        syn.generate(tmp_path / "x", "train", 1, frames=16, kinds=("size",), progress=False)
    with pytest.raises(ValueError, match="grid"):
        syn.make_scene(np.random.default_rng(0), 16, num_needles=3, num_distractors=14)


def test_videomme_layout(tiny):
    assert tiny.videomme == tiny.root / "videomme" / "test-00000-of-00001.parquet"
    df = pd.read_parquet(tiny.videomme)
    assert list(df.columns) == VIDEOMME_COLUMNS
    records = syn.read_jsonl(tiny.jsonl)
    assert len(df) == len(records)
    for row, rec in zip(df.itertuples(), records, strict=True):
        assert list(row.options) == [f"{x}. {t}" for x, t in zip("ABCD", rec["options"], strict=True)]
        assert row.answer == rec["answer_letter"] and row.answer in "ABCD"
        assert row.duration in {"short", "medium", "long"} and row.question == rec["question"]
        assert read_frames(tiny.root / "data" / f"{row.videoID}.mp4", 4).shape == (4, 64, 64, 3)
    assert df["video_id"].tolist() == ["001"] * 3 + ["002"] * 3
    assert df["question_id"].tolist()[:3] == ["001-1", "001-2", "001-3"]


def test_train_split_has_no_videomme_layout(many):
    assert many.videomme is None and not (many.root / "videomme").exists()


def test_caption_and_shortcut_baseline():
    objects = [["ring", "red", 4], ["square", "blue", 30], ["plus", "cyan", 12]]
    assert syn.caption(objects) == "ring red, square blue, plus cyan"
    rec = {"kind": "colour", "options": ["red", "green", "blue", "white"], "answer_letter": "A", "objects": objects}
    # two options (red, blue) appear in the video: a question-blind guesser is right half the time
    assert syn.shortcut_accuracy([rec], expected=True) == 0.5
    assert syn.shortcut_accuracy([rec], strategy="rarest", expected=True) == 1.0  # red is the rarest
    assert syn.shortcut_accuracy([rec] * 50, seed=1) == syn.shortcut_accuracy([rec] * 50, seed=1)
    assert syn.shortcut_accuracy([]) == 0.0


def test_shortcut_is_at_chance_on_generated_data(many):
    records = syn.read_jsonl(many.jsonl)
    assert syn.shortcut_accuracy(records, expected=True) == pytest.approx(0.25)


def test_ensure_dataset_generates_once(tmp_path, monkeypatch):
    kw = {"split": "val", "num_videos": 1, "frames": 16, "seed": 0, "progress": False, "num_distractors": 2}
    root = syn.ensure_dataset(tmp_path, **kw)
    assert (root / ".complete").is_file() and (root / "val.jsonl").is_file()
    assert not list(tmp_path.glob(".tmp-*"))

    def boom(*args, **kwargs):
        raise AssertionError("regenerated a complete cache")

    monkeypatch.setattr(syn, "generate", boom)
    assert syn.ensure_dataset(tmp_path, **kw) == root
    # a folder without the marker (interrupted non-atomic writer) is never trusted
    (root / ".complete").unlink()
    with pytest.raises(AssertionError, match="regenerated"):
        syn.ensure_dataset(tmp_path, **kw)


def test_cli_prints_what_it_wrote(tmp_path, capsys):
    syn.main(["--out", str(tmp_path / "c"), "--split", "train", "--num-videos", "1", "--frames", "16"])
    out = capsys.readouterr().out
    assert "wrote 1 videos" in out and "train.jsonl" in out and "shortcut" in out


def test_fixture_matches_generator(tmp_path):
    """The committed fixture is what tests/fixtures/README.md's command produces today."""
    for split, n in [("train", 4), ("test", 2)]:
        fixture = FIXTURE / split
        fresh = syn.generate(tmp_path / split, split, n, frames=16, seed=0, progress=False)
        assert fresh.jsonl.read_bytes() == (fixture / f"{split}.jsonl").read_bytes(), "regenerate the fixture"
        for rec in syn.read_jsonl(fixture / f"{split}.jsonl"):
            assert (fixture / rec["video"]).is_file()
    assert (FIXTURE / "test" / "videomme" / "test-00000-of-00001.parquet").is_file()
