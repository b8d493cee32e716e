"""`BenchmarkEvalCallback`: score benchmarks during training, under the run's own reduction, into its loggers.

The training loop's validation measures the synthetic val split; this callback runs full benchmark protocols
(`hpft.eval_runner`: frames, prompt, answer mode, the reference's parsing and aggregation) every N optimiser
steps and/or when training ends, with the same `ReductionConfig` the module trains under (`pl_module.reduction`),
on the model as it is (LoRA adapters unmerged). Metrics go to every logger of the trainer at the current step
(`val/<bench>/acc`, `val/<bench>/<breakdown>/<value>`, `perf/prefill_s`, ...; see `eval_runner.metric_dict`)
and into `trainer.callback_metrics`, so `hpft.train` also writes them to `metrics.json`.

Rank zero only: the other ranks skip the evaluation (it touches no collective, and they wait at the next one).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from hpft.eval_runner import BenchmarkSpec, evaluate_benchmark, metric_dict

__all__ = ["BenchmarkEvalCallback"]

log = logging.getLogger(__name__)


def _spec(node: Any) -> BenchmarkSpec:
    if isinstance(node, BenchmarkSpec):
        return node
    if isinstance(node, Mapping):
        return BenchmarkSpec(**{k: v for k, v in node.items() if k != "_target_"})
    raise TypeError(f"a benchmark must be a BenchmarkSpec or its config mapping, got {type(node).__name__}")


class BenchmarkEvalCallback(Callback):
    """Evaluate benchmarks every `every_n_steps` optimiser steps and/or at the end of training.

    Args:
        benchmarks: benchmark settings (`BenchmarkSpec`s or `conf/benchmark/*.yaml` nodes): a list, or a mapping
            of name to setting (how Hydra composes them; the keys are ignored, each setting's `name` is used).
        every_n_steps: evaluate when `trainer.global_step` is a multiple of this; None: never during training.
        at_end: evaluate when training ends (skipped when that step was just evaluated).
        max_items: score only the first this-many items of each benchmark (in the loader's order).
        output_dir: write each evaluation's `items.jsonl` / `results.json` (and the needle heatmap) under
            `<output_dir>/<bench>/step-<N>`; None keeps them in memory.
        prefix: metric key prefix (`<prefix>/<bench>/acc`).
        time_prefill: measure `perf/prefill_s` (an extra decoder prefill per item outside the `letter` variant).

    Attributes:
        history: `(global_step, bench, results)` for every evaluation run by this callback.
    """

    def __init__(
        self,
        benchmarks: Sequence[Any] | Mapping[str, Any],
        every_n_steps: int | None = None,
        at_end: bool = True,
        max_items: int | None = None,
        output_dir: str | None = None,
        prefix: str = "val",
        time_prefill: bool = True,
    ) -> None:
        nodes = list(benchmarks.values()) if isinstance(benchmarks, Mapping) else list(benchmarks)
        self.benchmarks = [_spec(node) for node in nodes]
        problems = []
        if not self.benchmarks:
            problems.append("benchmarks is empty: give at least one benchmark setting")
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            problems.append(f"every_n_steps={every_n_steps!r} must be an integer >= 1 or null")
        if max_items is not None and (not isinstance(max_items, int) or max_items < 1):
            problems.append(f"max_items={max_items!r} must be an integer >= 1 or null")
        names = [spec.name for spec in self.benchmarks]
        if len(set(names)) != len(names):
            problems.append(f"benchmark names {names} repeat: their metric keys would collide")
        if problems:
            raise ValueError("invalid BenchmarkEvalCallback:\n  - " + "\n  - ".join(problems))
        self.every_n_steps = every_n_steps
        self.at_end = at_end
        self.max_items = max_items
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.prefix = prefix
        self.time_prefill = time_prefill
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self._last_step: int | None = None
        self._tokenizer = None

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Evaluate after every `every_n_steps`-th optimiser step (once per step under gradient accumulation)."""
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        """Evaluate the final model unless its step was just evaluated."""
        if self.at_end and trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)

    def _tokenizer_for(self, trainer, pl_module):
        if self._tokenizer is None:
            self._tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if self._tokenizer is None:  # no datamodule with a bound tokenizer: the model folder's own
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(pl_module.model.config._name_or_path, local_files_only=True)
        return self._tokenizer

    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        """Run every benchmark now (rank zero), log the metrics at the current step and return them."""
        step = trainer.global_step
        self._last_step = step
        if not trainer.is_global_zero:
            return {}
        tokenizer = self._tokenizer_for(trainer, pl_module)
        was_training = pl_module.training
        pl_module.eval()  # dropout off; HybridVLMModule.train() restores the frozen towers' eval mode after
        metrics: dict[str, float] = {}
        try:
            for spec in self.benchmarks:
                out_dir = None if self.output_dir is None else self.output_dir / spec.name / f"step-{step}"
                results = evaluate_benchmark(
                    pl_module.model,
                    tokenizer,
                    spec,
                    pl_module.reduction,
                    out_dir=out_dir,
                    max_items=self.max_items,
                    progress=False,
                    time_prefill=self.time_prefill,
                )
                self.history.append((step, spec.name, results))
                metrics.update(metric_dict(results, self.prefix))
                log.info("step %d: %s acc %.4f (%d items)", step, spec.name, results["acc"] or 0.0, results["n_scored"])
        finally:
            if was_training:
                pl_module.train()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        # callback_metrics is what `hpft.train` writes to metrics.json after the fit
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        return metrics
