"""Score a video VLM on one benchmark under a token-reduction setting: item → frames → prompt → answer → results.

Shared by `python -m hpft.evaluate` and the in-training `hpft.callbacks.BenchmarkEvalCallback`. A benchmark is a
`BenchmarkSpec` (one `conf/benchmark/*.yaml`): which `hpft.benchmarks` module reads it, where its release lives,
how many frames are sampled, how an answer is obtained and how the prompt is laid out.

Per item (one at a time: items differ in length, and generation needs unpadded prompts):

1. frames: `num_frames` uniformly sampled with decord (`hpft.data.video.read_frames`; null: every frame), resized to
   the model's frame size when they differ, packed into tubelets (`frames_to_pixel_values`);
2. prompt, by `prompt_style`: `native` is the layout the embedded tiny model was trained on
   (`hpft.data.prompts.encode_example`: question + 4 options); `benchmark` is the benchmark's own text
   (`build_prompt(item)`) after the video. `query_mask` is every token after the video (the question the
   reduction scores against);
3. the video goes through the vision tower once; the decoder prefill runs through the reduction engine and is
   timed (`prefill_s`: decoder only, last position's logits, as generation does). With transformers' EVS on
   (`video_pruning_rate > 0`, the baseline of `hpft.evs`) the model's own forward prunes the video before the
   decoder instead, and answers the item in the same modes;
4. the answer, by `mode` / `variant`:
   * `logits` + `option_text`: the likelihood of each option's text after the prompt (`option_logliks`);
   * `logits` + `letter`: the next-token probability of each option letter after the prompt (" A" or "A"),
     read from the prefill itself: one forward;
   * `generate`: greedy decoding after the reduced prefill (`reduced_generate`), the text parsed by the
     benchmark's `parse_answer`; where it finds no letter the item counts as unparsed, and the benchmark's
     `aggregate` applies the reference's seeded guess where the reference guesses (LongVideoBench, EgoSchema).

Results stream into `<out>/items.jsonl` (one line per item, flushed), so a rerun with the same folder skips the
items already there; `results.json` holds the aggregate (`RESULT_KEYS`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from hpft.data.prompts import FrameLabels, encode_example, option_token_ids, text_ids, video_part
from hpft.errors import UserInputError
from hpft.evaluation import option_logliks
from hpft.evs import evs_active, evs_answer
from hpft.reduction import ReductionConfig, reduced_forward, reduced_generate
from hpft.reduction.vlm import embed_video_prompt

__all__ = [
    "RESULT_KEYS",
    "BenchmarkSpec",
    "ItemLog",
    "evaluate_benchmark",
    "letter_token_ids",
    "load_items",
    "metric_dict",
    "prepare_inputs",
    "score_item",
    "summarize",
]

log = logging.getLogger(__name__)

MODES = ("logits", "generate")
VARIANTS = ("option_text", "letter")
PROMPT_STYLES = ("native", "benchmark")
LETTERS = "ABCDEFGH"
_SURFACE = ("load", "build_prompt", "parse_answer", "aggregate")
_MAX_LISTED_SKIPS = 100  # skipped rows listed in results.json (the count is always complete)

RESULT_KEYS = (
    "benchmark",
    "n_total",
    "n_scored",
    "n_skipped",
    "n_unparsed",
    "acc",
    "by",
    "num_frames",
    "tokens_per_frame",
    "schedule",
    "keep",
    "realised_keep",
    "prefill_s",
)
"""Keys every `results.json` holds (null where not measured, e.g. `prefill_s` with `time_prefill=false`)."""


# --------------------------------------------------------------------------------------------- benchmark spec


@dataclass
class BenchmarkSpec:
    """One benchmark setting (`_target_` of every `conf/benchmark/*.yaml`).

    Args:
        name: the name in metric keys (`val/<name>/acc`) and output folders.
        module: the `hpft.benchmarks` module that reads the release (`load`, `build_prompt`, `parse_answer`,
            `aggregate`).
        root: the folder holding the release layout; None only where `synthetic` can generate it.
        num_frames: frames sampled uniformly per video; None reads every frame (the needle grid's lengths).
        mode: `logits` (score the options) or `generate` (greedy decoding, parsed).
        variant: with `logits`: `option_text` (likelihood of each option's text) or `letter` (next-token score of
            each option letter).
        max_new_tokens: generation budget (lmms-eval: 16; LongVideoBench 32).
        prompt_style: `native` (the tiny model's trained layout, 4 options) or `benchmark` (`build_prompt`).
        normalize: length-normalise option-text likelihoods.
        skip_missing_videos: count items whose video file is missing as skipped instead of stopping with an error.
        prompt_kwargs: extra keyword arguments of the module's `build_prompt` (e.g. subtitles), passed through.
        load_kwargs: extra keyword arguments of the module's `load`.
        synthetic: with `root` None, `hpft.data.synthetic.ensure_dataset` arguments that generate the release
            (needle: a test split of varied lengths and needle depths, cached under `$HPFT_CACHE/needle`).

    Raises:
        ValueError: naming every invalid field at once.
    """

    name: str
    module: str
    root: str | None = None
    num_frames: int | None = 32
    mode: str = "logits"
    variant: str = "letter"
    max_new_tokens: int = 16
    prompt_style: str = "benchmark"
    normalize: bool = False
    skip_missing_videos: bool = False
    prompt_kwargs: dict[str, Any] = field(default_factory=dict)
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    synthetic: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # Hydra passes DictConfig / ListConfig: plain containers keep the spec picklable and JSON-ready.
        self.prompt_kwargs = _plain(self.prompt_kwargs) or {}
        self.load_kwargs = _plain(self.load_kwargs) or {}
        self.synthetic = _plain(self.synthetic)
        problems = []
        if self.mode not in MODES:
            problems.append(f"benchmark.mode={self.mode!r} must be one of {list(MODES)}")
        if self.variant not in VARIANTS:
            problems.append(f"benchmark.variant={self.variant!r} must be one of {list(VARIANTS)}")
        if self.prompt_style not in PROMPT_STYLES:
            problems.append(f"benchmark.prompt_style={self.prompt_style!r} must be one of {list(PROMPT_STYLES)}")
        if self.num_frames is not None and (not isinstance(self.num_frames, int) or self.num_frames < 1):
            problems.append(f"benchmark.num_frames={self.num_frames!r} must be an integer >= 1, or null (every frame)")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"benchmark.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if problems:
            raise ValueError("invalid benchmark config:\n  - " + "\n  - ".join(problems))

    def benchmark_module(self) -> ModuleType:
        """Import the benchmark's module and check it exposes the benchmark surface.

        Raises:
            UserInputError: naming `benchmark.module` when it cannot be imported or lacks a function.
        """
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise UserInputError(
                f"benchmark.module={self.module} cannot be imported ({err}); pick a benchmark config "
                "(benchmark=videomme|videomme_sub|mlvu|longvideobench|egoschema|needle)"
            ) from None
        missing = [name for name in _SURFACE if not callable(getattr(module, name, None))]
        if missing:
            raise UserInputError(f"benchmark.module={self.module} lacks {missing}: not a benchmark module")
        return module

    def resolve_root(self) -> Path:
        """The release folder: `root`, or the generated synthetic split when `root` is None.

        Raises:
            UserInputError: when `root` is unset and nothing can be generated, or does not exist.
        """
        if self.root is None:
            if self.synthetic is None:
                raise UserInputError(
                    f"benchmark.root is not set for {self.name}: pass the folder holding its release, e.g. "
                    f"`python -m hpft.evaluate benchmark={self.name} benchmark.root=/data/{self.name}`"
                )
            from hpft.data.datamodule import default_cache_dir
            from hpft.data.synthetic import ensure_dataset

            kwargs = dict(self.synthetic)
            if isinstance(kwargs.get("frames"), list):  # a (lo, hi) range of frame counts
                kwargs["frames"] = tuple(kwargs["frames"])
            return ensure_dataset(default_cache_dir(), **kwargs)
        root = Path(str(self.root)).expanduser()
        if not root.is_dir():
            raise UserInputError(
                f"benchmark.root={root} does not exist (benchmark {self.name}); pass the folder holding the "
                f"release layout, e.g. benchmark.root=/data/{self.name}"
            )
        return root

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (results, resume fingerprint)."""
        return asdict(self)


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def load_items(spec: BenchmarkSpec, module: ModuleType | None = None) -> tuple[list, list[dict[str, Any]], Path]:
    """Load a benchmark's items and its skipped rows.

    Missing videos stop the run with one message listing them (a wrong root or a partial download), unless
    `skip_missing_videos`, which counts them as skipped rows.

    Returns:
        `(items, skipped rows as dicts with file/row/field/reason, root)`.

    Raises:
        UserInputError: a missing root or annotation file, or missing videos.
    """
    module = module or spec.benchmark_module()
    root = spec.resolve_root()
    result = module.load(str(root), **spec.load_kwargs)
    items = list(result)
    skipped = [_skip_dict(s) for s in getattr(result, "skipped", [])]
    missing_rows = [s for s in skipped if _is_missing_video(s)]
    absent = [item for item in items if not Path(item.video).is_file()]
    if (missing_rows or absent) and not spec.skip_missing_videos:
        listed = [f"{s['file']} row {s['row']}: {s['reason']}" for s in missing_rows]
        listed += [f"item {item.id}: {item.video}" for item in absent]
        more = f"\n  ... and {len(listed) - 10} more" if len(listed) > 10 else ""
        raise UserInputError(
            f"{len(listed)} video file(s) of benchmark {spec.name} are missing under {root}:\n  - "
            + "\n  - ".join(listed[:10])
            + more
            + "\nFix benchmark.root (it must hold the release layout with its videos), finish the download, or "
            "pass benchmark.skip_missing_videos=true to score the rest and count these as skipped."
        )
    skipped += [
        {"file": item.video, "row": None, "field": "video", "reason": f"video file not found (item {item.id})"}
        for item in absent
    ]
    items = [item for item in items if Path(item.video).is_file()]
    return items, skipped, root


def _skip_dict(skip: Any) -> dict[str, Any]:
    if isinstance(skip, Mapping):
        return dict(skip)
    return {name: getattr(skip, name, None) for name in ("file", "row", "field", "reason")}


def _is_missing_video(skip: Mapping[str, Any]) -> bool:
    # The loaders turn a row whose video file is absent into a Skip on the video column ("videoID",
    # "video_path", ...) saying "video not found"; every other skip is a malformed row, reported as skipped.
    reason = str(skip.get("reason") or "").lower()
    name = str(skip.get("field") or "").lower()
    return ("video" in name or "video" in reason) and ("not found" in reason or "missing" in reason)


# --------------------------------------------------------------------------------------------- inputs


@dataclass
class ItemInputs:
    """One item, tokenised and with its pixels, batch of 1.

    Attributes:
        input_ids: `(1, S)` long, the prompt (no answer).
        query_mask: `(1, S)` bool, the tokens after the video.
        pixel_values_videos: `(1, tubelets, temporal_patch * 3, H, W)` float.
        candidates: the ids each option's text appends after the prompt (for `option_text`).
        num_frames: frames fed to the model.
        num_visual: visual tokens in the prompt.
        tokens_per_frame: visual tokens per frame (tokens per tubelet / frames per tubelet).
    """

    input_ids: torch.Tensor
    query_mask: torch.Tensor
    pixel_values_videos: torch.Tensor
    candidates: list[list[int]]
    num_frames: int
    num_visual: int
    tokens_per_frame: float


def _resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """`(T, H, W, 3)` uint8 → `(T, size, size, 3)` uint8 (bilinear, antialiased), when the size differs."""
    if tuple(frames.shape[1:3]) == (size, size):
        return frames
    pixels = frames.permute(0, 3, 1, 2).float()
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def pixel_stats(vlm) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the model's video processor (its folder's `video_preprocessor_config.json`).

    Defaults to mean 0, std 1 (pixels in [0, 1], tiny-omni's scaling) when the folder has no such file.
    """
    folder = Path(str(getattr(vlm.config, "_name_or_path", "") or ""))
    path = folder / "video_preprocessor_config.json"
    mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        mean = list(config.get("norm_mean", config.get("image_mean", mean)))
        std = list(config.get("norm_std", config.get("image_std", std)))
    return mean, std


def _native_prompt(
    tokenizer, item, text: str, num_visual: int, video_id: int, labels: FrameLabels | None
) -> tuple[list[int], list[bool], list]:
    if len(item.options) != 4:
        raise UserInputError(
            f"item {item.id} has {len(item.options)} options but prompt_style=native lays out exactly 4 (the tiny "
            "model's format); use benchmark.prompt_style=benchmark"
        )
    prompt = encode_example(
        tokenizer, item.question, item.options, num_visual, answer=None, video_token_id=video_id, frame_labels=labels
    )
    return prompt.input_ids, prompt.query_mask, option_token_ids(tokenizer, item.options)


def _benchmark_prompt(
    tokenizer, item, text: str, num_visual: int, video_id: int, labels: FrameLabels | None
) -> tuple[list[int], list[bool], list]:
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    # The benchmark's text goes after the video, on its own line, as the reference harnesses place it.
    query = text_ids(tokenizer, "\n" + text)
    if video_id in query:
        raise UserInputError(f"item {item.id}: the prompt text contains the video placeholder token (id {video_id})")
    video, _ = video_part(tokenizer, num_visual, video_id, labels)
    ids = bos + video + query
    query_mask = [False] * (len(bos) + len(video)) + [True] * len(query)
    return ids, query_mask, [text_ids(tokenizer, " " + option.strip()) for option in item.options]


_PROMPTS: dict[str, Callable[..., tuple[list[int], list[bool], list]]] = {
    "native": _native_prompt,
    "benchmark": _benchmark_prompt,
}


def _prompt_text(module: ModuleType, item, spec: BenchmarkSpec) -> str:
    """`build_prompt(item, **prompt_kwargs)`; with subtitles, also the video facts the cue selection needs.

    Video-MME's subtitle prompt keeps only the cues covering the sampled frames, so it needs the video's frame
    rate and count and the number of frames sampled (`fps`, `total_frames`, `frame_num`; -1: every frame).
    """
    kwargs = dict(spec.prompt_kwargs)
    params = inspect.signature(module.build_prompt).parameters
    if kwargs.get("subtitles") and {"fps", "total_frames"} <= set(params):
        import decord

        reader = decord.VideoReader(str(item.video), ctx=decord.cpu(0), num_threads=1)
        kwargs.setdefault("fps", float(reader.get_avg_fps()))
        kwargs.setdefault("total_frames", len(reader))
        if "frame_num" in params:
            kwargs.setdefault("frame_num", spec.num_frames if spec.num_frames is not None else -1)
    return module.build_prompt(item, **kwargs)


def prepare_inputs(item, spec: BenchmarkSpec, module: ModuleType, tokenizer, model_config, stats=None) -> ItemInputs:
    """Frames, pixels and the prompt of one item.

    Args:
        item: a benchmark `Item` (`video`, `question`, `options`, ...).
        spec: the benchmark setting (`num_frames`, `prompt_style`, `prompt_kwargs`).
        module: the benchmark module (its `build_prompt` for `prompt_style=benchmark`).
        tokenizer: the model's tokenizer.
        model_config: the VLM config (`image_token_id`, `force_image_size`, `video_temporal_patch_size`, ...).
        stats: `(mean, std)` pixel normalisation (`pixel_stats`); default `[0, 1]` pixels.

    Returns:
        The item's `ItemInputs`.
    """
    from hpft.data.video import read_frames
    from hpft.models.processor import frame_labels_for, frames_to_pixel_values, tokens_per_tubelet

    frames = torch.as_tensor(read_frames(item.video, spec.num_frames))
    size = getattr(model_config, "force_image_size", None)
    if size is not None:
        frames = _resize(frames, int(size))
    temporal = int(getattr(model_config, "video_temporal_patch_size", 1) or 1)
    mean, std = stats or ([0.0] * 3, [1.0] * 3)
    pixels = frames_to_pixel_values(frames, temporal, mean=mean, std=std)
    per_tubelet = tokens_per_tubelet(model_config, frames.shape[1], frames.shape[2])
    num_visual = pixels.shape[1] * per_tubelet
    text = _prompt_text(module, item, spec) if spec.prompt_style == "benchmark" else ""
    labels = frame_labels_for(model_config, per_tubelet)  # the model's own layout, at this item's frame size
    ids, query_mask, candidates = _PROMPTS[spec.prompt_style](
        tokenizer, item, text, num_visual, int(model_config.image_token_id), labels
    )
    return ItemInputs(
        input_ids=torch.tensor([ids], dtype=torch.long),
        query_mask=torch.tensor([query_mask], dtype=torch.bool),
        pixel_values_videos=pixels,
        candidates=[list(c) for c in candidates],
        num_frames=int(frames.shape[0]),
        num_visual=int(num_visual),
        tokens_per_frame=per_tubelet / temporal,
    )


def letter_token_ids(tokenizer, letters: Sequence[str]) -> list[list[int]]:
    """For each letter, the single tokens that spell it as the next token: " A" and "A" (where one token).

    Prompts end differently ("Answer:", "Best option: (", a newline), so the letter may come with or without a
    leading space; the letter's score is the total probability of its spellings.

    Raises:
        UserInputError: when neither spelling of a letter is one token (e.g. tiny-omni's closed vocabulary has no
            "E"): the `letter` variant cannot score that benchmark with this tokenizer.
    """
    table = []
    for letter in letters:
        ids = []
        for text in (" " + letter, letter):
            encoded = text_ids(tokenizer, text)
            if len(encoded) == 1 and encoded[0] not in ids and encoded[0] != tokenizer.unk_token_id:
                ids.append(encoded[0])
        if not ids:
            raise UserInputError(
                f"the tokenizer has no single token for option letter {letter!r}, so benchmark.variant=letter cannot "
                "score it; use benchmark.mode=generate or benchmark.variant=option_text"
            )
        table.append(ids)
    return table


# --------------------------------------------------------------------------------------------- answering


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Context:
    vlm: Any
    tokenizer: Any
    spec: BenchmarkSpec
    module: ModuleType
    reduction: ReductionConfig
    item: Any
    inputs: ItemInputs
    embeds: torch.Tensor
    visual_mask: torch.Tensor
    query_mask: torch.Tensor
    prefill: Any


def _answer_option_text(ctx: _Context) -> dict[str, Any]:
    batch = {
        "input_ids": ctx.inputs.input_ids.to(ctx.embeds.device),
        "query_mask": ctx.query_mask,
        "pixel_values_videos": ctx.inputs.pixel_values_videos.to(ctx.embeds.device, ctx.embeds.dtype),
        "candidates": [ctx.inputs.candidates],
    }
    loglik, realised = option_logliks(ctx.vlm, batch, ctx.reduction, normalize=ctx.spec.normalize)
    scores = loglik[0].tolist()
    return {"pred": LETTERS[int(loglik[0].argmax())], "scores": scores, "realised_keep": float(realised)}


def _answer_letter(ctx: _Context) -> dict[str, Any]:
    logprobs = torch.log_softmax(ctx.prefill.logits[0, -1].float(), dim=-1)
    table = letter_token_ids(ctx.tokenizer, LETTERS[: len(ctx.item.options)])
    scores = [float(torch.logsumexp(logprobs[ids], dim=0)) for ids in table]
    return {"pred": LETTERS[max(range(len(scores)), key=scores.__getitem__)], "scores": scores}


def _answer_generate(ctx: _Context) -> dict[str, Any]:
    tokens, prefill = reduced_generate(
        ctx.vlm.language_model,
        ctx.embeds,
        ctx.visual_mask,
        ctx.query_mask,
        ctx.reduction,
        max_new_tokens=ctx.spec.max_new_tokens,
        eos_token_id=ctx.tokenizer.eos_token_id,
    )
    text = ctx.tokenizer.decode(tokens[0].tolist(), skip_special_tokens=True)
    pred = ctx.module.parse_answer(text, ctx.item.doc) or ""
    return {"pred": pred, "text": text, "realised_keep": float(prefill.realised_keep)}


_ANSWERS: dict[tuple[str, str], Callable[[_Context], dict[str, Any]]] = {
    ("logits", "option_text"): _answer_option_text,
    ("logits", "letter"): _answer_letter,
    ("generate", "option_text"): _answer_generate,
    ("generate", "letter"): _answer_generate,
}


def _reduced_answer(vlm, tokenizer, item, spec, module, reduction, inputs, time_prefill) -> tuple[dict[str, Any], Any]:
    """The answer fields (with `realised_keep`) and `prefill_s` of one item under the in-decoder reduction."""
    device = next(vlm.parameters()).device
    input_ids = inputs.input_ids.to(device)
    pixels = inputs.pixel_values_videos.to(device, next(vlm.parameters()).dtype)
    embeds, visual_mask = embed_video_prompt(vlm, input_ids, pixels)
    query_mask = inputs.query_mask.to(device)
    prefill, prefill_s = None, None
    letter = (spec.mode, spec.variant) == ("logits", "letter")
    if time_prefill or letter:
        _synchronize(device)
        start = time.perf_counter()
        prefill = reduced_forward(vlm.language_model, embeds, visual_mask, query_mask, reduction, logits_to_keep=1)
        _synchronize(device)
        prefill_s = time.perf_counter() - start
    ctx = _Context(vlm, tokenizer, spec, module, reduction, item, inputs, embeds, visual_mask, query_mask, prefill)
    answer = _ANSWERS[(spec.mode, spec.variant)](ctx)
    if answer.get("realised_keep") is None:
        answer["realised_keep"] = float(prefill.realised_keep)
    return answer, prefill_s


@torch.no_grad()
def score_item(
    vlm, tokenizer, item, spec: BenchmarkSpec, module: ModuleType, reduction: ReductionConfig, stats=None,
    time_prefill: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Answer one item and return its record (one line of `items.jsonl`).

    Args:
        vlm: the `nemotron_h_omni` model (eval mode).
        tokenizer: its tokenizer.
        item: a benchmark `Item`.
        spec: the benchmark setting.
        module: the benchmark module.
        reduction: the token-reduction setting of the prefill.
        stats: pixel normalisation (`pixel_stats(vlm)`).
        time_prefill: time a reduced decoder prefill of the prompt (`prefill_s`). In the `letter` variant the
            scoring forward is that prefill; the other modes run it once more, for the timing alone.

    Returns:
        The fields of `hpft.benchmarks.aggregate.make_record` (`id`, `output` (generated text, None in the
        logits modes), `pred` (a letter, "" when unparsed), `answer`, `num_options`, `meta`), then `correct`
        (before any guess: the benchmark's `aggregate` applies the reference's), `parsed`, `scores` (logits
        modes), `num_frames`, `num_visual`, `tokens_per_frame`, `realised_keep`, `prefill_s`.
    """
    inputs = prepare_inputs(item, spec, module, tokenizer, vlm.config, stats)
    if evs_active(vlm):  # the EVS baseline: transformers' own forward prunes the video before the decoder
        answer, prefill_s = evs_answer(vlm, tokenizer, item, spec, module, inputs, time_prefill=time_prefill)
    else:
        answer, prefill_s = _reduced_answer(vlm, tokenizer, item, spec, module, reduction, inputs, time_prefill)
    realised = answer.pop("realised_keep")
    pred = answer.pop("pred")
    return {
        # what the benchmark's `aggregate` reads (`hpft.benchmarks.aggregate.make_record`) ...
        "id": str(item.id),
        "output": answer.pop("text", None),
        "pred": pred,
        "answer": item.answer,
        "num_options": len(item.options),
        "meta": _jsonable(dict(item.meta)),
        # ... and what this run measured; `correct` before any guess (the aggregate applies the reference's)
        "correct": pred == item.answer,
        "parsed": pred != "",
        **answer,
        "num_frames": inputs.num_frames,
        "num_visual": inputs.num_visual,
        "tokens_per_frame": inputs.tokens_per_frame,
        "realised_keep": realised,
        "prefill_s": prefill_s,
    }


def _jsonable(value: Any) -> Any:
    """A JSON-ready copy (numpy scalars and other objects become plain values or strings)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# --------------------------------------------------------------------------------------------- resumable log


class ItemLog:
    """`items.jsonl`: one JSON record per scored item, appended and flushed as soon as it is scored.

    A rerun reads the records already there and skips their ids. A torn last line (the process was killed
    mid-write) is dropped and rewritten. `settings.json` next to it fingerprints the setting that produced the
    records; resuming into a folder written with another setting is refused, so records never mix.

    Args:
        folder: the output folder (created).
        settings: what must match to resume (benchmark, model, checkpoint, reduction, answer mode, frames).
    """

    def __init__(self, folder: str | os.PathLike[str], settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "items.jsonl"
        self.settings = _jsonable(dict(settings))
        settings_path = self.folder / "settings.json"
        if settings_path.is_file() and self.path.is_file():
            old = json.loads(settings_path.read_text(encoding="utf-8"))
            changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            if changed:
                raise UserInputError(
                    f"{self.path} holds items scored with another setting (differs in {changed}); resume with the "
                    "same settings, or write into a new folder (hydra.run.dir=...)"
                )
        settings_path.write_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self.records: dict[str, dict[str, Any]] = {}
        self._read()

    def _read(self) -> None:
        if not self.path.is_file():
            return
        good_bytes = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # a torn final line: everything after it is rewritten
                if not line.endswith(b"\n"):
                    break
                good_bytes += len(line)
                self.records.setdefault(str(record["id"]), record)
        if good_bytes != self.path.stat().st_size:
            log.warning("%s: dropping a partly written last line (the previous run was interrupted)", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)

    def __contains__(self, item_id: str) -> bool:
        return str(item_id) in self.records

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it to the OS, so an interrupted run keeps it."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(dict(record))) + "\n")
            f.flush()
        self.records[str(record["id"])] = dict(record)


# --------------------------------------------------------------------------------------------- the run


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def summarize(module: ModuleType, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The benchmark's `aggregate` on scored records (in the release's row order), headline as a fraction.

    `aggregate` returns the reference's number in the reference's units (`score`, `units`: percent for Video-MME
    and MLVU); `acc` and `by` here are fractions in [0, 1] on every benchmark, so W&B panels and the training
    metrics (`val/needle/acc`) share one scale. The reference's own figures stay under `reference_score`.

    Returns:
        `acc`, `by` (`{breakdown: {value: fraction}}`), `n_unparsed`, `n_guessed`, and the aggregate's other
        fields (`metric`, `reference`, `units`, `reference_score`, `accuracy` (micro), counts, ...).
    """
    summary = dict(module.aggregate(list(records)))
    scale = 0.01 if summary.get("units") == "percent" else 1.0
    headline = summary.pop("score", summary.get("acc", summary.get("accuracy")))
    by = summary.pop("by", {}) or {}
    out = {
        "acc": None if headline is None else float(headline) * scale,
        "by": {name: {k: float(v) * scale for k, v in table.items()} for name, table in by.items()},
        "reference_score": headline,
        **{k: v for k, v in summary.items() if k not in ("acc", "n_total", "n_scored", "benchmark")},
    }
    out.setdefault("n_unparsed", sum(r.get("pred") == "" for r in records))
    out.setdefault("n_guessed", 0)
    return out


def evaluate_benchmark(
    vlm,
    tokenizer,
    spec: BenchmarkSpec,
    reduction: ReductionConfig,
    out_dir: str | os.PathLike[str] | None = None,
    max_items: int | None = None,
    progress: bool = True,
    time_prefill: bool = True,
    settings: Mapping[str, Any] | None = None,
    loaded: tuple[list, list[dict[str, Any]], Path] | None = None,
) -> dict[str, Any]:
    """Score every item of a benchmark (or the first `max_items`), resumably, and aggregate.

    Args:
        vlm: the `nemotron_h_omni` model, eval mode, on its device.
        tokenizer: its tokenizer.
        spec: the benchmark setting.
        reduction: the token-reduction setting.
        out_dir: where `items.jsonl`, `settings.json` and `results.json` go; None keeps everything in memory
            (the training callback).
        max_items: score only the first this-many items (in the loader's order); None: all.
        progress: show a tqdm bar.
        time_prefill: measure `prefill_s` (see `score_item`).
        settings: extra resume-fingerprint entries (model, checkpoint).
        loaded: `load_items(spec)` when the caller already loaded them (to report data errors before loading
            the model); None loads them here.

    Returns:
        The results (`RESULT_KEYS` and more), also written to `<out_dir>/results.json`.
    """
    from tqdm.auto import tqdm

    module = spec.benchmark_module()
    items, skipped, root = loaded if loaded is not None else load_items(spec, module)
    selected = items if max_items is None else items[:max_items]
    fingerprint = {"benchmark": spec.as_dict(), "root": str(root), "reduction": reduction.as_dict(), **(settings or {})}
    fingerprint["benchmark"].pop("skip_missing_videos", None)  # changes only what counts as skipped
    item_log = ItemLog(out_dir, fingerprint) if out_dir is not None else None
    records = dict(item_log.records) if item_log is not None else {}
    todo = [item for item in selected if str(item.id) not in records]
    if len(todo) < len(selected):
        log.info(
            "%s: %d of %d items already scored in %s", spec.name, len(selected) - len(todo), len(selected), out_dir
        )
    stats = pixel_stats(vlm)
    started = time.perf_counter()
    n_done = n_correct = 0
    bar = tqdm(
        todo, desc=f"{spec.name} ({reduction.schedule} keep {reduction.keep})", unit="item", disable=not progress
    )
    for item in bar:
        record = score_item(vlm, tokenizer, item, spec, module, reduction, stats, time_prefill=time_prefill)
        records[record["id"]] = record
        if item_log is not None:
            item_log.append(record)
        n_done, n_correct = n_done + 1, n_correct + bool(record["correct"])
        bar.set_postfix(acc=f"{n_correct / n_done:.3f}")  # this run's items, before any guess
    wall = time.perf_counter() - started

    scored = [records[i] for i in dict.fromkeys(str(item.id) for item in selected) if i in records]
    summary = summarize(module, scored)
    results = {
        "benchmark": spec.name,
        "module": spec.module,
        "root": str(root),
        "n_total": len(selected) + len(skipped),
        "n_scored": len(scored),
        "n_skipped": len(skipped),
        **summary,
        "mode": spec.mode,
        "variant": spec.variant if spec.mode == "logits" else None,
        "prompt_style": spec.prompt_style,
        "max_new_tokens": spec.max_new_tokens if spec.mode == "generate" else None,
        "num_frames": spec.num_frames,
        "frames_per_item": _mean(r["num_frames"] for r in scored),
        "tokens_per_frame": _mean(r["tokens_per_frame"] for r in scored),
        "visual_tokens_per_item": _mean(r["num_visual"] for r in scored),
        "schedule": reduction.schedule,
        "keep": reduction.keep,
        "scorer": reduction.scorer,
        "reduction": reduction.as_dict(),
        "realised_keep": _mean(r["realised_keep"] for r in scored),
        "prefill_s": _mean(r["prefill_s"] for r in scored),
        "wall_time_s": wall,
        "skipped": skipped[:_MAX_LISTED_SKIPS],
        **(settings or {}),
    }
    if out_dir is not None:
        table, save = results.get("niah"), getattr(module, "save_niah_heatmap", None)
        if table and table.get("depths") and callable(save):  # the needle benchmark's V-NIAH grid
            png, grid = save(table, Path(out_dir), name="niah")
            results.update(niah_png=str(png), niah_json=str(grid))
        write_json(Path(out_dir) / "results.json", _jsonable(results))
    return _jsonable(results)


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write `data` as indented JSON, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def metric_dict(results: Mapping[str, Any], prefix: str = "val") -> dict[str, float]:
    """Flat logger metrics of one benchmark's results.

    `<prefix>/<bench>/acc`, `<prefix>/<bench>/<breakdown>/<value>` for every breakdown in `by`,
    `<prefix>/<bench>/n_unparsed`, `<prefix>/<bench>/frames_per_item` (frames fed, mean per item),
    `<prefix>/<bench>/tokens_per_frame`, `<prefix>/<bench>/realised_keep`, and `perf/prefill_s`.
    """
    bench = results["benchmark"]
    metrics: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            metrics[key] = float(value)

    put(f"{prefix}/{bench}/acc", results.get("acc"))
    for breakdown, values in (results.get("by") or {}).items():
        if isinstance(values, Mapping):
            for value, score in values.items():
                score = score.get("acc") if isinstance(score, Mapping) else score
                put(f"{prefix}/{bench}/{breakdown}/{value}", score)
    put(f"{prefix}/{bench}/n_unparsed", results.get("n_unparsed"))
    put(f"{prefix}/{bench}/frames_per_item", results.get("frames_per_item"))
    put(f"{prefix}/{bench}/tokens_per_frame", results.get("tokens_per_frame"))
    put(f"{prefix}/{bench}/realised_keep", results.get("realised_keep"))
    put("perf/prefill_s", results.get("prefill_s"))
    return metrics
