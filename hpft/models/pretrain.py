"""Pretrain the embedded tiny-omni on the synthetic needle task: a gated curriculum, full finetune, no reduction.

What makes a tiny model learn to bind the question's words to one visual token (measured on this CPU):

1. **Name the object first.** One object per video, dense questions about its colour *and* its shape. Shape
   questions are what teach the vision tower to encode the glyph at all; colour alone never does.
2. **Then bind.** Several objects; every object whose glyph (or colour) is unique in the video gets a question,
   all in one sequence after the video (`dense` format: ` Question: … Answer: red Question: … Answer: ring …`),
   so one video encoding yields many supervised answers. From scratch (no stage 1), the same model sat at
   chance for 3000 steps; after 600 single-object steps it went from chance to 0.98 needle accuracy within
   ~900 steps (8 frames, 2 needles + 2 distractors).
3. **Then the benchmark format** (`<s>Video:… Question: … Options: A. … Answer: <option text></s>`, one
   question), mixed with dense samples, at full difficulty and longer videos.

A stage can also ask the "which quarter" questions in its dense samples (`quarter_questions`) and draw several
video lengths (`frames=(16, 32)`: one length per batch, the held-out set split evenly). The `when-*` stages use
both, and run as a second command from the first stages' weights (`--from-stage when-one-object`):

4. **Then when.** Telling *in which quarter of the video* an object appears needs the prompt to say where each
   tubelet is (relative frame labels, `hpft.data.prompts.FrameLabels`) and the object's own tokens to carry it (an
   auxiliary head on block 0 naming each visual token's quarter, `hpft.models.position_loss`); the question then
   reads the quarter off the asked object as it reads its colour.

Each stage moves on when held-out multiple-choice accuracy (option-text likelihood, as evaluation scores it)
reaches its gate, or after its step budget. Videos are rendered in memory (no H.264 round trip; the palette
survives encoding within ~5 levels). Deterministic for a seed; checkpoints every `save_every` steps and resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hpft.data.collate import VideoQACollator
from hpft.data.prompts import (
    EncodedPrompt,
    FrameLabels,
    answer_text,
    encode_example,
    format_open_query,
    option_token_ids,
    prefix_ids,
    text_ids,
    video_part,
)
from hpft.data.synthetic import (
    LETTERS,
    QUARTERS,
    make_questions,
    make_scene,
    needle_quarter,
    quarter_question,
    render,
    scene_objects,
    shortcut_accuracy,
)
from hpft.evaluation import score_options
from hpft.models.position_loss import TubeletProbe
from hpft.models.processor import frame_labels_for, frames_to_pixel_values, tokens_per_tubelet
from hpft.reduction import ReductionConfig

IGNORE_INDEX = -100
NO_REDUCTION = ReductionConfig(schedule="none")


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: the videos it draws, the share of dense samples, its budget and its gate."""

    name: str
    frames: int | tuple[int, ...]  # a tuple: every batch draws one of these lengths (held-out: all, equally)
    num_needles: int
    num_distractors: int
    dense: float  # probability that a training sample uses the dense multi-question format
    max_steps: int
    gate: float | None  # held-out accuracy that ends the stage early (None: run max_steps)
    quarter_questions: bool = False  # dense samples also ask "in which quarter … does the <glyph> appear?"
    position_loss: float = 0.0  # weight of the tubelet-index loss on visual tokens (`TubeletProbe`); 0: none

    @property
    def lengths(self) -> tuple[int, ...]:
        """The video lengths (frames) this stage draws from."""
        return self.frames if isinstance(self.frames, tuple) else (self.frames,)


CURRICULUM = (
    Stage("name-one-object", frames=8, num_needles=1, num_distractors=0, dense=1.0, max_steps=600, gate=None),
    Stage("bind-two", frames=8, num_needles=2, num_distractors=2, dense=0.5, max_steps=2500, gate=0.85),
    Stage("bind-three", frames=8, num_needles=3, num_distractors=4, dense=0.8, max_steps=2000, gate=0.85),
    Stage("format-8f", frames=8, num_needles=3, num_distractors=8, dense=0.5, max_steps=1500, gate=0.85),
    Stage("format-16f", frames=16, num_needles=3, num_distractors=8, dense=0.5, max_steps=1000, gate=0.85),
    # Teach *when* (the "which quarter" questions): run with `scripts/pretrain_tiny.py --frame-labels relative
    # --position-target quarter --from-stage when-one-object` (the committed weights; data/tiny-omni/README.md).
    # Measured from the first stages' weights: 750 + 3,250 + 500 + 250 steps (each stage gated), 36 min on 2
    # threads; test splits 0.995 / 0.958 at 16 / 32 frames, quarter 0.98 / 0.95. What did not work (README,
    # Results): without labels the quarter stayed at chance; with absolute " Frame k:" labels the quarter of the
    # *asked* object among several stayed at chance for 6,000 when-bind-8f steps, and with a head naming each
    # token's tubelet it rose slowly (0.47 at 8 frames after 5,000 more steps): a causal token cannot turn an
    # absolute frame number into a quarter without the video's length.
    Stage("when-one-object", frames=8, num_needles=1, num_distractors=0, dense=0.6, max_steps=2500, gate=0.95,
          quarter_questions=True, position_loss=0.5),
    Stage("when-bind-8f", frames=8, num_needles=3, num_distractors=2, dense=0.6, max_steps=6000, gate=0.9,
          quarter_questions=True, position_loss=0.5),
    Stage("when-bind-16f", frames=16, num_needles=3, num_distractors=8, dense=0.5, max_steps=4000, gate=0.9,
          quarter_questions=True, position_loss=0.5),
    Stage("when-lengths", frames=(16, 32), num_needles=3, num_distractors=8, dense=0.5, max_steps=3000, gate=0.9,
          quarter_questions=True, position_loss=0.5),
)  # fmt: skip


def dense_example(
    tokenizer,
    scene,
    num_visual: int,
    rng: np.random.Generator,
    video_token_id: int,
    quarters: bool = False,
    frame_labels: FrameLabels | None = None,
) -> EncodedPrompt:
    """Every unambiguous question about a scene, answered in one sequence after the video.

    Objects whose glyph is unique in the video get "What colour is the <glyph>?"; objects whose colour is unique
    get "Which shape is <colour>?"; with `quarters`, needles whose glyph is unique also get "In which quarter of
    the video does the <glyph> appear?". The query mask covers everything after the video that is not an answer.
    The video part is laid out as `encode_example` lays it out (`frame_labels`).
    """
    by_glyph: dict[str, set[str]] = {}
    by_colour: dict[str, set[str]] = {}
    for track in scene.tracks:
        by_glyph.setdefault(track.glyph, set()).add(track.colour)
        by_colour.setdefault(track.colour, set()).add(track.glyph)
    pairs = []
    for track in scene.tracks:
        if len(by_glyph[track.glyph]) == 1:
            pairs.append((f"What colour is the {track.glyph}?", track.colour))
        if len(by_colour[track.colour]) == 1:
            pairs.append((f"Which shape is {track.colour}?", track.glyph))
    if quarters:
        pairs += [
            (quarter_question(needle.glyph), QUARTERS[needle_quarter(needle, scene.num_frames)])
            for needle in scene.needles
            if len(by_glyph[needle.glyph]) == 1
        ]
    pairs = sorted(set(pairs))
    order = rng.permutation(len(pairs))

    prefix = prefix_ids(tokenizer)
    video, visual = video_part(tokenizer, num_visual, video_token_id, frame_labels)
    input_ids = prefix + video
    labels = [IGNORE_INDEX] * len(input_ids)
    last_video = len(input_ids)
    for k in order:
        question, answer = pairs[k]
        query = text_ids(tokenizer, format_open_query(question))
        answer_ids = text_ids(tokenizer, answer_text(answer))
        input_ids += query + answer_ids
        labels += [IGNORE_INDEX] * len(query) + answer_ids
    input_ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return EncodedPrompt(
        input_ids=input_ids,
        visual_mask=[False] * len(prefix) + visual + [False] * (len(input_ids) - last_video),
        query_mask=[i >= last_video and labels[i] == IGNORE_INDEX for i in range(len(input_ids))],
        labels=labels,
        answer_start=last_video,
    )


def make_item(
    tokenizer,
    stage: Stage,
    rng: np.random.Generator,
    tokens_per_tube: int,
    video_token_id: int,
    dense: bool,
    frames: int | None = None,
    frame_labels: FrameLabels | None = None,
):
    """One collator item: a fresh scene, rendered, with a dense or a multiple-choice prompt (+ its record).

    `frames` is the scene's length; default the stage's only length (a multi-length stage must pass it, so that
    one batch holds one length). `frame_labels`: the model's prompt layout (`frame_labels_for(vlm.config)`).
    """
    if frames is None:
        if len(stage.lengths) > 1:
            raise ValueError(f"stage {stage.name} draws from {stage.lengths} frames: pass the batch's `frames`")
        frames = stage.lengths[0]
    scene = make_scene(rng, frames, num_needles=stage.num_needles, num_distractors=stage.num_distractors)
    pixels = frames_to_pixel_values(render(scene))[0]
    num_visual = pixels.shape[0] * tokens_per_tube
    letter = LETTERS[int(rng.integers(4))]
    record = make_questions(scene, rng, [letter], num_questions=1)[0]
    record["objects"] = scene_objects(scene)
    if dense:
        prompt = dense_example(tokenizer, scene, num_visual, rng, video_token_id, stage.quarter_questions, frame_labels)
    else:
        prompt = encode_example(
            tokenizer, record["question"], record["options"], num_visual, record["answer"], video_token_id,
            frame_labels,
        )  # fmt: skip
    item = dict(
        prompt=prompt,
        pixel_values_videos=pixels,
        answer_index=LETTERS.index(record["answer_letter"]),
        candidates=option_token_ids(tokenizer, record["options"]),
        id=f"{stage.name}-{int(rng.integers(1 << 30))}",
        kind=record["kind"],
    )
    return item, record


def evaluate(vlm, batches: list[dict]) -> float:
    """Multiple-choice accuracy (option-text likelihood, no reduction) over prepared batches."""
    right = total = 0
    was_training = vlm.training
    vlm.eval()
    for batch in batches:
        choices, _ = score_options(vlm, batch, NO_REDUCTION)
        right += int((choices == batch["answer_index"]).sum())
        total += len(choices)
    vlm.train(was_training)
    return right / max(total, 1)


def _held_out(
    tokenizer, stage, collate, tokens_per_tube, video_token_id, seed: int, n: int, frame_labels, batch_size: int = 16
):
    """`n` multiple-choice items split evenly over the stage's lengths, batched per length (one shape a batch)."""
    rng = np.random.default_rng([seed, 7919])
    batches, records = [], []
    for frames in stage.lengths:
        pairs = [
            make_item(tokenizer, stage, rng, tokens_per_tube, video_token_id, False, frames, frame_labels)
            for _ in range(n // len(stage.lengths))
        ]
        records += [record for _, record in pairs]
        batches += [collate([item for item, _ in pairs[i : i + batch_size]]) for i in range(0, len(pairs), batch_size)]
    return batches, shortcut_accuracy(records, expected=True)


def pretrain(
    vlm,
    tokenizer,
    out_dir: str | Path,
    curriculum: tuple[Stage, ...] = CURRICULUM,
    seed: int = 0,
    batch_size: int = 8,
    lr: float = 1e-3,
    warmup: int = 100,
    eval_every: int = 250,
    eval_items: int = 64,
    save_every: int = 250,
    time_budget_s: float | None = None,
    start_stage: int = 0,
    position_layer: int = 0,
    position_target: str = "tubelet",
    log=print,
) -> dict:
    """Run the curriculum on `vlm` (full finetune, no reduction), resuming from `out_dir/state.pt` if present.

    Args:
        vlm: a `nemotron_h_omni` model (trained in place).
        tokenizer: its tokenizer.
        out_dir: where `state.pt` (resume point) and `pretrain_log.jsonl` go.
        curriculum: the stages.
        seed: seeds the model-independent randomness (scenes, questions, data order).
        batch_size: videos per step.
        lr: peak AdamW learning rate (betas 0.9/0.95, weight decay 0.05, linear warmup, clip 1.0).
        warmup: warmup steps.
        eval_every: steps between held-out evaluations (the gate).
        eval_items: held-out multiple-choice questions per evaluation.
        save_every: steps between resume points.
        time_budget_s: stop (and save a resume point) once this much training time has been spent in total,
            across resumes; the summary then says where the curriculum stopped. None: run the whole curriculum.
        start_stage: on a fresh start (no `state.pt`), skip the stages before this index: `vlm` already holds what
            they taught (e.g. committed weights that new stages continue from, with a fresh optimizer).
        position_layer: the decoder block whose output the `TubeletProbe` reads, in stages with `position_loss`.
            The probe is trained with the model and kept in `state.pt`, never in the model's weights.
        position_target: what the `TubeletProbe` names at each visual token: `"tubelet"` or `"quarter"`.
        log: printer for progress lines.

    Returns:
        Summary dict: per stage steps, final held-out accuracy and shortcut, and the wall time.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    video_token_id = vlm.config.image_token_id
    tokens_per_tube = tokens_per_tubelet(vlm.config)
    labels_layout = frame_labels_for(vlm.config)
    collate = VideoQACollator(pad_id=tokenizer.pad_token_id)
    params = [p for p in vlm.parameters() if p.requires_grad]
    probe = None
    if any(stage.position_loss for stage in curriculum[start_stage:]):
        probe = TubeletProbe(vlm.config.text_config.hidden_size, layer=position_layer).to(vlm.device)
        params += list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    state_path = out_dir / "state.pt"
    if not 0 <= start_stage < len(curriculum):
        raise ValueError(f"start_stage must index the curriculum (0..{len(curriculum) - 1}), got {start_stage}")
    state = dict(step=0, stage=start_stage, stage_step=0, seconds=0.0, stages=[])
    if state_path.exists():
        saved = torch.load(state_path, weights_only=False)
        if (probe is None) != (saved.get("probe") is None):
            raise ValueError(
                f"{state_path} was written {'with' if probe is None else 'without'} a position loss and this "
                f"curriculum has {'none' if probe is None else 'one'}: resume with the curriculum that wrote it, "
                "or start in a new folder"
            )
        written_for = saved.get("position_target")  # absent in resume points written before it was recorded
        if probe is not None and written_for not in (None, position_target):
            raise ValueError(
                f"{state_path} trained its position head to name the {written_for} of each token, not the "
                f"{position_target}: resume with position_target={written_for!r}, or start in a new folder"
            )
        vlm.load_state_dict(saved["model"])
        if probe is not None:
            probe.load_state_dict(saved["probe"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        where = curriculum[state["stage"]].name if state["stage"] < len(curriculum) else "curriculum complete"
        log(f"resumed at step {state['step']} ({where})")
    vlm.train()
    log_file = (out_dir / "pretrain_log.jsonl").open("a")
    start = time.time() - state["seconds"]

    def save() -> None:
        state["seconds"] = time.time() - start
        tmp = state_path.with_suffix(".tmp")
        probe_state = None if probe is None else probe.state_dict()
        torch.save(
            dict(model=vlm.state_dict(), optimizer=optimizer.state_dict(), state=state, probe=probe_state,
                 position_target=position_target if probe is not None else None),
            tmp,
        )  # fmt: skip
        tmp.replace(state_path)  # atomic: a kill never leaves a half-written resume point

    def out_of_time() -> bool:
        return time_budget_s is not None and time.time() - start >= time_budget_s

    while state["stage"] < len(curriculum) and not out_of_time():
        stage = curriculum[state["stage"]]
        held_out, shortcut = _held_out(
            tokenizer, stage, collate, tokens_per_tube, video_token_id, seed, eval_items, labels_layout
        )
        # The data stream depends only on (seed, stage, stage_step): resuming replays nothing and skips nothing.
        rng = np.random.default_rng([seed, state["stage"], state["stage_step"]])
        acc, stopped = None, False
        while state["stage_step"] < stage.max_steps:
            if out_of_time():
                stopped = True
                break
            state["step"] += 1
            state["stage_step"] += 1
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, state["step"] / warmup)
            frames = stage.lengths[int(rng.integers(len(stage.lengths)))] if len(stage.lengths) > 1 else None
            items = [
                make_item(
                    tokenizer, stage, rng, tokens_per_tube, video_token_id, rng.random() < stage.dense, frames,
                    labels_layout,
                )[0]
                for _ in range(batch_size)
            ]  # fmt: skip
            batch = collate(items)
            with_position = probe is not None and stage.position_loss > 0
            out = vlm(
                input_ids=batch["input_ids"],
                pixel_values_videos=batch["pixel_values_videos"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
                output_hidden_states=with_position,
            )
            loss = out.loss
            if with_position:
                position = probe.loss(out.hidden_states, batch["visual_mask"], tokens_per_tube, position_target)
                loss = loss + stage.position_loss * position
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if state["stage_step"] % eval_every == 0 or state["stage_step"] == stage.max_steps:
                acc = evaluate(vlm, held_out)
                line = dict(step=state["step"], stage=stage.name, loss=round(out.loss.item(), 4), acc=acc,
                            shortcut=round(shortcut, 4), seconds=round(time.time() - start, 1))  # fmt: skip
                if with_position:
                    line["position_loss"] = round(position.item(), 4)
                log_file.write(json.dumps(line) + "\n")
                log_file.flush()
                position_text = f"  position loss {line['position_loss']:.3f}" if with_position else ""
                log(f"step {state['step']:>5} [{stage.name}] loss {out.loss.item():.3f}{position_text}  held-out acc "
                    f"{acc:.3f} (shortcut {shortcut:.3f})  {line['seconds']:.0f}s")  # fmt: skip
                if stage.gate is not None and acc >= stage.gate:
                    break
            if state["step"] % save_every == 0:
                save()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {state['step']}")
        if stopped:
            save()
            log(f"time budget spent: stopping in stage {stage.name} after {state['stage_step']} of its steps")
            break
        state["stages"].append(dict(asdict(stage), steps=state["stage_step"], acc=acc, shortcut=shortcut))
        state["stage"] += 1
        state["stage_step"] = 0
        save()
    log_file.close()
    stopped_in = curriculum[state["stage"]].name if state["stage"] < len(curriculum) else None
    return dict(
        stages=state["stages"],
        steps=state["step"],
        seconds=round(time.time() - start, 1),
        stopped_in_stage=stopped_in,
        stopped_at_stage_step=state["stage_step"] if stopped_in else None,
    )
