"""Kernel guards and block checkpointing on CPU.

A CPU model never reaches the mamba-ssm / causal-conv1d kernels, even where they import: faked here by rebuilding
transformers' kernel globals exactly as its decorator does when the packages are installed, with kernels that raise.
Block checkpointing (`load_vlm(gradient_checkpointing=True)`) composes with LoRA and the reduction engine.
"""

from __future__ import annotations

import inspect
import sys
import types

import pytest
import torch
import transformers.models.nemotron_h.modeling_nemotron_h as modeling
from conftest import make_prompt
from transformers.integrations.hub_kernels import use_kernel_func_from_hub_with_fallback

from hpft.bench import build_train_model
from hpft.models import kernels
from hpft.models.loading import load_vlm
from hpft.models.tiny import build_tiny_decoder
from hpft.peft_setup import LoraSpec, set_frozen_eval
from hpft.reduction import ReductionConfig, reduced_forward, reduced_generate, reduced_vlm_forward

NONE = ReductionConfig(schedule="none")
QUARTER = ReductionConfig(schedule="low_to_high", keep=0.25)

# transformers' kernel global -> (function name in the package, package), as modeling_nemotron_h decorates them.
KERNEL_SOURCES = {
    "causal_conv1d_fn": ("causal_conv1d_fn", "causal_conv1d"),
    "causal_conv1d_update": ("causal_conv1d_update", "causal_conv1d"),
    "mamba2_split_conv1d_scan_combined": ("mamba_split_conv1d_scan_combined", "mamba_ssm"),
    "mamba2_selective_state_update": ("selective_state_update", "mamba_ssm"),
    "mamba2_chunk_scan": ("mamba_chunk_scan_combined", "mamba_ssm"),
}


class FakeKernelCalled(RuntimeError):
    """Raised by a faked CUDA kernel."""


def install_fake_kernels(monkeypatch) -> list[str]:
    """Importable fake `mamba_ssm` / `causal_conv1d`, and the kernel globals rebuilt as transformers builds them then.

    Returns:
        The list the fake kernels append their names to when called (before raising).
    """
    calls: list[str] = []

    def fake(name):
        def kernel(*args, **kwargs):
            calls.append(name)
            raise FakeKernelCalled(f"CUDA kernel {name} called with {type(args[0]).__name__} on CPU")

        return kernel

    for package in ("mamba_ssm", "causal_conv1d"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    for global_name, (func, package) in KERNEL_SOURCES.items():
        setattr(sys.modules[package], func, fake(func))
        reference = inspect.unwrap(getattr(modeling, global_name))
        rebuilt = use_kernel_func_from_hub_with_fallback(func, package)(reference)
        assert kernels.uses_fast_kernel(rebuilt), global_name  # the fake really is what transformers would bind
        monkeypatch.setattr(modeling, global_name, rebuilt)
    return calls


def _train_step(lm, prompt):
    """Loss and in_proj weight gradient of one training-mode forward (the fused-kernel branch) with labels."""
    lm.train()
    lm.zero_grad(set_to_none=True)
    out = reduced_forward(
        lm,
        prompt.inputs_embeds,
        prompt.visual_mask,
        prompt.query_mask,
        QUARTER,
        attention_mask=prompt.attention_mask,
        labels=prompt.labels,
    )
    out.loss.backward()
    return out.loss.detach(), lm.model.layers[0].mixer.in_proj.weight.grad.clone()


def spy_checkpoints(blocks) -> list[int]:
    """Record the index of each block whose forward really goes through its checkpoint function."""
    used: list[int] = []
    for i, block in enumerate(blocks):

        def spy(*args, _i=i, _inner=block._gradient_checkpointing_func, **kwargs):
            used.append(_i)
            return _inner(*args, **kwargs)

        block._gradient_checkpointing_func = spy
    return used


def test_every_kernel_global_is_found():
    assert set(kernels.fallback_functions(modeling)) == set(KERNEL_SOURCES)


def test_unguarded_cpu_model_reaches_the_fake_kernels(monkeypatch):
    lm = build_tiny_decoder(seed=0)
    prompt = make_prompt(lm)
    calls = install_fake_kernels(monkeypatch)
    with pytest.raises(FakeKernelCalled):
        _train_step(lm, prompt)
    assert calls == ["mamba_split_conv1d_scan_combined"]


def test_force_torch_path_keeps_cpu_models_on_the_reference(monkeypatch):
    lm = build_tiny_decoder(seed=0)
    prompt = make_prompt(lm, question_lengths=(5,))
    expected_loss, expected_grad = _train_step(lm, prompt)
    lm.eval()
    args = (prompt.inputs_embeds, prompt.visual_mask, prompt.query_mask, QUARTER)
    expected_tokens, expected_prefill = reduced_generate(lm, *args, 3)

    calls = install_fake_kernels(monkeypatch)
    assert kernels.force_torch_path(lm) is lm
    loss, grad = _train_step(lm, prompt)  # training: fused-kernel branch, then the unfused torch path
    lm.eval()
    tokens, prefill = reduced_generate(lm, *args, 3)  # prefill with a cache, then recurrent decoding steps
    assert calls == []
    assert torch.equal(loss, expected_loss) and torch.equal(grad, expected_grad)
    assert torch.equal(tokens, expected_tokens) and torch.equal(prefill.logits, expected_prefill.logits)


def test_dispatch_routes_by_device(monkeypatch):
    module = types.ModuleType("fake_pkg")
    module.kernel = lambda x, **kwargs: "fast"
    monkeypatch.setitem(sys.modules, "fake_pkg", module)

    def reference(x, bias=None, **kwargs):
        return ("reference", bias, sorted(kwargs))

    dispatch = kernels._DeviceDispatch(use_kernel_func_from_hub_with_fallback("kernel", "fake_pkg")(reference))
    assert kernels.uses_fast_kernel(dispatch) and inspect.unwrap(dispatch) is reference
    # The meta device stands in for CUDA, which this machine may not have.
    monkeypatch.setattr(kernels, "FAST_DEVICE_TYPES", ("meta",))
    assert dispatch(torch.empty(2, device="meta")) == "fast"
    # Off the fast device: the reference, with only the keywords it declares (as transformers passes them).
    assert dispatch(torch.zeros(2), bias=1, z=None) == ("reference", 1, [])
    with kernels.torch_path_only(torch.nn.Linear(1, 1)):
        assert dispatch(torch.empty(2, device="meta"))[0] == "reference"
    assert dispatch(torch.empty(2, device="meta")) == "fast"
    with pytest.raises(ValueError, match="packed sequences"):
        dispatch(torch.zeros(2), cu_seqlens=torch.tensor([0, 2]))


def test_load_vlm_guards_kernels_and_checkpoints_the_language_model_only():
    vlm, _ = load_vlm("tiny-omni", gradient_checkpointing=True)
    guarded = kernels.fallback_functions(modeling)
    assert all(isinstance(fn, kernels._DeviceDispatch) for fn in guarded.values())
    kernels.force_torch_path(vlm)  # idempotent: the same dispatchers stay
    assert kernels.fallback_functions(modeling) == guarded
    assert all(block.gradient_checkpointing for block in vlm.language_model.model.layers)
    others = [m for n, m in vlm.named_modules() if not n.startswith("language_model")]
    assert not any(getattr(m, "gradient_checkpointing", False) for m in others)
    # No forward hook makes the frozen embeddings' output require grad (reentrant checkpointing's workaround).
    LoraSpec().apply(vlm)
    assert not vlm.get_input_embeddings()(torch.tensor([[1, 2]])).requires_grad
    plain, _ = load_vlm("tiny-omni")
    assert not any(block.gradient_checkpointing for block in plain.language_model.model.layers)


def test_checkpointing_gives_identical_lora_gradients():
    grads, losses = [], []
    for checkpointing in (False, True):
        vlm, _ = load_vlm("tiny-omni", gradient_checkpointing=checkpointing)
        torch.manual_seed(0)  # lora_A's random init
        LoraSpec().apply(vlm)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # nonzero B: the adapter is live and lora_A gets a gradient
            for name, param in vlm.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        vlm.train()
        set_frozen_eval(vlm)
        blocks = vlm.language_model.model.layers
        recomputed = spy_checkpoints(blocks) if checkpointing else []

        tok = vlm.config.image_token_id
        ids = torch.tensor([[5, 6, 7] + [tok] * 64 + [10, 11, 12, 13, 20, 21]])
        query = torch.zeros_like(ids, dtype=torch.bool)
        query[0, 67:71] = True
        labels = torch.full_like(ids, -100)
        labels[0, 71:] = ids[0, 71:]
        video = torch.rand(1, 4, 6, 64, 64, generator=torch.Generator().manual_seed(1))  # 64 visual tokens
        out = reduced_vlm_forward(vlm, ids, video, query, QUARTER, labels=labels)
        out.loss.backward()
        assert out.realised_keep < 1
        if checkpointing:
            assert sorted(recomputed) == list(range(len(blocks)))
        losses.append(out.loss.detach())
        grads.append({n: p.grad.clone() for n, p in vlm.named_parameters() if "lora_" in n})

    assert torch.equal(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys() and any("in_proj.lora_A" in n for n in grads[0])
    assert all(grads[0][n].abs().sum() > 0 for n in grads[0] if "lora_A" in n)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7), name


def test_bench_model_with_checkpointing_trains_lora_only():
    lm = build_train_model("tiny", gradient_checkpointing=True)
    assert lm.training and all(block.gradient_checkpointing for block in lm.model.layers)
    trainable = {n: p for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    prompt = make_prompt(lm)  # edits no-grad embeddings in place: fine, no require-grad hook is left behind
    out = reduced_forward(lm, prompt.inputs_embeds, prompt.visual_mask, prompt.query_mask, QUARTER,
                          attention_mask=prompt.attention_mask, labels=prompt.labels)  # fmt: skip
    out.loss.backward()
    assert all(p.grad is not None for n, p in trainable.items() if "lora_B" in n)
