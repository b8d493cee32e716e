"""Pretrain the embedded tiny-omni (`data/tiny-omni`) on the synthetic needle task and report its accuracy.

Full finetune, no reduction, the gated curriculum of `hpft.models.pretrain` (seeded, resumable from
`--work/state.pt`). At the end the weights overwrite `model.safetensors` in the model folder, and the test
split (generated H.264 videos read back through decord, the real evaluation path) is scored unreduced by
option-text likelihood, beside the question-blind shortcut, into `pretrain_report.json`. Example:

    python scripts/pretrain_tiny.py --model data/tiny-omni --work outputs/pretrain-tiny --seed 0
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
from hpft.models.pretrain import NO_REDUCTION, pretrain
from hpft.models.processor import tokens_per_tubelet


def evaluate_split(vlm, tokenizer, split_dir: Path, split: str, num_frames: int) -> dict:
    """Unreduced multiple-choice accuracy on a generated split, with the two question-blind shortcuts."""
    jsonl = split_dir / f"{split}.jsonl"
    dataset = NeedleQADataset(jsonl, num_frames, tokenizer, tokens_per_tubelet(vlm.config), vlm.config.image_token_id)
    loader = DataLoader(dataset, batch_size=8, collate_fn=VideoQACollator(tokenizer.pad_token_id))
    right = total = 0
    vlm.eval()
    for batch in tqdm(loader, desc=f"eval {split} ({num_frames} frames)", leave=False):
        choices, _ = score_options(vlm, batch, NO_REDUCTION)
        right += int((choices == batch["answer_index"]).sum())
        total += len(choices)
    records = read_jsonl(jsonl)
    return dict(
        split=split,
        num_frames=num_frames,
        n=total,
        acc=right / total,
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(sys.argv)
    print(f"command: {command}\ntorch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    vlm, tokenizer = load_vlm(args.model)
    started = time.time()
    budget = None if args.time_budget_min is None else args.time_budget_min * 60
    summary = pretrain(
        vlm, tokenizer, args.work, seed=args.seed, batch_size=args.batch_size, lr=args.lr, time_budget_s=budget
    )
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
