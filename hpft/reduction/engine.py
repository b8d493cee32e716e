"""The reduction engine: run a hybrid decoder block by block, cutting visual tokens between blocks.

Each block sees the whole current sequence. Right after a token-mixing block (attention or Mamba-2) whose
schedule asks for fewer tokens in the next block, the block's *input* is scored (under no_grad, from the
block's own weights), and every sample keeps its top-k visual tokens in their original order. Text,
question, answer and padding positions are never cut, so every sample shrinks by the same amount and
right padding stays on the right. Masks, original position ids, labels and the question mask follow the
kept tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from hpft.reduction import scoring
from hpft.reduction.adapters.nemotron_h import NemotronHAdapter
from hpft.reduction.config import QUERY_AGNOSTIC, ReductionConfig
from hpft.reduction.schedule import ScheduleCounts, schedule_counts
from hpft.reduction.weights import full_parameters

IGNORE_INDEX = -100


@dataclass
class SequenceState:
    """Per-position tensors that travel with the hidden states through the cuts. All `(B, S)`.

    `original_index` is each token's index in the input sequence; `targets[t]` is the label of the token
    that follows position t in the *input* (shifted before any cut, so the loss stays exact after cuts).
    """

    original_index: torch.Tensor
    position_ids: torch.Tensor
    visual_mask: torch.Tensor
    query_mask: torch.Tensor
    attention_mask: torch.Tensor | None
    targets: torch.Tensor | None

    def gather(self, index: torch.Tensor) -> SequenceState:
        """Keep the positions `index` `(B, S')` of every field."""

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.gather(1, index)

        return SequenceState(*(take(getattr(self, f)) for f in self.__dataclass_fields__))

    @property
    def num_visual(self) -> int:
        """Visual tokens per sample (equal across the batch)."""
        return int(self.visual_mask[0].sum())

    def visual_index(self) -> torch.Tensor:
        """`(B, V)` long positions of the visual tokens, ascending."""
        seq = self.visual_mask.shape[1]
        index = torch.arange(seq, device=self.visual_mask.device).expand_as(self.visual_mask)
        return torch.where(self.visual_mask, index, index + seq).sort(dim=1).values[:, : self.num_visual]

    def query_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Question rows per sample, padded: `(positions (B, Q) long, valid (B, Q) bool)`."""
        seq = self.query_mask.shape[1]
        index = torch.arange(seq, device=self.query_mask.device).expand_as(self.query_mask)
        order = torch.where(self.query_mask, index, index + seq).sort(dim=1).values
        width = max(int(self.query_mask.sum(1).max()), 1)
        order = order[:, :width]
        valid = order < seq
        return torch.where(valid, order, order.new_full((), seq - 1)), valid


@dataclass
class ReducedOutput:
    """What `reduced_forward` returns.

    Attributes:
        logits: `(B, S_kept, vocab)` float32 logits of the kept positions (all non-visual positions are kept).
        loss: mean next-token cross-entropy over labelled positions, when labels were given.
        kept_per_block: visual tokens entering each block (first sample; equal across the batch).
        realised_keep: mean over blocks of kept_per_block / visual tokens.
        kept_index: `(B, S_kept)` index of each kept position in the input sequence.
        cache: the prefill cache when `use_cache=True` (per-block lengths differ: each block caches what it saw).
        state: the per-position tensors after the last cut (for decoding).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    kept_per_block: list[int]
    realised_keep: float
    kept_index: torch.Tensor
    cache: DynamicCache | None = None
    state: SequenceState | None = None


@functools.lru_cache(maxsize=256)
def _plan_cached(schedule, keep, cut_after, num_visual, min_tokens, params) -> ScheduleCounts:
    return schedule_counts(schedule, keep, list(cut_after), num_visual, min_tokens=min_tokens, **dict(params))


def plan_counts(config: ReductionConfig, kinds: list[str], num_visual: int) -> ScheduleCounts:
    """Visual tokens entering each block for this config, block pattern and video length (cached)."""
    if not config.active or num_visual == 0:
        return ScheduleCounts(counts=[num_visual] * len(kinds), realised_keep=1.0)
    params = tuple(sorted(config.schedule_params.items()))
    return _plan_cached(
        config.schedule, float(config.keep), tuple(config.cut_after(kinds)), num_visual, config.min_tokens, params
    )


def _check_inputs(inputs_embeds, visual_mask, query_mask, attention_mask, needs_query: bool) -> None:
    batch, seq = inputs_embeds.shape[:2]
    for name, mask in (("visual_mask", visual_mask), ("query_mask", query_mask), ("attention_mask", attention_mask)):
        if mask is not None and tuple(mask.shape) != (batch, seq):
            raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected (batch, seq) = {(batch, seq)}")
    per_sample = visual_mask.sum(1)
    if bool((per_sample != per_sample[0]).any()):
        raise ValueError(
            f"every sample must hold the same number of visual tokens (got {per_sample.tolist()}); "
            "sample the same number of frames for every video of a batch"
        )
    if bool((visual_mask & query_mask).any()):
        raise ValueError("query_mask overlaps visual_mask: question tokens must be text tokens")
    index = torch.arange(seq, device=visual_mask.device)
    last_visual = torch.where(visual_mask, index, -1).amax(1)
    first_query = torch.where(query_mask, index, seq).amin(1)
    if bool((first_query <= last_visual).any()):
        raise ValueError("question tokens must come after the last visual token (prompt layout [video][question])")
    if attention_mask is not None:
        real = attention_mask.bool()
        if bool((real[:, 1:] & ~real[:, :-1]).any()):
            raise ValueError("attention_mask must be right-padded (1…1 0…0 per row); left padding is not supported")
        if bool(((visual_mask | query_mask) & ~real).any()):
            raise ValueError("visual_mask or query_mask marks padding positions")
    if needs_query and per_sample[0] > 0 and bool((query_mask.sum(1) == 0).any()):
        raise ValueError(
            "a query-conditioned scorer needs question tokens in every sample (query_mask is empty for some); "
            "use a query-agnostic scorer (random, norm, mean_pool) or schedule=none"
        )


def score_block_input(
    adapter, index: int, hidden: torch.Tensor, state: SequenceState, config: ReductionConfig
) -> torch.Tensor:
    """Scores `(B, S)` of the current visual tokens from block `index`'s input (DESIGN §1.2)."""
    spec = config.spec
    method = spec.attention if adapter.kinds[index] == "attention" else spec.mamba
    if method == "random":
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
        return scoring.random_scores(state.visual_mask, generator)
    if method == "norm":
        return scoring.norm_scores(hidden, state.visual_mask)
    if method == "mean_pool":
        return scoring.mean_pool_scores(hidden, state.visual_mask)
    positions, valid = state.query_positions()
    key_valid = state.attention_mask.bool() if state.attention_mask is not None else torch.ones_like(state.visual_mask)
    if method == "attention":
        inputs = adapter.attention_inputs(index, hidden, positions)
        return scoring.attention_visual_scores(
            inputs.query, inputs.key, positions, valid, key_valid, state.visual_mask, inputs.scaling
        )
    inputs = adapter.mamba_inputs(index, hidden, positions, state.attention_mask)
    if not config.decay and config.use_dt and config.normalize == "abs_sum":  # the default: factorised fast path
        visual = state.visual_index()
        scores = torch.zeros(state.visual_mask.shape, dtype=torch.float32, device=hidden.device)
        fast = scoring.mamba2_decay_free_visual_scores(
            inputs.C_query,
            inputs.B.gather(1, visual[..., None, None].expand(-1, -1, *inputs.B.shape[2:])),
            inputs.dt.gather(1, visual[..., None].expand(-1, -1, inputs.dt.shape[-1])),
            valid,
        )
        return scores.scatter_(1, visual, fast)
    implicit = scoring.mamba2_implicit_attention(
        inputs.C_query, inputs.B, inputs.dt, positions, A=inputs.A if config.decay else None, use_dt=config.use_dt
    )
    return scoring.mamba2_visual_scores(implicit, valid, state.visual_mask, config.normalize)


def adapter_for(lm) -> NemotronHAdapter:
    """The adapter for a causal LM (Nemotron-H for now; other hybrids add adapters here)."""
    return NemotronHAdapter(lm)


def reduced_forward(
    lm,
    inputs_embeds: torch.Tensor,
    visual_mask: torch.Tensor,
    query_mask: torch.Tensor,
    config: ReductionConfig,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    use_cache: bool = False,
    logits_to_keep: int = 0,
) -> ReducedOutput:
    """Forward a hybrid decoder with progressive visual-token reduction between its blocks.

    Args:
        lm: a transformers `NemotronHForCausalLM` (possibly PEFT-wrapped modules inside).
        inputs_embeds: `(B, S, D)` input embeddings, visual embeddings already placed.
        visual_mask: `(B, S)` bool, True at visual tokens; the same count in every sample.
        query_mask: `(B, S)` bool, True at question tokens (after the video, never the answer).
        config: the reduction setting.
        attention_mask: `(B, S)` 1 for real tokens, 0 for right padding; None for no padding.
        labels: `(B, S)` token ids to predict (-100 where ignored), unshifted as in transformers.
        position_ids: `(B, S)` original positions (default `0..S-1`); they follow the kept tokens.
        use_cache: build a `DynamicCache` during the prefill so that decoding can continue from it.
        logits_to_keep: compute logits for the last this-many positions only (0: all), as in transformers;
            a prefill for generation needs 1. Incompatible with labels.

    Returns:
        `ReducedOutput` with logits of the kept positions, the loss, per-block kept counts and realised keep.
    """
    adapter = adapter_for(lm)
    visual_mask, query_mask = visual_mask.bool(), query_mask.bool()
    _check_inputs(
        inputs_embeds,
        visual_mask,
        query_mask,
        attention_mask,
        needs_query=config.active and config.scorer not in QUERY_AGNOSTIC,
    )
    batch, seq = inputs_embeds.shape[:2]
    index = torch.arange(seq, device=inputs_embeds.device).expand(batch, seq)
    targets = None
    if labels is not None:
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    state = SequenceState(
        original_index=index,
        position_ids=position_ids if position_ids is not None else index,
        visual_mask=visual_mask,
        query_mask=query_mask,
        attention_mask=attention_mask,
        targets=targets,
    )
    num_visual = state.num_visual
    plan = plan_counts(config, adapter.kinds, num_visual)
    cache = DynamicCache(config=lm.config) if use_cache else None

    hidden, masks = inputs_embeds, None
    kept_per_block = []
    num_blocks = len(adapter.blocks)
    for b in range(num_blocks):
        kept_per_block.append(state.num_visual)
        if masks is None:
            masks = adapter.masks(hidden, state.attention_mask)
        wanted = plan.counts[b + 1] if b + 1 < num_blocks else state.num_visual
        scores = None
        if wanted < state.num_visual:
            with torch.no_grad(), full_parameters(adapter.blocks[b]):
                scores = score_block_input(adapter, b, hidden, state, config)
        hidden = adapter.run_block(b, hidden, masks, state.position_ids, cache)
        if scores is not None:
            keep = scoring.select_top_visual(scores, state.visual_mask, wanted)
            hidden = hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))
            state = state.gather(keep)
            masks = None

    if logits_to_keep:
        if labels is not None:
            raise ValueError("logits_to_keep cannot be combined with labels: the loss needs every position")
        hidden = hidden[:, -logits_to_keep:]
    logits = adapter.logits(hidden)
    loss = None
    if state.targets is not None:
        loss = F.cross_entropy(
            logits.flatten(0, 1), state.targets.flatten().to(logits.device), ignore_index=IGNORE_INDEX
        )
    realised = sum(kept_per_block) / (num_blocks * num_visual) if num_visual else 1.0
    return ReducedOutput(
        logits=logits,
        loss=loss,
        kept_per_block=kept_per_block,
        realised_keep=realised,
        kept_index=state.original_index,
        cache=cache,
        state=state,
    )


def decode_step(lm, token_ids: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """One greedy-decoding step on a reduced prefill's cache.

    Generated tokens are text: they are never cut and do not change the scores (which read question tokens
    only), so decoding is the model's own recurrent step: each attention block attends to the keys it cached
    (its own reduced sequence), each Mamba block continues from its state.

    Args:
        lm: the same model as the prefill.
        token_ids: `(B, 1)` the previous token.
        position_ids: `(B, 1)` its original position.
        cache: the prefill's cache, updated in place.

    Returns:
        `(B, vocab)` float32 logits for the next token.
    """
    adapter = adapter_for(lm)
    hidden = adapter.embed(token_ids)
    for b in range(len(adapter.blocks)):
        hidden = adapter.run_block(b, hidden, {}, position_ids, cache)
    return adapter.logits(hidden)[:, -1]


@torch.no_grad()
def reduced_generate(
    lm,
    inputs_embeds: torch.Tensor,
    visual_mask: torch.Tensor,
    query_mask: torch.Tensor,
    config: ReductionConfig,
    max_new_tokens: int,
    eos_token_id: int | None = None,
) -> tuple[torch.Tensor, ReducedOutput]:
    """Greedy decoding after a reduced prefill (unpadded batches: every prompt the same length).

    Args:
        lm: as for `reduced_forward`.
        inputs_embeds: `(B, S, D)`, as for `reduced_forward`.
        visual_mask: `(B, S)`, as for `reduced_forward`.
        query_mask: `(B, S)`, as for `reduced_forward`.
        config: the reduction setting of the prefill.
        max_new_tokens: tokens to generate.
        eos_token_id: stop early once every sample has produced it.

    Returns:
        `(tokens (B, T) long, prefill output)`.
    """
    prefill = reduced_forward(lm, inputs_embeds, visual_mask, query_mask, config, use_cache=True, logits_to_keep=1)
    position = prefill.state.position_ids[:, -1:] + 1
    token = prefill.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [token]
    finished = token.squeeze(1) == eos_token_id if eos_token_id is not None else None
    for _ in range(max_new_tokens - 1):
        if finished is not None and bool(finished.all()):
            break
        token = decode_step(lm, token, position, prefill.cache).argmax(-1, keepdim=True)
        tokens.append(token)
        position = position + 1
        if finished is not None:
            finished |= token.squeeze(1) == eos_token_id
    return torch.cat(tokens, dim=1), prefill
