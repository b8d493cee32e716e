"""Benchmark helpers: synthetic long-video prompts, and LoRA training steps measured one setting per fresh process.

A training step here is what finetuning runs: a random-weight Nemotron-H decoder (`tiny` or `medium` config) with
LoRA on the default targets (`hpft.peft_setup.LoraSpec`, same freeze policy), the reduction engine's forward with
labels, backward, and an AdamW step. Each setting (full = schedule `none`, reduced = the given schedule, each
optionally with gradient checkpointing) runs in its own process, because a process's memory high-water mark only
ever grows: measured in one process, the second setting would inherit the first one's peak.

`scripts/bench_train.py` is the CLI; `python -m hpft.bench '<json setting>'` is the child it starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from hpft.models.tiny import medium_decoder_config, tiny_decoder_config

__all__ = [
    "ANSWER",
    "CONFIGS",
    "DEFAULT_VISUAL_TOKENS",
    "PREFIX",
    "QUESTION",
    "StepSetting",
    "bench_train",
    "build_inputs",
    "build_train_model",
    "measure_in_fresh_process",
    "measure_train_step",
]

PREFIX, QUESTION, ANSWER = 16, 32, 8
"""Prompt layout `[PREFIX text][visual][QUESTION question][ANSWER answer]` of the synthetic benchmark prompts."""

CONFIGS = {"tiny": tiny_decoder_config, "medium": medium_decoder_config}
"""Benchmark decoders: the test-suite decoder (8 blocks of every kind, hidden 64) and bench_prefill's (12, 512)."""

DEFAULT_VISUAL_TOKENS = {"tiny": 4096, "medium": 16384}


def build_inputs(lm, num_visual: int, answer: int = 0, seed: int = 0):
    """A `[prefix][visual][question][answer]` prompt for `lm`: random ids, random visual embeddings.

    Args:
        lm: a causal LM (its input embeddings and vocabulary are used).
        num_visual: visual tokens V.
        answer: answer tokens (labelled), 0 for a prefill-only prompt.
        seed: generator seed.

    Returns:
        `(embeds (1, S, D), visual_mask (1, S) bool, query_mask (1, S) bool, labels (1, S) long)` on CPU, with
        `S = PREFIX + V + QUESTION + answer` and labels -100 except at the answer.
    """
    generator = torch.Generator().manual_seed(seed)
    seq = PREFIX + num_visual + QUESTION + answer
    ids = torch.randint(0, lm.config.vocab_size, (1, seq), generator=generator)
    embedding = lm.get_input_embeddings()
    with torch.no_grad():
        embeds = embedding(ids.to(embedding.weight.device)).cpu()
    visual = torch.zeros(1, seq, dtype=torch.bool)
    visual[0, PREFIX : PREFIX + num_visual] = True
    embeds[visual] = (torch.randn(num_visual, embeds.shape[-1], generator=generator) * embeds.std()).to(embeds.dtype)
    query = torch.zeros_like(visual)
    query[0, PREFIX + num_visual : PREFIX + num_visual + QUESTION] = True
    labels = torch.full((1, seq), -100)
    if answer:
        labels[0, -answer:] = ids[0, -answer:]
    return embeds, visual, query, labels


class _DecoderOnly(nn.Module):
    """Holds a bare causal LM as `language_model`, the attribute `hpft.peft_setup` reads on a VLM."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.language_model = lm


def build_train_model(
    config: str, device: str = "cpu", dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False
):
    """A random-weight decoder prepared as finetuning prepares one: LoRA + freeze policy, training mode.

    Args:
        config: a `CONFIGS` key.
        device: where the model runs.
        dtype: parameter dtype.
        gradient_checkpointing: checkpoint every decoder block (`hpft.models.loading.enable_gradient_checkpointing`).

    Returns:
        The `NemotronHForCausalLM`, LoRA injected on the default targets, only LoRA parameters trainable.
    """
    from transformers import NemotronHForCausalLM

    from hpft.models.kernels import force_torch_path
    from hpft.models.loading import enable_gradient_checkpointing
    from hpft.peft_setup import LoraSpec

    torch.manual_seed(0)
    lm = NemotronHForCausalLM(CONFIGS[config]())
    LoraSpec().apply(_DecoderOnly(lm))  # in place: the LM is what the engine runs
    force_torch_path(lm)
    if gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    return lm.to(device=device, dtype=dtype).train()


@dataclass
class StepSetting:
    """One measured setting (serialised to JSON for the child process).

    Args:
        config: `CONFIGS` key.
        mode: `full` (schedule `none`) or `reduced` (`schedule`, `keep`, `scorer`).
        visual_tokens: visual tokens in the prompt.
        steps: timed steps (the median is reported).
        warmup: untimed steps first (they still count towards peak memory).
        device: `cpu` or `cuda`.
        dtype: parameter dtype name (`float32`, `bfloat16`).
        gradient_checkpointing: checkpoint every decoder block.
        schedule: reduction schedule of the reduced mode.
        keep: its budget.
        scorer: its scorer.
        lr: AdamW learning rate.
    """

    config: str = "medium"
    mode: str = "reduced"
    visual_tokens: int = 16384
    steps: int = 3
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    schedule: str = "low_to_high"
    keep: float = 0.25
    scorer: str = "unified"
    lr: float = 1e-4


class _PeakMemory:
    """Peak memory growth over a span: RSS high-water mark on CPU, `max_memory_allocated` on CUDA.

    On Linux the RSS high-water mark (VmHWM) is reset at the start (`/proc/self/clear_refs`), so allocations made
    while building the model do not hide the step's peak; where that is not allowed, the process-lifetime
    `ru_maxrss` is used instead (reported as `memory_method`).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "cuda_max_allocated" if device.type == "cuda" else "rss_hwm"

    @staticmethod
    def _status_kb(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))

    def start(self) -> None:
        """Record the baseline and reset the high-water mark."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS to the current RSS
            self._base = self._status_kb("VmRSS") * 1024
        except OSError:
            self.method = "ru_maxrss"
            self._base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def growth_mb(self) -> float:
        """Peak minus baseline, in MiB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "rss_hwm":
            peak = self._status_kb("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return (peak - self._base) / 2**20


def measure_train_step(setting: StepSetting) -> dict:
    """Run `warmup + steps` training steps of one setting in this process and measure them.

    A step is forward (reduction engine, labels) + backward + AdamW step + zero_grad, on one prompt.

    Returns:
        `step_s` (median timed step), `tokens` (real tokens per step), `tokens_per_s`, `peak_mem_mb` (growth over
        the steps), `memory_method`, `decoder_tokens` (sum over blocks of the tokens entering each block, counted
        by hooks on the blocks during the last forward), `kept_per_block`, `realised_keep`, `loss` (last step),
        `threads`.
    """
    from hpft.reduction import ReductionConfig, reduced_forward

    device = torch.device(setting.device)
    dtype = getattr(torch, setting.dtype)
    lm = build_train_model(setting.config, setting.device, dtype, setting.gradient_checkpointing)
    if setting.mode == "full":
        config = ReductionConfig("none")
    elif setting.mode == "reduced":
        config = ReductionConfig(setting.schedule, setting.keep, setting.scorer)
    else:
        raise ValueError(f"mode={setting.mode!r} must be 'full' or 'reduced'")
    embeds, visual, query, labels = (t.to(device) for t in build_inputs(lm, setting.visual_tokens, answer=ANSWER))
    trainable = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=setting.lr)

    # Counted from the hidden states the blocks actually receive (not from the plan), forward pass only.
    seen = {"active": False, "tokens": 0}

    def count(_module, args) -> None:
        if seen["active"]:
            seen["tokens"] += args[0].shape[0] * args[0].shape[1]

    hooks = [block.register_forward_pre_hook(count) for block in lm.model.layers]

    def step():
        seen.update(active=True, tokens=0)
        out = reduced_forward(lm, embeds, visual, query, config, labels=labels)
        seen["active"] = False
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    memory = _PeakMemory(device)
    memory.start()
    for _ in range(setting.warmup):
        step()
    times = []
    for _ in range(setting.steps):
        start = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - start)
    peak = memory.growth_mb()
    for hook in hooks:
        hook.remove()
    step_s = statistics.median(times)
    tokens = embeds.shape[0] * embeds.shape[1]
    return dict(
        config=setting.config,
        mode=setting.mode,
        gradient_checkpointing=setting.gradient_checkpointing,
        step_s=step_s,
        tokens=tokens,
        tokens_per_s=tokens / step_s,
        peak_mem_mb=peak,
        memory_method=memory.method,
        decoder_tokens=seen["tokens"],
        kept_per_block=out.kept_per_block,
        realised_keep=out.realised_keep,
        loss=float(out.loss),
        threads=torch.get_num_threads(),
    )


def measure_in_fresh_process(setting: StepSetting, timeout: float | None = None) -> dict:
    """`measure_train_step(setting)` in a new Python process (`python -m hpft.bench`), so its peak is its own."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "hpft.bench", json.dumps(asdict(setting))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({setting}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def bench_train(
    configs: tuple[str, ...] = ("tiny", "medium"),
    visual_tokens: int | None = None,
    steps: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    schedule: str = "low_to_high",
    keep: float = 0.25,
    scorer: str = "unified",
    log=print,
) -> dict[str, dict]:
    """Full vs reduced training steps for each config, each setting in a fresh process, with their ratios.

    Args:
        configs: `CONFIGS` keys.
        visual_tokens: visual tokens per prompt (None: `DEFAULT_VISUAL_TOKENS[config]`).
        steps: timed steps per setting (median reported).
        warmup: untimed steps before them.
        device: `cpu` or `cuda`.
        dtype: parameter dtype name.
        gradient_checkpointing: also measure both modes with every decoder block checkpointed.
        schedule: reduction schedule of the reduced mode.
        keep: its budget.
        scorer: its scorer.
        log: called with one progress line per finished setting.

    Returns:
        `{config: figures}` with `tokens_per_s_full`, `tokens_per_s_reduced`, `speedup` (reduced / full tokens/s),
        `peak_mem_full`, `peak_mem_reduced` (MiB of growth), `mem_ratio` (reduced / full), `step_s_*`,
        `decoder_tokens_*`, `realised_keep`, `kept_per_block`, `tokens`, and with `gradient_checkpointing` the same
        figures suffixed `_gc`, plus `mem_ratio_gc` (reduced_gc / full_gc) and `mem_ratio_reduced_gc_vs_full`.
    """
    variants = [("full", False), ("reduced", False)]
    if gradient_checkpointing:
        variants += [("full", True), ("reduced", True)]
    results = {}
    for config in configs:
        if config not in CONFIGS:
            raise ValueError(f"config={config!r}; choose from {sorted(CONFIGS)}")
        n_visual = visual_tokens or DEFAULT_VISUAL_TOKENS[config]
        runs = {}
        for mode, gc in variants:
            setting = StepSetting(config, mode, n_visual, steps, warmup, device, dtype, gc, schedule, keep, scorer)
            run = measure_in_fresh_process(setting)
            suffix = mode + ("_gc" if gc else "")
            runs[suffix] = run
            log(
                f"  {config} {suffix:<11} {run['step_s']:8.2f} s/step  {run['tokens_per_s']:9.0f} tok/s  "
                f"peak +{run['peak_mem_mb']:.0f} MiB  decoder tokens {run['decoder_tokens']}"
            )
        figures = dict(
            config=config,
            visual_tokens=n_visual,
            tokens=runs["full"]["tokens"],
            steps=steps,
            warmup=warmup,
            device=device,
            dtype=dtype,
            schedule=schedule,
            keep=keep,
            scorer=scorer,
            threads=runs["full"]["threads"],
            memory_method=runs["full"]["memory_method"],
            realised_keep=runs["reduced"]["realised_keep"],
            kept_per_block=runs["reduced"]["kept_per_block"],
        )
        for suffix, run in runs.items():
            figures[f"tokens_per_s_{suffix}"] = run["tokens_per_s"]
            figures[f"step_s_{suffix}"] = run["step_s"]
            figures[f"peak_mem_{suffix}"] = run["peak_mem_mb"]
            figures[f"decoder_tokens_{suffix}"] = run["decoder_tokens"]
            figures[f"loss_{suffix}"] = run["loss"]
        figures["speedup"] = _ratio(figures["tokens_per_s_reduced"], figures["tokens_per_s_full"])
        figures["mem_ratio"] = _ratio(figures["peak_mem_reduced"], figures["peak_mem_full"])
        if gradient_checkpointing:
            figures["speedup_gc"] = _ratio(figures["tokens_per_s_reduced_gc"], figures["tokens_per_s_full_gc"])
            figures["mem_ratio_gc"] = _ratio(figures["peak_mem_reduced_gc"], figures["peak_mem_full_gc"])
            figures["mem_ratio_reduced_gc_vs_full"] = _ratio(figures["peak_mem_reduced_gc"], figures["peak_mem_full"])
            figures["mem_ratio_full_gc_vs_full"] = _ratio(figures["peak_mem_full_gc"], figures["peak_mem_full"])
        results[config] = figures
    return results


if __name__ == "__main__":  # the child of `measure_in_fresh_process`
    print(json.dumps(measure_train_step(StepSetting(**json.loads(sys.argv[1])))))
