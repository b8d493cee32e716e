"""Pretraining pieces: dense multi-question prompts and a resumable curriculum run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpft.data.prompts import FrameLabels
from hpft.data.synthetic import QUARTERS, make_scene, needle_quarter, quarter_question
from hpft.models.loading import load_vlm
from hpft.models.position_loss import TubeletProbe
from hpft.models.pretrain import Stage, dense_example, make_item, pretrain


@pytest.fixture(scope="module")
def tiny_omni():
    return load_vlm("tiny-omni")


def test_dense_example_labels_only_answers_and_every_answer_is_unambiguous(tiny_omni):
    _, tokenizer = tiny_omni
    scene = make_scene(np.random.default_rng(0), 8, num_needles=3, num_distractors=4)
    prompt = dense_example(tokenizer, scene, 64, np.random.default_rng(1), video_token_id=4)
    words = tokenizer.convert_ids_to_tokens(prompt.input_ids)
    answers = [w.strip("Ġ") for w, lab in zip(words, prompt.labels, strict=True) if lab != -100]
    assert answers[-1] == "</s>" and len(answers) >= 3  # at least one question per needle kind
    for i, label in enumerate(prompt.labels):
        if label != -100:
            assert label == prompt.input_ids[i] and not prompt.query_mask[i] and not prompt.visual_mask[i]
    assert sum(prompt.visual_mask) == 64 and not any(prompt.query_mask[: prompt.answer_start])
    glyph_colours = {}
    for track in scene.tracks:
        glyph_colours.setdefault(track.glyph, set()).add(track.colour)
    text = tokenizer.decode(prompt.input_ids)
    for glyph, colours in glyph_colours.items():
        asked = f"What colour is the {glyph}?" in text
        assert asked == (len(colours) == 1), glyph


def test_pretrain_resumes_where_it_stopped(tmp_path, tiny_omni):
    vlm, tokenizer = tiny_omni
    stages = (Stage("one", frames=8, num_needles=1, num_distractors=0, dense=1.0, max_steps=2, gate=None),)
    lines = []
    first = pretrain(vlm, tokenizer, tmp_path, stages, batch_size=2, eval_every=2, eval_items=4, save_every=1,
                     log=lines.append)  # fmt: skip
    assert first["steps"] == 2 and (tmp_path / "state.pt").exists()
    longer = (Stage("one", frames=8, num_needles=1, num_distractors=0, dense=1.0, max_steps=2, gate=None),
              Stage("two", frames=8, num_needles=2, num_distractors=1, dense=0.5, max_steps=1, gate=None))  # fmt: skip
    second = pretrain(vlm, tokenizer, tmp_path, longer, batch_size=2, eval_every=1, eval_items=4, log=lines.append)
    assert any("resumed at step 2" in line for line in lines)
    assert second["steps"] == 3 and [s["name"] for s in second["stages"]] == ["one", "two"]
    third = pretrain(vlm, tokenizer, tmp_path, longer, batch_size=2, eval_items=4, log=lines.append)
    assert third["steps"] == 3 and "curriculum complete" in lines[-1]


def test_time_budget_stops_mid_curriculum_and_says_where(tmp_path, tiny_omni):
    vlm, tokenizer = tiny_omni
    stages = (Stage("one", frames=8, num_needles=1, num_distractors=0, dense=1.0, max_steps=50, gate=None),)
    summary = pretrain(vlm, tokenizer, tmp_path, stages, batch_size=2, eval_items=4, time_budget_s=0.0, log=print)
    assert summary["steps"] == 0 and summary["stopped_in_stage"] == "one" and summary["stages"] == []


def test_dense_example_with_quarters_asks_when_each_unique_needle_appears(tiny_omni):
    _, tokenizer = tiny_omni
    scene = make_scene(np.random.default_rng(3), 16, num_needles=3, num_distractors=6)
    plain = tokenizer.decode(dense_example(tokenizer, scene, 128, np.random.default_rng(1), video_token_id=4).input_ids)
    prompt = dense_example(tokenizer, scene, 128, np.random.default_rng(1), video_token_id=4, quarters=True)
    text = tokenizer.decode(prompt.input_ids)
    assert "quarter" not in plain
    glyph_count = {}
    for track in scene.tracks:
        glyph_count.setdefault(track.glyph, set()).add(track.colour)
    for needle in scene.needles:
        question = quarter_question(needle.glyph)
        if len(glyph_count[needle.glyph]) > 1:
            assert question not in text
            continue
        answer = QUARTERS[needle_quarter(needle, 16)]
        assert f"{question} Answer: {answer}" in text, (question, answer)


def test_multi_length_stage_draws_one_length_per_batch(tmp_path, tiny_omni):
    vlm, tokenizer = tiny_omni
    stage = Stage("mixed", frames=(8, 16), num_needles=2, num_distractors=1, dense=0.5, max_steps=3, gate=None,
                  quarter_questions=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"pass the batch's `frames`"):
        make_item(tokenizer, stage, np.random.default_rng(0), 16, 4, dense=True)
    item, _ = make_item(tokenizer, stage, np.random.default_rng(0), 16, 4, dense=True, frames=16)
    assert item["pixel_values_videos"].shape[0] == 8  # 16 frames = 8 tubelets
    summary = pretrain(vlm, tokenizer, tmp_path, (stage,), batch_size=2, eval_every=3, eval_items=4, log=print)
    assert summary["steps"] == 3 and summary["stages"][0]["name"] == "mixed"


def test_start_stage_skips_the_stages_the_weights_already_learned(tmp_path, tiny_omni):
    vlm, tokenizer = tiny_omni
    stages = (Stage("done", frames=8, num_needles=1, num_distractors=0, dense=1.0, max_steps=5, gate=None),
              Stage("new", frames=8, num_needles=2, num_distractors=1, dense=0.5, max_steps=1, gate=None))  # fmt: skip
    summary = pretrain(vlm, tokenizer, tmp_path, stages, batch_size=2, eval_items=4, start_stage=1, log=print)
    assert summary["steps"] == 1 and [s["name"] for s in summary["stages"]] == ["new"]
    with pytest.raises(ValueError, match="start_stage"):
        pretrain(vlm, tokenizer, tmp_path / "x", stages, start_stage=2, log=print)


def test_dense_example_follows_the_frame_label_layout(tiny_omni):
    _, tokenizer = tiny_omni
    scene = make_scene(np.random.default_rng(3), 8, num_needles=2, num_distractors=2)
    plain = dense_example(tokenizer, scene, 64, np.random.default_rng(1), video_token_id=4)
    labelled = dense_example(tokenizer, scene, 64, np.random.default_rng(1), 4, frame_labels=FrameLabels(16))
    assert sum(labelled.visual_mask) == 64 and tokenizer.decode(labelled.input_ids).count(" Frame ") == 4
    extra = len(labelled) - len(plain)
    assert labelled.answer_start == plain.answer_start + extra and labelled.labels[extra:] == plain.labels
    assert labelled.query_mask[labelled.answer_start :] == plain.query_mask[plain.answer_start :]


def test_tubelet_probe_scores_the_tubelet_of_every_visual_token():
    probe = TubeletProbe(hidden_size=4, layer=1, max_tubelets=4)
    with torch.no_grad():
        probe.head.weight.copy_(10 * torch.eye(4))
        probe.head.bias.zero_()
    # 2 samples, 1 text token then 4 tubelets of 2 visual tokens; block 1's output names each token's tubelet.
    visual_mask = torch.tensor([[False] + [True] * 8] * 2)
    named = torch.zeros(2, 9, 4)
    named[:, 1:] = torch.eye(4).repeat_interleave(2, dim=0) * 100  # any scale: the probe normalises
    wrong = named.clone()
    wrong[:, 1:] = named[:, 1:].flip(1)  # the same features in the reverse order
    embeddings = torch.zeros(2, 9, 4)
    assert probe.loss((embeddings, embeddings, named), visual_mask, 2) < 1e-3
    assert probe.loss((embeddings, embeddings, wrong), visual_mask, 2) > 10
    with pytest.raises(ValueError, match="same whole number"):
        probe.loss((embeddings, embeddings, named), visual_mask, 3)
    with pytest.raises(ValueError, match="cannot read block 1"):
        probe.loss((embeddings, named), visual_mask, 2)
    with pytest.raises(ValueError, match="raise max_tubelets"):
        probe.loss((embeddings, embeddings, named), visual_mask, 1)


def test_tubelet_probe_can_name_the_quarter_of_the_video_instead():
    probe = TubeletProbe(hidden_size=4, layer=0, max_tubelets=8)
    with torch.no_grad():
        probe.head.weight.zero_()
        probe.head.weight[:4].copy_(10 * torch.eye(4))
        probe.head.bias.zero_()
    # 8 tubelets of 1 token: tubelets 0-1 are quarter 0, 2-3 quarter 1, ...; features name the quarter.
    visual_mask = torch.ones(1, 8, dtype=torch.bool)
    quarters = torch.eye(4).repeat_interleave(2, dim=0)[None] * 100  # (1, 8, 4)
    assert probe.loss((quarters, quarters), visual_mask, 1, target="quarter") < 1e-3
    assert probe.loss((quarters, quarters), visual_mask, 1, target="tubelet") > 1  # tubelets 1, 2, ... misnamed
    with pytest.raises(ValueError, match="multiple of 4 tubelets"):
        probe.loss((quarters, quarters), visual_mask, 4, target="quarter")
    with pytest.raises(ValueError, match="target must be one of"):
        probe.loss((quarters, quarters), visual_mask, 1, target="second")


def test_position_loss_trains_a_probe_that_resumes_with_the_run(tmp_path, tiny_omni):
    vlm, tokenizer = tiny_omni
    stages = (Stage("where", frames=8, num_needles=1, num_distractors=0, dense=1.0, max_steps=2, gate=None,
                    position_loss=0.5),)  # fmt: skip
    lines = []
    pretrain(vlm, tokenizer, tmp_path, stages, batch_size=2, eval_every=2, eval_items=4, log=lines.append)
    saved = torch.load(tmp_path / "state.pt", weights_only=False)
    assert saved["probe"] is not None and not any("probe" in key for key in saved["model"])
    assert "position loss" in lines[-1]
    logged = json.loads((tmp_path / "pretrain_log.jsonl").read_text().splitlines()[-1])
    assert 0 < logged["position_loss"] < 10
    plain = (Stage("where", frames=8, num_needles=1, num_distractors=0, dense=1.0, max_steps=2, gate=None),)
    with pytest.raises(ValueError, match="with a position loss"):
        pretrain(vlm, tokenizer, tmp_path, plain, batch_size=2, eval_items=4, log=print)
    longer = (*stages, Stage("more", frames=8, num_needles=2, num_distractors=1, dense=0.5, max_steps=1, gate=None))
    with pytest.raises(ValueError, match="name the tubelet of each token, not the quarter"):
        pretrain(vlm, tokenizer, tmp_path, longer, batch_size=2, eval_items=4, position_target="quarter", log=print)
    summary = pretrain(vlm, tokenizer, tmp_path, longer, batch_size=2, eval_items=4, log=lines.append)
    assert summary["steps"] == 3 and any("resumed at step 2" in line for line in lines)
    quarter_run = tmp_path / "quarter"
    pretrain(vlm, tokenizer, quarter_run, stages, batch_size=2, eval_items=4, position_target="quarter", log=print)
    assert torch.load(quarter_run / "state.pt", weights_only=False)["position_target"] == "quarter"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-stage", "when-one-object"], "add --frame-labels relative"),
        (["--from-stage", "when-one-object", "--frame-labels", "--position-target", "quarter"], "needs --frame-labels"),
        (["--from-stage", "when-lengths", "--to-stage", "format-16f"], "comes before --from-stage"),
    ],
)
def test_pretrain_script_refuses_a_run_that_cannot_learn_what_it_asks(args, message):
    script = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_tiny.py"
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
