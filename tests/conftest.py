"""Shared fixtures: tiny random-weight Nemotron-H models built by the real transformers classes, and prompts."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from hpft.models.tiny import build_tiny_decoder  # noqa: E402


@dataclass
class Prompt:
    """A batch laid out `[prefix][visual][question][answer][padding]`, all `(B, S)` except embeds."""

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    visual_mask: torch.Tensor
    query_mask: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def sample(self, i: int, trim: bool = True) -> Prompt:
        """Sample i alone, without its padding when `trim`."""
        length = int(self.attention_mask[i].sum()) if trim else self.input_ids.shape[1]
        return Prompt(*(getattr(self, f)[i : i + 1, :length] for f in self.__dataclass_fields__))


def make_prompt(
    lm,
    num_visual: int = 48,
    question_lengths: tuple[int, ...] = (5, 8),
    prefix: int = 3,
    answer: int = 3,
    seed: int = 0,
) -> Prompt:
    """Random tokens and random visual embeddings, right-padded to the longest question."""
    generator = torch.Generator().manual_seed(seed)
    vocab = lm.config.vocab_size
    batch = len(question_lengths)
    seq = prefix + num_visual + max(question_lengths) + answer
    input_ids = torch.randint(0, vocab - 1, (batch, seq), generator=generator)
    attention_mask = torch.zeros(batch, seq, dtype=torch.long)
    visual_mask = torch.zeros(batch, seq, dtype=torch.bool)
    query_mask = torch.zeros(batch, seq, dtype=torch.bool)
    labels = torch.full((batch, seq), -100)
    for i, q in enumerate(question_lengths):
        end_q = prefix + num_visual + q
        attention_mask[i, : end_q + answer] = 1
        visual_mask[i, prefix : prefix + num_visual] = True
        query_mask[i, prefix + num_visual : end_q] = True
        labels[i, end_q : end_q + answer] = input_ids[i, end_q : end_q + answer]
    with torch.no_grad():
        embeds = lm.get_input_embeddings()(input_ids)
    visual = torch.randn(batch, num_visual, embeds.shape[-1], generator=generator) * embeds.std()
    embeds[:, prefix : prefix + num_visual] = visual
    return Prompt(input_ids, embeds, visual_mask, query_mask, attention_mask, labels)


@pytest.fixture(scope="session")
def tiny_lm():
    """A tiny Nemotron-H decoder with Mamba-2, attention, MLP and MoE blocks (eval mode, fixed seed)."""
    return build_tiny_decoder(seed=0)


@pytest.fixture(scope="session")
def tiny_lm_eager():
    """The same tiny decoder with eager attention (it returns attention weights)."""
    lm = build_tiny_decoder(seed=0)
    lm.config._attn_implementation = "eager"
    return lm


@pytest.fixture
def prompt(tiny_lm) -> Prompt:
    """Two right-padded samples with different question lengths."""
    return make_prompt(tiny_lm)
