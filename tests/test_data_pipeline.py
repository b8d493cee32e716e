"""Tokenizer, prompt masks, collation, the needle dataset/DataModule and the embedded tiny-omni folder."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hpft.data import synthetic
from hpft.data.collate import VideoQACollator
from hpft.data.datamodule import NeedleDataModule, NeedleQADataset
from hpft.data.prompts import (
    FrameLabels,
    encode_example,
    encode_option_candidates,
    format_query,
    option_token_ids,
)
from hpft.data.video import VideoError
from hpft.models.loading import TINY_OMNI_DIR, load_vlm
from hpft.models.processor import (
    FRAME_LABELS_KEY,
    frame_labels_for,
    frames_to_pixel_values,
    tiny_video_processor,
    tokens_per_tubelet,
)
from hpft.models.tiny_omni import TINY_OMNI_PATTERN, check_schedules_reachable, tiny_omni_folder_config
from hpft.models.tokenizer import SPECIAL_TOKENS, synthetic_corpus, train_tokenizer
from hpft.reduction import ReductionConfig, reduced_vlm_forward
from hpft.reduction.vlm import embed_video_prompt

FIXTURE = Path(__file__).parent / "fixtures" / "needle_tiny"
TRAIN_JSONL = FIXTURE / "train" / "train.jsonl"
QUESTION = "What colour is the bars?"
OPTIONS = ["magenta", "red", "blue", "orange"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(synthetic_corpus())


@pytest.fixture(scope="module")
def tiny_omni():
    return load_vlm(TINY_OMNI_DIR)


def _fixture_rows() -> list[dict]:
    return [json.loads(line) for line in TRAIN_JSONL.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_determinism(tokenizer):
    corpus = synthetic_corpus()
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert tokenizer.video_token_id == 4 and tokenizer.pad_token_id == 1
    for text in corpus:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text
    shuffled = corpus * 2
    random.Random(0).shuffle(shuffled)
    assert train_tokenizer(shuffled).get_vocab() == tokenizer.get_vocab()
    assert synthetic_corpus() == corpus


def test_tokenizer_covers_unseen_generated_questions(tokenizer):
    for seed in range(100, 120):
        rng = np.random.default_rng(seed)
        scene = synthetic.make_scene(rng, 64, num_needles=4)
        for q in synthetic.make_questions(scene, rng, ["A", "B", "C", "D"]):
            p = encode_example(tokenizer, q["question"], q["options"], 16, q["answer"])
            assert tokenizer.unk_token_id not in p.input_ids, q


# ----------------------------------------------------------------------------------------------- prompts


def test_prompt_masks_layout_and_labels(tokenizer):
    num_visual = 8 * 16  # 16 frames = 8 tubelets x 16 tokens
    p = encode_example(tokenizer, QUESTION, OPTIONS, num_visual, answer="orange")
    ids, n = p.input_ids, len(p)
    assert len(p.visual_mask) == len(p.query_mask) == len(p.labels) == n
    assert p.num_visual == num_visual == sum(i == tokenizer.video_token_id for i in ids)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    visual = [i for i in range(n) if p.visual_mask[i]]
    query = [i for i in range(n) if p.query_mask[i]]
    answer = [i for i in range(n) if p.labels[i] != -100]
    assert visual == list(range(visual[0], visual[-1] + 1))  # contiguous
    assert query == list(range(visual[-1] + 1, p.answer_start))  # right after the video, up to the answer
    assert answer == list(p.answer_positions) == list(range(p.answer_start, n))
    assert not set(query) & set(answer) and not set(query) & set(visual) and not set(visual) & set(answer)
    assert all(p.labels[i] == ids[i] for i in answer)
    assert tokenizer.decode([ids[i] for i in query]) == format_query(QUESTION, OPTIONS)
    assert tokenizer.decode([ids[i] for i in answer]) == " orange</s>"
    # Parts tokenised separately give the ids of the whole string.
    text = tokenizer.decode(ids)
    assert text.startswith("<s>Video:<video>") and text.endswith("D. orange Answer: orange</s>")
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    prompt_only = encode_example(tokenizer, QUESTION, OPTIONS, num_visual, answer=None)
    assert prompt_only.input_ids == ids[: p.answer_start] and set(prompt_only.labels) == {-100}


def test_prompt_with_frame_labels_puts_each_tubelet_after_its_label(tokenizer):
    plain = encode_example(tokenizer, QUESTION, OPTIONS, 4 * 16, answer="orange")
    p = encode_example(tokenizer, QUESTION, OPTIONS, 4 * 16, answer="orange", frame_labels=FrameLabels(16))
    assert p.num_visual == 64 == sum(i == tokenizer.video_token_id for i in p.input_ids)
    visual = [i for i, v in enumerate(p.visual_mask) if v]
    runs = [visual[k * 16 : (k + 1) * 16] for k in range(4)]
    assert all(run == list(range(run[0], run[0] + 16)) for run in runs)
    text = tokenizer.decode(p.input_ids)
    assert text.startswith("<s>Video: Frame 1:<video>") and " Frame 7:<video>" in text
    between = [tokenizer.decode(p.input_ids[a[-1] + 1 : b[0]]) for a, b in zip(runs, runs[1:], strict=False)]
    assert between == [" Frame 3:", " Frame 5:", " Frame 7:"]
    # Labels are neither visual nor query tokens; the query and answer are the plain layout's.
    query = [i for i, q in enumerate(p.query_mask) if q]
    assert query[0] == visual[-1] + 1 and not any(p.query_mask[: visual[-1]])
    assert p.input_ids[query[0] :] == plain.input_ids[plain.answer_start - len(query) :]
    assert p.labels[p.answer_start :] == plain.labels[plain.answer_start :]
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == p.input_ids
    with pytest.raises(ValueError, match="whole number of 16-token tubelets"):
        encode_example(tokenizer, QUESTION, OPTIONS, 40, answer=None, frame_labels=FrameLabels(16))


def test_relative_frame_labels_say_where_each_tubelet_starts(tokenizer):
    def labels(num_tubelets):
        p = encode_example(tokenizer, QUESTION, OPTIONS, num_tubelets * 16, answer=None,
                           frame_labels=FrameLabels(16, relative=True))  # fmt: skip
        text = tokenizer.decode([i for i, v in zip(p.input_ids, p.visual_mask, strict=True) if not v])
        assert p.num_visual == num_tubelets * 16 and tokenizer(text, add_special_tokens=False)["input_ids"]
        return text.split(" Question:")[0].removeprefix("<s>Video:")

    assert labels(4) == " Frame 1 at 00%: Frame 3 at 25%: Frame 5 at 50%: Frame 7 at 75%:"
    sixteen = labels(16)  # 32 frames: the start of each quarter is where its label says 25, 50, 75
    assert " Frame 3 at 06%:" in sixteen and " Frame 9 at 25%:" in sixteen and sixteen.endswith(" Frame 31 at 93%:")
    assert " Frame 17 at 50%:" in sixteen and " Frame 25 at 75%:" in sixteen


def test_frame_labels_come_from_the_model_config(tiny_omni):
    vlm, tok = tiny_omni
    # The committed tiny-omni was trained with relative labels.
    assert frame_labels_for(vlm.config) == FrameLabels(16, 2, relative=True)
    plain_config = copy.deepcopy(vlm.config)
    setattr(plain_config, FRAME_LABELS_KEY, False)
    assert frame_labels_for(plain_config) is None  # plain prompts
    config = copy.deepcopy(vlm.config)
    setattr(config, FRAME_LABELS_KEY, True)
    assert frame_labels_for(config) == FrameLabels(tokens_per_tubelet=16, frames_per_tubelet=2)
    assert frame_labels_for(config, per_tubelet=4) == FrameLabels(tokens_per_tubelet=4, frames_per_tubelet=2)
    for style, relative in (("absolute", False), ("relative", True)):
        setattr(config, FRAME_LABELS_KEY, style)
        assert frame_labels_for(config) == FrameLabels(16, 2, relative=relative)
    setattr(config, FRAME_LABELS_KEY, "seconds")
    with pytest.raises(ValueError, match="video_frame_labels='seconds' is not a prompt layout"):
        frame_labels_for(config)
    setattr(config, FRAME_LABELS_KEY, True)

    def first_val_batch(model_config):
        dm = NeedleDataModule(data_dir=str(FIXTURE), val_split="test", num_frames=16, batch_size=1)
        dm.bind(tokenizer=tok, model_config=model_config).setup("validate")
        return next(iter(dm.val_dataloader()))

    plain, labelled = first_val_batch(plain_config), first_val_batch(config)
    assert int(labelled["visual_mask"].sum()) == 128 and tok.decode(labelled["input_ids"][0]).count(" Frame ") == 8
    with torch.no_grad():  # the model fills the 128 scattered placeholders with the same video tokens, in order
        plain_embeds, plain_visual = embed_video_prompt(vlm, plain["input_ids"], plain["pixel_values_videos"])
        embeds, visual = embed_video_prompt(vlm, labelled["input_ids"], labelled["pixel_values_videos"])
        assert visual.equal(labelled["visual_mask"]) and torch.equal(embeds[visual], plain_embeds[plain_visual])
        out = _reduced(vlm, labelled)
    assert torch.isfinite(out.loss) and out.kept_per_block[0] == 128


def _reduced(vlm, batch):
    """`reduced_vlm_forward` on a collated batch under the default reduction (low_to_high, keep 0.25)."""
    return reduced_vlm_forward(
        vlm,
        batch["input_ids"],
        batch["pixel_values_videos"],
        batch["query_mask"],
        ReductionConfig(),
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    )


def test_prompt_rejects_bad_input(tokenizer):
    with pytest.raises(ValueError, match="4 option texts"):
        encode_example(tokenizer, QUESTION, OPTIONS[:3], 16, "red")
    with pytest.raises(ValueError, match="placeholder"):
        encode_example(tokenizer, "What is <video>?", OPTIONS, 16, "red")
    with pytest.raises(ValueError, match="num_visual"):
        encode_example(tokenizer, QUESTION, OPTIONS, 0, "red")


def test_option_candidates_share_prompt_and_score_option_tokens(tokenizer):
    cands = encode_option_candidates(tokenizer, QUESTION, OPTIONS, 32)
    truth = encode_example(tokenizer, QUESTION, OPTIONS, 32, answer="orange")
    assert len(cands) == 4 and cands[3].input_ids == truth.input_ids and cands[3].labels == truth.labels
    for cand, option, ids in zip(cands, OPTIONS, option_token_ids(tokenizer, OPTIONS), strict=True):
        assert cand.input_ids[: cand.answer_start] == truth.input_ids[: truth.answer_start]
        assert [cand.input_ids[i] for i in cand.answer_positions] == ids
        assert tokenizer.decode(ids) == f" {option}</s>"
        assert cand.query_mask == truth.query_mask[: len(cand)] + [False] * (len(cand) - len(truth))
    no_eos = encode_option_candidates(tokenizer, QUESTION, OPTIONS, 32, with_eos=False)
    assert all(c.input_ids[-1] != tokenizer.eos_token_id for c in no_eos)


# --------------------------------------------------------------------------------------- collate, dataset


def test_collator_pads_on_the_right(tokenizer):
    short = encode_example(tokenizer, "Which shape is red?", ["ring", "plus", "bars", "cross"], 16, "plus")
    long = encode_example(
        tokenizer, "In which quarter of the video does the ring appear?", synthetic.QUARTERS, 16, "third"
    )
    items = [
        {
            "id": f"s{i}",
            "kind": k,
            "prompt": p,
            "pixel_values_videos": torch.rand(2, 6, 64, 64),
            "answer_index": a,
            "candidates": [[5], [6], [7], [8]],
        }
        for i, (k, p, a) in enumerate([("shape", short, 1), ("quarter", long, 2)])
    ]
    batch = VideoQACollator(pad_id=tokenizer.pad_token_id)(items)
    seq = len(long)
    assert len(short) < seq and batch["input_ids"].shape == (2, seq)
    assert batch["pixel_values_videos"].shape == (2, 2, 6, 64, 64)
    assert batch["attention_mask"][0].tolist() == [1] * len(short) + [0] * (seq - len(short))
    assert batch["input_ids"][0, len(short) :].eq(tokenizer.pad_token_id).all()
    assert batch["labels"][0, len(short) :].eq(-100).all()
    assert not batch["query_mask"][0, len(short) :].any() and not batch["visual_mask"][0, len(short) :].any()
    assert batch["input_ids"][1].tolist() == long.input_ids and batch["labels"][1].tolist() == long.labels
    assert batch["prompt_len"].tolist() == [short.answer_start, long.answer_start]
    assert batch["answer_index"].tolist() == [1, 2] and batch["id"] == ["s0", "s1"]
    assert batch["kind"] == ["shape", "quarter"] and batch["candidates"][0] == [[5], [6], [7], [8]]
    assert batch["query_mask"].dtype == batch["visual_mask"].dtype == torch.bool
    with pytest.raises(ValueError, match="same tubelets"):
        VideoQACollator(0)([items[0], {**items[1], "pixel_values_videos": torch.rand(3, 6, 64, 64)}])


def test_dataset_reads_fixture_with_decord(tokenizer):
    ds = NeedleQADataset(TRAIN_JSONL, 16, tokenizer, tokens_per_tubelet=16, video_token_id=4, image_size=64)
    rows = _fixture_rows()
    assert len(ds) == len(rows) == 12
    item = ds[0]
    pixels = item["pixel_values_videos"]
    assert pixels.shape == (8, 6, 64, 64) and pixels.dtype == torch.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0.5
    assert item["prompt"].num_visual == 8 * 16 == ds.num_visual
    assert "ABCD"[item["answer_index"]] == rows[0]["answer_letter"] and item["id"] == rows[0]["id"]
    assert len(item["candidates"]) == 4 and item["kind"] == rows[0]["kind"]


def test_malformed_jsonl_row_names_file_line_and_field(tmp_path, tokenizer):
    good = _fixture_rows()[0]
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(good),
        json.dumps({**good, "options": good["options"][:3]}),
        "{not json",
        "",
        json.dumps({**good, "answer": "purple"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "videos").mkdir()
    shutil.copy(FIXTURE / "train" / good["video"], tmp_path / good["video"])
    with pytest.raises(ValueError) as err:
        NeedleQADataset(path, 16, tokenizer, 16, 4)
    message = str(err.value)
    assert f"{path}:2: field 'options'" in message and f"{path}:3: not valid JSON" in message
    assert f"{path}:5: field 'answer'" in message and f"{path}:1" not in message and "Fix:" in message


def test_missing_and_corrupt_videos_raise_video_error(tmp_path, tokenizer):
    good = _fixture_rows()[0]
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({**good, "video": "videos/missing.mp4"}) + "\n")
    with pytest.raises(VideoError, match="missing.mp4"):
        NeedleQADataset(path, 16, tokenizer, 16, 4)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "missing.mp4").write_bytes(b"\x00not a video" * 100)
    ds = NeedleQADataset(path, 16, tokenizer, 16, 4)
    with pytest.raises(VideoError, match="missing.mp4"):
        ds[0]


# ----------------------------------------------------------------------------------------- processor, model


def test_pixel_values_match_transformers_video_processor(tiny_omni):
    vlm, _ = tiny_omni
    frames = np.random.default_rng(0).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    ours = frames_to_pixel_values(frames)
    theirs = tiny_video_processor(vlm.config)(videos=[frames], return_tensors="pt")["pixel_values_videos"]
    assert ours.shape == (1, 4, 6, 64, 64) and torch.equal(ours, theirs)
    # Channel 3k + c of tubelet t is channel c of frame 2t + k.
    assert torch.equal(ours[0, 1, 3:6], torch.from_numpy(frames[3]).permute(2, 0, 1).float() / 255)
    assert tokens_per_tubelet(vlm.config) == 16


def test_tiny_omni_folder_matches_builder(tiny_omni, tokenizer):
    vlm, loaded_tok = tiny_omni
    files = {p.name: p.stat().st_size for p in TINY_OMNI_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "video_preprocessor_config.json", "README.md"} <= set(
        files
    )
    assert sum(files.values()) <= 30 * 1024 * 1024
    assert loaded_tok.get_vocab() == tokenizer.get_vocab()  # the folder's tokenizer is the one the code builds
    cfg = vlm.config
    assert cfg.model_type == "nemotron_h_omni" and cfg.video_pruning_rate == 0
    assert cfg.text_config.vocab_size % 8 == 0 and cfg.text_config.vocab_size >= len(loaded_tok)
    assert cfg.image_token_id == cfg.video_token_id == loaded_tok.video_token_id
    expected = tiny_omni_folder_config(cfg.text_config.vocab_size, 4, 1, 2, 3).text_config
    assert cfg.text_config.layers_block_type == expected.layers_block_type
    assert len(TINY_OMNI_PATTERN) >= 10 and set(check_schedules_reachable(TINY_OMNI_PATTERN)) >= {"step", "one_shot"}


def test_tiny_omni_runs_a_fixture_batch_under_reduction(tiny_omni):
    vlm, tok = tiny_omni
    dm = NeedleDataModule(data_dir=str(FIXTURE), val_split="test", test_split="test", num_frames=16, batch_size=3)
    dm.bind(tokenizer=tok, model_config=vlm.config)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values_videos"].shape == (3, 8, 6, 64, 64) and dm.num_visual == 128
    assert batch["visual_mask"].sum(1).tolist() == [128] * 3
    assert batch["input_ids"].eq(vlm.config.image_token_id).equal(batch["visual_mask"])
    with torch.no_grad():
        out = _reduced(vlm, batch)
    assert torch.isfinite(out.loss) and abs(out.realised_keep - 0.25) <= 0.01
    assert out.kept_per_block[0] == 128 and out.kept_per_block[-1] < 128


def test_load_vlm_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_vlm(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------- datamodule


def test_datamodule_requires_bind_and_shuffles_reproducibly(tiny_omni):
    vlm, tok = tiny_omni
    dm = NeedleDataModule(data_dir=str(FIXTURE), val_split="test", num_frames=16, batch_size=2, seed=3)
    with pytest.raises(RuntimeError, match=r"datamodule\.bind\(tokenizer="):
        dm.setup("fit")

    def order(seed):
        dm = NeedleDataModule(data_dir=str(FIXTURE), val_split="test", num_frames=16, batch_size=4, seed=seed)
        dm.bind(tokenizer=tok, model_config=vlm.config).setup("fit")
        loader = dm.train_dataloader()  # the order is the sampler's: read it without decoding videos
        return [dm.datasets["train"].rows[i]["id"] for i in loader.sampler]

    assert order(3) == order(3) and sorted(order(3)) == sorted(r["id"] for r in _fixture_rows())
    assert order(3) != order(4)
    missing = NeedleDataModule(data_dir=str(FIXTURE), val_split="nope", num_frames=16).bind(tok, vlm.config)
    with pytest.raises(FileNotFoundError, match="'nope' not found"):
        missing.setup("validate")


def test_datamodule_generates_into_cache(tmp_path, monkeypatch, tiny_omni):
    vlm, tok = tiny_omni
    monkeypatch.setenv("HPFT_CACHE", str(tmp_path))
    dm = NeedleDataModule(
        data_dir=None,
        train_videos=1,
        val_videos=1,
        test_split=None,
        num_frames=8,
        batch_size=4,
        generator_kwargs={"num_distractors": 2},
    )
    dm.bind(tokenizer=tok, model_config=vlm.config)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.split_file("train").is_relative_to(tmp_path / "needle")
    batch = next(iter(dm.val_dataloader()))
    assert batch["pixel_values_videos"].shape == (3, 4, 6, 64, 64) and len(batch["id"]) == 3
