"""Scores read the right tensors: Mamba-2 scan rebuilt from them, attention scores equal eager weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_prompt
from transformers.activations import ACT2FN

from hpft.reduction import scoring
from hpft.reduction.adapters.nemotron_h import NemotronHAdapter, block_kinds
from hpft.reduction.weights import effective_linear


def _capture_block_input(lm, index: int, run):
    """Run `run()` and return the hidden states block `index` received."""
    seen = {}
    handle = lm.model.layers[index].register_forward_pre_hook(lambda m, args: seen.setdefault("h", args[0]))
    try:
        run()
    finally:
        handle.remove()
    return seen["h"]


def _mamba_ssm_input(mixer, normed: torch.Tensor) -> torch.Tensor:
    """Reference: the SSM input x `(B, S, H, P)` after in_proj, conv and activation (oracle for the test)."""
    projected = mixer.in_proj(normed)
    xbc = projected[..., mixer.intermediate_size : mixer.intermediate_size + mixer.conv_dim].transpose(1, 2)
    conv = F.conv1d(
        xbc, mixer.conv1d.weight, mixer.conv1d.bias, padding=mixer.conv_kernel_size - 1, groups=mixer.conv_dim
    )[..., : normed.shape[1]]
    x = ACT2FN[mixer.activation](conv).transpose(1, 2)[..., : mixer.intermediate_size]
    return x.reshape(*normed.shape[:2], mixer.num_heads, mixer.head_dim)


def test_mamba_scan_rebuilt_from_captured_B_C_dt_A(tiny_lm):
    """With decay and no normalisation, sum_j M_ij x_j + D x_i equals the mixer's own scan output."""
    adapter = NemotronHAdapter(tiny_lm)
    index = block_kinds(tiny_lm.config).index("mamba", 1)  # a Mamba block deep in the stack
    mixer = tiny_lm.model.layers[index].mixer
    p = make_prompt(tiny_lm, question_lengths=(6,))
    scan = {}
    hook = mixer.norm.register_forward_hook(lambda m, args, out: scan.setdefault("y", args[0]))
    with torch.no_grad():
        hidden = _capture_block_input(tiny_lm, index, lambda: tiny_lm(inputs_embeds=p.inputs_embeds))
    hook.remove()
    seq = hidden.shape[1]
    every_row = torch.arange(seq)[None]
    with torch.no_grad():
        inputs = adapter.mamba_inputs(index, hidden, every_row)
        M = scoring.mamba2_implicit_attention(inputs.C_query, inputs.B, inputs.dt, every_row, A=inputs.A)
        x = _mamba_ssm_input(mixer, adapter.normed_input(index, hidden))
    rebuilt = torch.einsum("bhqs,bshp->bqhp", M, x.float()) + mixer.D.float()[:, None] * x.float()
    expected = scan["y"].reshape_as(rebuilt).float()
    assert torch.allclose(rebuilt, expected, atol=1e-4, rtol=1e-3), (rebuilt - expected).abs().max()
    # Dropping the decay must change the matrix (else the test would not see a wrong A)
    M_free = scoring.mamba2_implicit_attention(inputs.C_query, inputs.B, inputs.dt, every_row)
    assert not torch.allclose(M_free, M)


def test_attention_scores_equal_eager_attention_weights(tiny_lm_eager):
    lm = tiny_lm_eager
    adapter = NemotronHAdapter(lm)
    index = block_kinds(lm.config).index("attention", 2)
    attn_number = block_kinds(lm.config)[: index + 1].count("attention") - 1
    p = make_prompt(lm, question_lengths=(5, 8))
    with torch.no_grad():
        captured = {}

        def run():
            captured["out"] = lm(inputs_embeds=p.inputs_embeds, attention_mask=p.attention_mask, output_attentions=True)

        hidden = _capture_block_input(lm, index, run)
        weights = captured["out"].attentions[attn_number]  # (B, H, S, S)
    positions = torch.stack([torch.nonzero(row).squeeze(1)[:5] for row in p.query_mask])  # first 5 rows each
    valid = torch.ones_like(positions, dtype=torch.bool)
    valid[1, 3:] = False  # pretend sample 1 has fewer question rows: padding rows must not count
    inputs = adapter.attention_inputs(index, hidden, positions)
    scores = scoring.attention_visual_scores(
        inputs.query, inputs.key, positions, valid, p.attention_mask.bool(), p.visual_mask, inputs.scaling
    )
    for b in range(2):
        rows = weights[b][:, positions[b][valid[b]]]  # (H, Q_b, S)
        expected = rows.mean(dim=(0, 1)) * p.visual_mask[b]
        assert torch.allclose(scores[b], expected, atol=1e-6), (scores[b] - expected).abs().max()


def test_select_top_visual_keeps_text_and_order():
    visual = torch.tensor([[False, True, True, True, True, False], [False, True, True, True, True, False]])
    scores = torch.tensor([[9.0, 0.1, 0.9, 0.5, 0.7, 9.0], [0.0, 0.8, 0.2, 0.1, 0.9, 0.0]])
    index = scoring.select_top_visual(scores, visual, 2)
    assert index.tolist() == [[0, 2, 4, 5], [0, 1, 4, 5]]


def test_mamba_visual_scores_normalise_per_row():
    implicit = torch.rand(1, 2, 3, 6)
    visual = torch.tensor([[False, True, True, True, False, False]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    for normalize in ("abs_sum", "softmax"):
        s = scoring.mamba2_visual_scores(implicit, valid, visual, normalize)
        assert torch.allclose(s.sum(), torch.tensor(1.0)) and s[~visual].abs().sum() == 0
    with pytest.raises(ValueError, match="normalize"):
        scoring.mamba2_visual_scores(implicit, valid, visual, "l2")


def test_query_agnostic_baselines_ignore_text():
    hidden = torch.randn(2, 5, 4)
    visual = torch.tensor([[False, True, True, False, False]] * 2)
    for s in (
        scoring.norm_scores(hidden, visual),
        scoring.mean_pool_scores(hidden, visual),
        scoring.random_scores(visual, torch.Generator().manual_seed(0)),
    ):
        assert s.shape == (2, 5) and s[~visual].abs().sum() == 0
    assert torch.allclose(scoring.norm_scores(hidden, visual)[0, 1], hidden[0, 1].norm())


def test_effective_linear_folds_lora_delta(tiny_lm):
    peft = pytest.importorskip("peft")
    import copy

    lm = copy.deepcopy(tiny_lm)
    model = peft.get_peft_model(lm, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["in_proj", "q_proj"]))
    module = model.base_model.model.model.layers[0].mixer.in_proj
    torch.nn.init.normal_(module.lora_B["default"].weight)  # LoRA starts at zero delta: make it non-zero
    x = torch.randn(3, module.in_features)
    weight, bias = effective_linear(module, slice(10, 20))
    expected = module(x)[:, 10:20]
    assert torch.allclose(F.linear(x, weight, bias), expected, atol=1e-5)
    assert not torch.allclose(F.linear(x, effective_linear(module.base_layer, slice(10, 20))[0]), expected)


def test_decay_free_fast_path_equals_general_scores():
    generator = torch.Generator().manual_seed(0)
    batch, seq, visual_start, num_visual, groups, heads, state = 2, 30, 3, 20, 2, 6, 4
    C_query = torch.randn(batch, 5, groups, state, generator=generator)
    B = torch.randn(batch, seq, groups, state, generator=generator)
    dt = torch.rand(batch, seq, heads, generator=generator)
    positions = torch.tensor([[23, 24, 25, 26, 27], [23, 24, 25, 25, 25]])
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    visual = torch.zeros(batch, seq, dtype=torch.bool)
    visual[:, visual_start : visual_start + num_visual] = True
    general = scoring.mamba2_visual_scores(
        scoring.mamba2_implicit_attention(C_query, B, dt, positions), valid, visual, "abs_sum"
    )
    window = slice(visual_start, visual_start + num_visual)
    fast = scoring.mamba2_decay_free_visual_scores(C_query, B[:, window], dt[:, window], valid)
    assert torch.allclose(fast, general[:, window], atol=1e-6)
