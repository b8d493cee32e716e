"""Multiple-choice scoring by option-text likelihood under a token-reduction setting, and accuracy per kind.

For every sample, each option's text is appended to the prompt (the sample's tokens up to and including its last
question token) and scored by the sum of its tokens' log-probabilities; the highest-scoring option is the choice
(DESIGN §1.4, answer mode `option_text`). The options are neither visual nor question tokens, so the reduction's
scores (question → video) are the same for every option of a sample, and so is the set of kept visual tokens.

Cost: the video goes through the vision tower and projector once per sample (its embeddings are then repeated
for the options, the same values `reduced_vlm_forward` on a repeated video would compute), and logits are only
computed for the window that holds the options (`logits_to_keep`), not for the whole prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hpft.reduction.config import ReductionConfig
from hpft.reduction.engine import IGNORE_INDEX, reduced_forward
from hpft.reduction.vlm import embed_video_prompt


def option_text_loglik(logits: torch.Tensor, targets: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Sum (or mean) of the log-probabilities of each row's option tokens.

    `targets` follows the `labels` convention (unshifted, as in transformers): `targets[n, t]` is the token *at*
    position t, and it is predicted by `logits[n, t - 1]`. The shift is done here: `logits[:, :-1]` scores
    `targets[:, 1:]`; a target at position 0 has no predicting logit and is an error.

    Args:
        logits: `(N, S, V)` next-token logits.
        targets: `(N, S)` long, option token ids at option positions, `-100` elsewhere.
        normalize: divide by the number of option tokens (length-normalised likelihood).

    Returns:
        `(N,)` float32 log-likelihood of each row's option text (0 for a row without option tokens).
    """
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on (N, S)")
    if bool((targets[:, 0] != IGNORE_INDEX).any()):
        raise ValueError("a target at position 0 has no logit predicting it")
    next_targets = targets[:, 1:]
    scored = next_targets != IGNORE_INDEX
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_lp = logprobs.gather(-1, next_targets.clamp_min(0)[..., None]).squeeze(-1)
    total = (token_lp * scored).sum(-1)
    if normalize:
        total = total / scored.sum(-1).clamp_min(1)
    return total


def option_rows(
    input_ids: torch.Tensor,
    query_mask: torch.Tensor,
    candidates: Sequence[Sequence[Sequence[int]]],
    pad_id: int = 0,
) -> dict[str, torch.Tensor]:
    """Build one right-padded row per (sample, option): the sample's prompt followed by the option's tokens.

    The prompt is the sample's tokens up to and including its last question token.

    Args:
        input_ids: `(B, S)` the batch's ids.
        query_mask: `(B, S)` bool, the question tokens.
        candidates: per sample, the token ids of each option's text.
        pad_id: id written at padding positions (masked out).

    Returns:
        Dict of `input_ids`, `attention_mask` (long), `query_mask` (bool), `targets` (option ids, -100 elsewhere),
        all `(N, S')` with `N = Σ_b len(candidates[b])`; `sample` `(N,)` the sample of each row; `prompt_length` `(N,)`.
    """
    batch, seq = input_ids.shape
    if len(candidates) != batch:
        raise ValueError(f"{len(candidates)} candidate lists for a batch of {batch}")
    positions = torch.arange(seq, device=input_ids.device)
    has_query = query_mask.any(1)
    if not bool(has_query.all()):
        raise ValueError("every sample needs question tokens: the prompt ends at the last question token")
    prompt_length = torch.where(query_mask, positions, -1).amax(1) + 1
    rows = [
        (b, int(prompt_length[b]), list(option)) for b in range(batch) for option in candidates[b] if len(option) > 0
    ]
    if len(rows) != sum(len(c) for c in candidates):
        raise ValueError("every option needs at least one token")
    width = max(length + len(option) for _, length, option in rows)
    n = len(rows)
    out = dict(
        input_ids=input_ids.new_full((n, width), pad_id),
        attention_mask=torch.zeros(n, width, dtype=torch.long, device=input_ids.device),
        query_mask=torch.zeros(n, width, dtype=torch.bool, device=input_ids.device),
        targets=input_ids.new_full((n, width), IGNORE_INDEX),
    )
    for i, (b, length, option) in enumerate(rows):
        end = length + len(option)
        ids = torch.as_tensor(option, dtype=input_ids.dtype, device=input_ids.device)
        out["input_ids"][i, :length] = input_ids[b, :length]
        out["input_ids"][i, length:end] = ids
        out["attention_mask"][i, :end] = 1
        out["query_mask"][i, :length] = query_mask[b, :length]
        out["targets"][i, length:end] = ids
    out["sample"] = torch.tensor([b for b, _, _ in rows], device=input_ids.device)
    out["prompt_length"] = torch.tensor([length for _, length, _ in rows], device=input_ids.device)
    return out


@torch.no_grad()
def option_logliks(vlm, batch: Mapping, config: ReductionConfig, normalize: bool = False) -> tuple[torch.Tensor, float]:
    """Log-likelihood of every option of every sample under the reduction `config`.

    Args:
        vlm: a `nemotron_h_omni` model (possibly LoRA-injected).
        batch: the collator's dict (`input_ids`, `query_mask`, `pixel_values_videos`, `candidates`).
        config: the reduction setting.
        normalize: length-normalise each option's log-likelihood.

    Returns:
        `(loglik (B, K) float32 with -inf where a sample has fewer than K options, realised_keep)`.
    """
    input_ids, query_mask = batch["input_ids"], batch["query_mask"].bool()
    image_token = vlm.config.image_token_id
    pad_id = 0 if image_token != 0 else 1
    rows = option_rows(input_ids, query_mask, batch["candidates"], pad_id=pad_id)
    embeds, visual_mask = embed_video_prompt(vlm, input_ids, batch["pixel_values_videos"])
    num_visual = int(visual_mask[0].sum())
    video = embeds[visual_mask].view(input_ids.shape[0], num_visual, -1)[rows["sample"]]

    row_ids = rows["input_ids"]
    row_visual = row_ids == image_token
    if bool((row_visual.sum(1) != num_visual).any()):
        raise ValueError("an option row lost video placeholders: the prompt must hold the whole video")
    row_embeds = vlm.get_input_embeddings()(row_ids).masked_scatter(row_visual[..., None], video.to(embeds.dtype))

    # Options and their predecessors all sit after the video, so they are never cut: logits for the last `window`
    # positions cover every option token and the position before it, in every row.
    width = row_ids.shape[1]
    window = width - int(rows["prompt_length"].min()) + 1
    out = reduced_forward(
        vlm.language_model,
        row_embeds,
        row_visual,
        rows["query_mask"],
        config,
        attention_mask=rows["attention_mask"],
        logits_to_keep=window,
    )
    expected = torch.arange(width - window, width, device=row_ids.device)
    if not bool((out.kept_index[:, -window:] == expected).all()):
        raise RuntimeError("the option window was cut by the reduction; options must follow the question")
    loglik = option_text_loglik(out.logits, rows["targets"][:, -window:], normalize=normalize)

    counts = [len(c) for c in batch["candidates"]]
    table = torch.full((len(counts), max(counts)), float("-inf"), device=loglik.device)
    slot = torch.cat([torch.arange(c) for c in counts]).to(loglik.device)
    table[rows["sample"], slot] = loglik
    return table, out.realised_keep


def score_options(vlm, batch: Mapping, config: ReductionConfig, normalize: bool = False) -> tuple[torch.Tensor, float]:
    """Pick each sample's option by the likelihood of its text after the prompt, under the reduction `config`.

    Args:
        vlm: a `nemotron_h_omni` model (possibly LoRA-injected); it is run under `no_grad`, in its current mode.
        batch: the collator's dict (see `option_logliks`).
        config: the reduction setting.
        normalize: length-normalise (default False: the synthetic options are single words).

    Returns:
        `(choices (B,) long option indices, realised_keep)`.
    """
    loglik, realised = option_logliks(vlm, batch, config, normalize=normalize)
    return loglik.argmax(-1), realised


def accuracy_by_kind(
    choices: torch.Tensor | Sequence[int], answer_index: torch.Tensor | Sequence[int], kinds: Sequence[str]
) -> dict[str, float]:
    """Accuracy overall (`acc`) and per sample kind (`acc/<kind>`).

    Args:
        choices: `(N,)` chosen option indices.
        answer_index: `(N,)` correct option indices.
        kinds: `N` kind labels.

    Returns:
        `{"acc": float, "acc/<kind>": float, ...}` (kinds sorted); `{}` for no samples.
    """
    correct = torch.as_tensor(choices).cpu() == torch.as_tensor(answer_index).cpu()
    if correct.numel() != len(kinds):
        raise ValueError(f"{correct.numel()} choices for {len(kinds)} kinds")
    if not len(kinds):
        return {}
    result = {"acc": correct.float().mean().item()}
    for kind in sorted(set(kinds)):
        mine = torch.tensor([k == kind for k in kinds])
        result[f"acc/{kind}"] = correct[mine].float().mean().item()
    return result
