"""The engine: parity with the model's forward, batching, cutting only visual tokens, gradients, decoding."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_prompt

from hpft.models.tiny import build_tiny_omni
from hpft.reduction import ReductionConfig, reduced_forward, reduced_generate, reduced_vlm_forward
from hpft.reduction.config import SCORERS

NONE = ReductionConfig(schedule="none")
QUARTER = ReductionConfig(schedule="low_to_high", keep=0.25)


def _run(lm, p, config, **kwargs):
    return reduced_forward(
        lm, p.inputs_embeds, p.visual_mask, p.query_mask, config, attention_mask=p.attention_mask, **kwargs
    )


def test_schedule_none_reproduces_model_forward(tiny_lm, prompt):
    with torch.no_grad():
        expected = tiny_lm(inputs_embeds=prompt.inputs_embeds, attention_mask=prompt.attention_mask).logits
        out = _run(tiny_lm, prompt, NONE)
    real = prompt.attention_mask.bool()
    assert out.logits.shape == expected.shape
    assert torch.allclose(out.logits[real], expected[real], atol=1e-5)
    assert out.realised_keep == 1.0 and out.kept_per_block == [48] * len(tiny_lm.model.layers)
    for i in range(2):  # each sample alone, unpadded
        single = prompt.sample(i)
        with torch.no_grad():
            alone = tiny_lm(inputs_embeds=single.inputs_embeds).logits
            ours = _run(tiny_lm, single, NONE).logits
        assert torch.allclose(ours, alone, atol=1e-5)


@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_batch_of_n_equals_n_of_1_under_reduction(tiny_lm, scorer):
    if scorer == "random":
        pytest.skip("random scores are drawn per batch shape; batch invariance does not apply")
    p = make_prompt(tiny_lm, num_visual=64, question_lengths=(4, 9, 6), seed=1)
    config = ReductionConfig(schedule="low_to_high", keep=0.4, scorer=scorer)
    with torch.no_grad():
        batched = _run(tiny_lm, p, config)
        for i in range(3):
            single = p.sample(i)
            alone = _run(tiny_lm, single, config)
            n = alone.logits.shape[1]
            assert torch.equal(batched.kept_index[i, :n], alone.kept_index[0])
            assert torch.allclose(batched.logits[i, :n], alone.logits[0], atol=1e-5)
    assert batched.kept_per_block == alone.kept_per_block


def test_keep_quarter_cuts_only_visual_and_meets_budget(tiny_lm, prompt):
    with torch.no_grad():
        out = _run(tiny_lm, prompt, QUARTER)
    assert abs(out.realised_keep - 0.25) <= 0.01, out.kept_per_block
    assert out.kept_per_block[0] == 48 and out.kept_per_block == sorted(out.kept_per_block, reverse=True)
    for i in range(2):
        kept = set(out.kept_index[i].tolist())
        non_visual = set(torch.nonzero(~prompt.visual_mask[i]).squeeze(1).tolist())
        assert non_visual <= kept, "a text, question, answer or padding token was cut"
        visual_kept = [j for j in kept if prompt.visual_mask[i, j]]
        assert len(visual_kept) == out.kept_per_block[-1]
        assert out.kept_index[i].tolist() == sorted(out.kept_index[i].tolist())


def test_cuts_follow_the_question(tiny_lm):
    """Two questions about the same video keep different visual tokens (the scores read the question)."""
    p = make_prompt(tiny_lm, question_lengths=(6, 6), seed=3)
    p.inputs_embeds[1] = p.inputs_embeds[0]
    p.inputs_embeds[1, -9:-3] = tiny_lm.get_input_embeddings()(torch.arange(6) + 40).detach()  # other question
    with torch.no_grad():
        out = _run(tiny_lm, p, QUARTER)
    assert not torch.equal(out.kept_index[0], out.kept_index[1])


def test_loss_backpropagates_into_lora_weights(tiny_lm, prompt):
    peft = pytest.importorskip("peft")
    lm = copy.deepcopy(tiny_lm).train()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "up_proj", "down_proj"]
    model = peft.get_peft_model(lm, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    for name, param in model.named_parameters():  # LoRA B starts at zero; make deltas visible to the scores
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    out = _run(model.base_model.model, prompt, QUARTER, labels=prompt.labels)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for kind in ("mixer.in_proj", "mixer.q_proj", "mixer.up_proj"):
        assert any(kind in n and g.abs().sum() > 0 for n, g in grads.items()), kind


def test_loss_matches_model_loss_without_reduction(tiny_lm, prompt):
    with torch.no_grad():
        single = prompt.sample(0)
        expected = tiny_lm(inputs_embeds=single.inputs_embeds, labels=single.labels).loss
        ours = _run(tiny_lm, single, NONE, labels=single.labels).loss
    assert torch.allclose(ours, expected, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients(tiny_lm, prompt):
    grads = []
    for checkpointing in (False, True):
        lm = copy.deepcopy(tiny_lm).train()
        if checkpointing:
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        _run(lm, prompt, QUARTER, labels=prompt.labels).loss.backward()
        grads.append(lm.model.layers[0].mixer.in_proj.weight.grad.clone())
    assert lm.model.layers[0].gradient_checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_greedy_decoding_from_reduced_cache_matches_fresh_forward(tiny_lm):
    p = make_prompt(tiny_lm, num_visual=64, question_lengths=(7,), answer=0, seed=5)
    steps = 5
    tokens, prefill = reduced_generate(tiny_lm, p.inputs_embeds, p.visual_mask, p.query_mask, QUARTER, steps)
    assert tokens.shape == (1, steps) and prefill.realised_keep < 1
    # A fresh reduced forward over prompt + generated tokens (which are text, not question) predicts them.
    with torch.no_grad():
        extra = tiny_lm.get_input_embeddings()(tokens)
        embeds = torch.cat([p.inputs_embeds, extra], dim=1)
        pad = torch.zeros(1, steps, dtype=torch.bool)
        fresh = reduced_forward(
            tiny_lm, embeds, torch.cat([p.visual_mask, pad], 1), torch.cat([p.query_mask, pad], 1), QUARTER
        )
    predicted = fresh.logits[0, -steps - 1 : -1].argmax(-1)
    assert predicted.tolist() == tokens[0].tolist()
    assert torch.equal(fresh.kept_index[0, : prefill.kept_index.shape[1]], prefill.kept_index[0])


def test_vlm_wrapper_matches_vlm_forward_and_reduces():
    vlm = build_tiny_omni(seed=0)
    video = torch.rand(1, 4, 6, 64, 64)  # 4 tubelets of 2 frames -> 64 visual tokens
    tok = vlm.config.image_token_id
    ids = torch.tensor([[1, 2, 3] + [tok] * 64 + [10, 11, 12, 13, 20, 21]])
    query = torch.zeros_like(ids, dtype=torch.bool)
    query[0, 67:71] = True
    with torch.no_grad():
        expected = vlm(input_ids=ids, pixel_values_videos=video).logits
        full = reduced_vlm_forward(vlm, ids, video, query, NONE)
        reduced = reduced_vlm_forward(vlm, ids, video, query, QUARTER)
    assert torch.allclose(full.logits, expected, atol=1e-5)
    assert reduced.kept_per_block[0] == 64 and abs(reduced.realised_keep - 0.25) <= 0.01


def test_bad_inputs_are_named(tiny_lm, prompt):
    with pytest.raises(ValueError, match="keep"):
        ReductionConfig(keep=1.5)
    with pytest.raises(ValueError, match="scorer"):
        ReductionConfig(scorer="fastv")
    uneven = prompt.visual_mask.clone()
    uneven[1, 3] = False
    with pytest.raises(ValueError, match="same number of visual tokens"):
        reduced_forward(tiny_lm, prompt.inputs_embeds, uneven, prompt.query_mask, QUARTER)
    left = prompt.attention_mask.flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        reduced_forward(tiny_lm, prompt.inputs_embeds, prompt.visual_mask, prompt.query_mask, QUARTER, left)
    early = prompt.query_mask.clone()
    early[:, 1] = True
    with pytest.raises(ValueError, match="after the last visual token"):
        reduced_forward(tiny_lm, prompt.inputs_embeds, prompt.visual_mask, early, QUARTER)
    with pytest.raises(ValueError, match="question tokens"):
        reduced_forward(tiny_lm, prompt.inputs_embeds, prompt.visual_mask, torch.zeros_like(prompt.query_mask), QUARTER)
