"""Training-step throughput and peak memory, full vs reduced, for the tiny and medium Nemotron-H decoders.

A step is what finetuning runs (`hpft.bench`): LoRA on the default targets, the reduction engine's forward with labels
on a `[16 text][V visual][32 question][8 answer]` prompt, backward, AdamW step. Full means schedule `none`; reduced
means `--schedule` at `--keep` with `--scorer`. Each setting runs in a fresh process (peak memory is per process):
tokens/s = real prompt tokens / median step time after `--warmup` steps; peak memory = growth of the RSS high-water
mark on CPU, of `torch.cuda.max_memory_allocated` on CUDA. Targets from the "Scale" issue (medium, 16k visual
tokens, CPU): speedup >= 2.5x, memory ratio <= 0.40. Example:

    python scripts/bench_train.py --config medium --visual-tokens 16384 --steps 3 --gradient-checkpointing \
        --json bench_train.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from hpft.bench import CONFIGS, bench_train

TARGET_SPEEDUP, TARGET_MEM_RATIO = 2.5, 0.40


def print_table(results: dict[str, dict], gradient_checkpointing: bool) -> None:
    """One column per config, one row per figure; then the issue's targets for the medium config."""
    rows = [
        ("tokens/s full", "tokens_per_s_full", ".0f"),
        ("tokens/s reduced", "tokens_per_s_reduced", ".0f"),
        ("speedup", "speedup", ".2f"),
        ("peak MiB full", "peak_mem_full", ".0f"),
        ("peak MiB reduced", "peak_mem_reduced", ".0f"),
        ("memory ratio", "mem_ratio", ".3f"),
        ("decoder tokens full", "decoder_tokens_full", "d"),
        ("decoder tokens reduced", "decoder_tokens_reduced", "d"),
        ("realised keep", "realised_keep", ".3f"),
    ]
    if gradient_checkpointing:
        rows += [
            ("tokens/s full+gc", "tokens_per_s_full_gc", ".0f"),
            ("tokens/s reduced+gc", "tokens_per_s_reduced_gc", ".0f"),
            ("peak MiB full+gc", "peak_mem_full_gc", ".0f"),
            ("peak MiB reduced+gc", "peak_mem_reduced_gc", ".0f"),
            ("memory ratio (gc)", "mem_ratio_gc", ".3f"),
            ("reduced+gc / full", "mem_ratio_reduced_gc_vs_full", ".3f"),
            ("full+gc / full", "mem_ratio_full_gc_vs_full", ".3f"),
        ]
    names = list(results)
    print(f"\n{'figure':<24}" + "".join(f"{name:>14}" for name in names))
    for label, key, fmt in rows:
        print(f"{label:<24}" + "".join(f"{results[name][key]:>14{fmt}}" for name in names))
    if "medium" in results:
        medium = results["medium"]
        for label, ok in (
            (f"speedup >= {TARGET_SPEEDUP}", medium["speedup"] >= TARGET_SPEEDUP),
            (f"memory ratio <= {TARGET_MEM_RATIO}", medium["mem_ratio"] <= TARGET_MEM_RATIO),
        ):
            print(f"target (medium, {medium['visual_tokens']} visual, {medium['device']}) {label}: "
                  f"{'met' if ok else 'MISSED'}")  # fmt: skip


def main() -> None:
    """Parse flags, measure every setting, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=(*CONFIGS, "both"), default="both")
    parser.add_argument("--visual-tokens", type=int, help="visual tokens per prompt (default: tiny 4096, medium 16384)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--schedule", default="low_to_high")
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--scorer", default="unified")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="also measure with block checkpointing")
    parser.add_argument("--json", help="write the measured figures to this JSON file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")

    configs = tuple(CONFIGS) if args.config == "both" else (args.config,)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.dtype}")
    results = bench_train(
        configs,
        visual_tokens=args.visual_tokens,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        schedule=args.schedule,
        keep=args.keep,
        scorer=args.scorer,
    )
    print_table(results, args.gradient_checkpointing)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), **results}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
