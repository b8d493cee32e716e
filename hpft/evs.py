"""The EVS baseline: transformers' own pre-decoder video-token pruning (`video_pruning_rate`), scored like hpft runs.

`nemotron_h_omni` ships Efficient Video Sampling: with `video_pruning_rate = q > 0`, its forward keeps every token
of the first tubelet and, of the others, the ones least similar to the same position in the previous tubelet, so
that `max(tokens_per_tubelet, int((1 - q) * visual_tokens))` visual tokens remain; then it drops the rest *before*
the decoder. It is query-agnostic (the question never influences which tokens stay) and one-shot (every decoder
block sees the same pruned sequence). hpft's loader switches it off because the in-decoder reduction needs the
whole video in its prompt; `python -m hpft.evaluate video_pruning_rate=0.75` switches it back on
(`set_video_pruning_rate`) and this module answers items through the model's own `forward` / `generate`, so the
baseline is exactly transformers' code path, not a re-implementation.

Budget: hpft's `keep` is the mean over all decoder blocks of the fraction of visual tokens entering each block.
EVS feeds `1 - q` of them to every block, so its realised keep is `kept / visual_tokens` (the same mean, constant
over blocks): EVS at `q = 0.75` and an in-decoder schedule at `keep = 0.25` process the same number of visual
token-blocks (the same cost in every linear layer and Mamba scan; attention's quadratic part differs).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from hpft.evaluation import option_rows, option_text_loglik

__all__ = ["check_evs", "evs_active", "evs_answer", "evs_option_logliks", "set_video_pruning_rate"]


def evs_active(vlm) -> bool:
    """Whether the model prunes video tokens before its decoder (`video_pruning_rate > 0`)."""
    return float(getattr(vlm, "video_pruning_rate", 0.0) or 0.0) > 0


def check_evs(rate: Any, reduction_active: bool) -> list[str]:
    """Problems with an EVS setting (pure): the rate's range, and EVS combined with an in-decoder reduction.

    Args:
        rate: the `video_pruning_rate` asked for (0: EVS off).
        reduction_active: whether the in-decoder reduction cuts anything (`ReductionConfig.active`).

    Returns:
        One message per problem (empty: usable).
    """
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate < 1:
        return [f"video_pruning_rate={rate!r} must be a number in [0, 1) (the fraction of video tokens EVS drops)"]
    if rate > 0 and reduction_active:
        return [
            f"video_pruning_rate={rate} (EVS, pruning before the decoder) cannot be combined with an in-decoder "
            "reduction: evaluate EVS with schedule=none (or keep=1.0), or set video_pruning_rate=0"
        ]
    return []


def set_video_pruning_rate(vlm, rate: float) -> None:
    """Switch transformers' EVS on (`rate > 0`) or off (0) on a loaded `nemotron_h_omni` model.

    The model copies `config.video_pruning_rate` at init and reads its own copy, so both are set.

    Raises:
        ValueError: a rate outside [0, 1), or a model without EVS.
    """
    problems = check_evs(rate, reduction_active=False)
    if problems:
        raise ValueError(problems[0])
    if not hasattr(vlm, "video_pruning_rate"):
        raise ValueError(f"{type(vlm).__name__} has no video_pruning_rate (EVS is a nemotron_h_omni feature)")
    vlm.config.video_pruning_rate = float(rate)
    vlm.video_pruning_rate = float(rate)


def _video_outputs(vlm, pixel_values_videos: torch.Tensor, rows: torch.Tensor | None = None):
    """The vision tower's output for the model's forward (`mm_encoder_outputs["video"]`), one entry per row.

    The video is encoded once; `rows` (`(N,)` the video of each row) repeats its features by reference, the
    values the model would compute for a repeated `pixel_values_videos`.
    """
    out = vlm.get_video_features(pixel_values_videos, return_dict=True)
    if rows is not None:
        pooled = list(out.pooler_output)
        out.pooler_output = [pooled[int(r)] for r in rows]
    return out


def _kept_fraction(vlm, video_outputs) -> float:
    """Fraction of a video's tokens EVS keeps (the realised keep), from transformers' own retention mask."""
    from transformers.models.nemotron_h_omni.modeling_nemotron_h_omni import compute_retention_mask

    features = video_outputs.pooler_output[0]
    num_tubelets = video_outputs.last_hidden_state.shape[1]
    mask = compute_retention_mask(features, num_tubelets, float(vlm.video_pruning_rate))
    return float(mask.sum()) / mask.numel()


@torch.no_grad()
def evs_option_logliks(vlm, batch: Mapping, normalize: bool = False) -> tuple[torch.Tensor, float]:
    """Log-likelihood of every option of every sample through the model's own forward, EVS included.

    The rows are the ones `hpft.evaluation.option_logliks` scores (prompt up to its last question token, then the
    option); EVS drops only video tokens, which all precede the options, so the last positions still hold every
    option token and its predecessor (`logits_to_keep` covers them, as in `option_logliks`).

    Args:
        vlm: a `nemotron_h_omni` model with `video_pruning_rate > 0` (or 0: the plain unreduced forward).
        batch: `input_ids` `(B, S)`, `query_mask` `(B, S)`, `pixel_values_videos` (one video per sample),
            `candidates` (per sample, the token ids of each option's text).
        normalize: length-normalise each option's log-likelihood.

    Returns:
        `(loglik (B, K) float32 with -inf where a sample has fewer than K options, realised keep)`.
    """
    input_ids = batch["input_ids"]
    image_token = vlm.config.image_token_id
    rows = option_rows(input_ids, batch["query_mask"].bool(), batch["candidates"], pad_id=0 if image_token else 1)
    video = _video_outputs(vlm, batch["pixel_values_videos"], rows["sample"])
    width = rows["input_ids"].shape[1]
    window = width - int(rows["prompt_length"].min()) + 1
    out = vlm(
        input_ids=rows["input_ids"],
        attention_mask=rows["attention_mask"],
        mm_encoder_outputs={"video": video},
        logits_to_keep=window,
    )
    loglik = option_text_loglik(out.logits, rows["targets"][:, -window:], normalize=normalize)
    counts = [len(c) for c in batch["candidates"]]
    table = torch.full((len(counts), max(counts)), float("-inf"), device=loglik.device)
    slot = torch.cat([torch.arange(c) for c in counts]).to(loglik.device)
    table[rows["sample"], slot] = loglik
    realised = _kept_fraction(vlm, video) if evs_active(vlm) else 1.0
    return table, realised


@torch.no_grad()
def evs_answer(vlm, tokenizer, item, spec, module, inputs, time_prefill: bool = True) -> tuple[dict[str, Any], Any]:
    """Answer one item with EVS through transformers' forward / generate (`hpft.eval_runner.score_item`'s EVS path).

    Args:
        vlm: the `nemotron_h_omni` model, `video_pruning_rate > 0`.
        tokenizer: its tokenizer.
        item: the benchmark `Item`.
        spec: the `BenchmarkSpec` (`mode`, `variant`, `normalize`, `max_new_tokens`).
        module: the benchmark module (`parse_answer` for the generate mode).
        inputs: the item's `hpft.eval_runner.ItemInputs`.
        time_prefill: time the prefill (`prefill_s`): EVS pruning and the decoder on the pruned prompt, last
            position's logits, the video's features already computed (as the in-decoder runs time theirs).

    Returns:
        `(answer fields: pred, scores or text, realised_keep; prefill_s or None)`.
    """
    from hpft.eval_runner import LETTERS, _synchronize, letter_token_ids

    device = next(vlm.parameters()).device
    input_ids = inputs.input_ids.to(device)
    pixels = inputs.pixel_values_videos.to(device, next(vlm.parameters()).dtype)
    video = _video_outputs(vlm, pixels)
    realised = _kept_fraction(vlm, video)
    prefill, prefill_s = None, None
    letter = (spec.mode, spec.variant) == ("logits", "letter")
    if time_prefill or letter:
        _synchronize(device)
        start = time.perf_counter()
        prefill = vlm(input_ids=input_ids, mm_encoder_outputs={"video": video}, logits_to_keep=1)
        _synchronize(device)
        prefill_s = time.perf_counter() - start
    if letter:
        logprobs = torch.log_softmax(prefill.logits[0, -1].float(), dim=-1)
        table = letter_token_ids(tokenizer, LETTERS[: len(item.options)])
        scores = [float(torch.logsumexp(logprobs[ids], dim=0)) for ids in table]
        answer = {"pred": LETTERS[max(range(len(scores)), key=scores.__getitem__)], "scores": scores}
    elif spec.mode == "logits":
        batch = {
            "input_ids": input_ids,
            "query_mask": inputs.query_mask.to(device),
            "pixel_values_videos": pixels,
            "candidates": [inputs.candidates],
        }
        loglik, _ = evs_option_logliks(vlm, batch, normalize=spec.normalize)
        answer = {"pred": LETTERS[int(loglik[0].argmax())], "scores": loglik[0].tolist()}
    else:
        tokens = vlm.generate(
            input_ids=input_ids,
            pixel_values_videos=pixels,
            max_new_tokens=spec.max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
        )
        text = tokenizer.decode(tokens[0, input_ids.shape[1] :].tolist(), skip_special_tokens=True)
        answer = {"pred": module.parse_answer(text, item.doc) or "", "text": text}
    return {**answer, "realised_keep": realised}, prefill_s
