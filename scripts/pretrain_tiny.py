"""Pretrain the embedded tiny-omni (`data/tiny-omni`) on the synthetic needle task and report its accuracy.

Full finetune, no reduction, the gated curriculum of `hpft.models.pretrain` (seeded, resumable from
`--work/state.pt`). At the end the weights overwrite `model.safetensors` in the model folder, and the test
split (generated H.264 videos read back through decord, the real evaluation path) is scored unreduced by
option-text likelihood, beside the question-blind shortcut, into `pretrain_report.json`. Example:

    python -m hpft.models.tiny_omni --out outputs/tiny-omni-new --seed 0   # a fresh, plain-prompt folder
    python scripts/pretrain_tiny.py --model outputs/tiny-omni-new --work outputs/pretrain-tiny --seed 0 \
        --to-stage format-16f

The `when-*` stages (teaching which quarter of the video an object is in) continue those weights, in the same
folder, with relative frame labels and a position head naming each visual token's quarter (how the committed
weights were made, data/tiny-omni/README.md; 36 min on 2 threads):

    python scripts/pretrain_tiny.py --model outputs/tiny-omni-new --work outputs/pretrain-when --seed 0 \
        --lr 5e-4 --threads 2 --frame-labels relative --position-target quarter --from-stage when-one-object
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from hpft.data.collate import VideoQACollator
from hpft.data.datamodule import NeedleQADataset, default_cache_dir
from hpft.data.synthetic import ensure_dataset, read_jsonl, shortcut_accuracy
from hpft.evaluation import score_options
from hpft.models.loading import load_vlm
from hpft.models.position_loss import POSITION_TARGETS
from hpft.models.pretrain import CURRICULUM, NO_REDUCTION, pretrain
from hpft.models.processor import FRAME_LABEL_STYLES, FRAME_LABELS_KEY, frame_labels_for, tokens_per_tubelet


def evaluate_split(vlm, tokenizer, split_dir: Path, split: str, num_frames: int) -> dict:
    """Unreduced multiple-choice accuracy on a generated split, overall and per kind, and the blind shortcuts."""
    jsonl = split_dir / f"{split}.jsonl"
    dataset = NeedleQADataset(
        jsonl, num_frames, tokenizer, tokens_per_tubelet(vlm.config), vlm.config.image_token_id,
        frame_labels=frame_labels_for(vlm.config),
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=8, collate_fn=VideoQACollator(tokenizer.pad_token_id))
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    vlm.eval()
    for batch in tqdm(loader, desc=f"eval {split} ({num_frames} frames)", leave=False):
        choices, _ = score_options(vlm, batch, NO_REDUCTION)
        for kind, hit in zip(batch["kind"], (choices == batch["answer_index"]).tolist(), strict=True):
            right[kind] = right.get(kind, 0) + int(hit)
            total[kind] = total.get(kind, 0) + 1
    records = read_jsonl(jsonl)
    return dict(
        split=split,
        num_frames=num_frames,
        n=sum(total.values()),
        acc=sum(right.values()) / sum(total.values()),
        by_kind={kind: dict(n=total[kind], acc=right[kind] / total[kind]) for kind in sorted(total)},
        shortcut_present=shortcut_accuracy(records, strategy="present", expected=True),
        shortcut_rarest=shortcut_accuracy(records, strategy="rarest", expected=True),
    )


def main() -> None:
    """Pretrain, save the weights into the model folder, evaluate, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/tiny-omni", help="model folder (weights are overwritten)")
    parser.add_argument("--work", default="outputs/pretrain-tiny", help="resume state and training log")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-videos", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="stop training after this many minutes in total (across resumes), then save and evaluate",
    )
    parser.add_argument(
        "--from-stage",
        default=None,
        choices=[stage.name for stage in CURRICULUM],
        help="start a fresh run at this curriculum stage, continuing from the weights in --model (which must be "
        "what the earlier stages taught) with a fresh optimizer; default: the whole curriculum from the first stage. "
        "A resume point in --work takes precedence (the run resumes where it stopped)",
    )
    parser.add_argument(
        "--to-stage",
        default=None,
        choices=[stage.name for stage in CURRICULUM],
        help="stop after this curriculum stage (default: the last). The committed weights come from two runs: "
        "--to-stage format-16f with plain prompts, then --from-stage when-one-object with relative frame labels",
    )
    parser.add_argument(
        "--frame-labels",
        nargs="?",
        const="absolute",
        choices=[style for style in FRAME_LABEL_STYLES if isinstance(style, str)],  # the config's named layouts
        default=None,
        help=f"train with each tubelet labelled, 'Frame k:' (absolute, the default of the bare flag) or 'Frame k at "
        f"p%%:' (relative: where it starts, in percent of the video), and record it in the model's config.json "
        f"({FRAME_LABELS_KEY}), so that every hpft prompt for this model uses that layout",
    )
    parser.add_argument(
        "--position-layer",
        type=int,
        default=0,
        help="decoder block whose output the tubelet-index loss reads, in stages with a position_loss "
        "(hpft.models.position_loss)",
    )
    parser.add_argument(
        "--position-target",
        default="tubelet",
        choices=list(POSITION_TARGETS),
        help="what the tubelet-index loss names at each visual token: its tubelet, or its quarter of the video "
        "(which a causal token can know only with --frame-labels relative)",
    )
    args = parser.parse_args()
    names = [stage.name for stage in CURRICULUM]
    start_stage = 0 if args.from_stage is None else names.index(args.from_stage)
    end_stage = len(CURRICULUM) if args.to_stage is None else names.index(args.to_stage) + 1
    if end_stage <= start_stage:
        parser.error(f"--to-stage {args.to_stage} comes before --from-stage {args.from_stage} in the curriculum")
    stages = CURRICULUM[:end_stage]
    if any(stage.quarter_questions for stage in stages[start_stage:]) and args.frame_labels is None:
        parser.error(
            "the stages to run ask 'in which quarter' questions, which a model without frame labels never learned "
            "(README, Results): add --frame-labels relative --position-target quarter, or stop earlier with "
            "--to-stage format-16f"
        )
    if args.position_target == "quarter" and args.frame_labels != "relative":
        parser.error("--position-target quarter needs --frame-labels relative: a causal token can only know its "
                     "quarter of the video from a label that says where in the video it is")  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(sys.argv)
    print(f"command: {command}\ntorch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    vlm, tokenizer = load_vlm(args.model)
    if args.frame_labels:
        setattr(vlm.config, FRAME_LABELS_KEY, True if args.frame_labels == "absolute" else args.frame_labels)
    started = time.time()
    budget = None if args.time_budget_min is None else args.time_budget_min * 60
    summary = pretrain(
        vlm, tokenizer, args.work, stages, seed=args.seed, batch_size=args.batch_size, lr=args.lr, time_budget_s=budget,
        start_stage=start_stage, position_layer=args.position_layer, position_target=args.position_target,
    )  # fmt: skip
    vlm.eval()
    vlm.save_pretrained(args.model, safe_serialization=True)

    results = []
    for frames in (16, 32):
        split_dir = ensure_dataset(default_cache_dir(), "test", args.test_videos, frames, seed=1000 + args.seed)
        results.append(evaluate_split(vlm, tokenizer, split_dir, "test", frames))
        print(json.dumps(results[-1]), flush=True)
    report = dict(command=command, seed=args.seed, train=summary, test=results, cpu_threads=torch.get_num_threads(),
                  wall_s=round(time.time() - started, 1), cpu_count=os.cpu_count())  # fmt: skip
    Path(args.model, "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.model}/pretrain_report.json")


if __name__ == "__main__":
    main()
