"""`HybridVLMModule`: the thin LightningModule that trains and validates a (LoRA'd) VLM under token reduction.

One shared step runs `reduced_vlm_forward` with the batch's labels (the loss is the engine's, exact after cuts).
Validation and test add multiple-choice accuracy by option-text likelihood under the run's reduction and, with
`eval_full`, without reduction, plus the measured decoder prefill speedup. No data logic and no model surgery here:
the model arrives prepared by `hpft.peft_setup`.

Checkpoints: with `save_full=False` (default) only the trainable parameters (LoRA and projector) are written to the
checkpoint's `state_dict`, and the module loads non-strictly (`strict_loading=False`), so `Trainer.fit(ckpt_path=…)`
resumes from a model rebuilt the same way (same base weights, same LoRA targets); `on_load_checkpoint` refuses a
checkpoint that lacks a trainable parameter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

from hpft.evaluation import accuracy_by_kind, score_options
from hpft.peft_setup import set_frozen_eval
from hpft.reduction.config import ReductionConfig
from hpft.reduction.engine import reduced_forward
from hpft.reduction.vlm import embed_video_prompt, reduced_vlm_forward
from hpft.reduction.weights import fsdp_unsharded
from hpft.strategies import shard_decoder_blocks

_ADAPTER_ONLY_KEY = "hpft_adapter_only"
_FULL = ReductionConfig(schedule="none")


@dataclass
class OptimSpec:
    """`optim` config group: optimizer and LR-schedule factories (`_target_: hpft.lit_module.OptimSpec`).

    Args:
        optimizer: `params -> Optimizer`, e.g. a Hydra node `{_target_: torch.optim.AdamW, _partial_: true, lr: …}`.
        scheduler: `optimizer -> LRScheduler` (Hydra `_partial_: true`), or None for a constant LR.
        interval: when the scheduler steps: `step` or `epoch`.
    """

    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None
    interval: str = "step"

    def __post_init__(self) -> None:
        if self.interval not in ("step", "epoch"):
            raise ValueError(f"interval={self.interval!r} must be 'step' or 'epoch'")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_ratio × lr` at `total_steps` (Hydra partial)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HybridVLMModule(LightningModule):
    """Train a `nemotron_h_omni` VLM (LoRA'd or fully finetuned) under token reduction; validate by option text.

    Args:
        model: the VLM, already prepared by `hpft.peft_setup` (`LoraSpec.apply` / `NoPeft.apply`).
        reduction: the token-reduction setting used in training and in the reduced evaluation.
        optim: `OptimSpec`, or a bare optimizer factory `params -> Optimizer`.
        eval_full: also score validation options without reduction (`val/<bench>/acc_full`).
        save_full: write every parameter to checkpoints (default False: trainable ones only).
        normalize: length-normalise option log-likelihoods.
        bench: the validation set's name in metric keys (`val/<bench>/acc`).

    Logged keys: `train/loss`, `reduction/realised_keep`, `perf/tokens_per_s` (per device, attention-masked
    tokens / wall time of the training step); `val/loss`, `val/<bench>/acc`, `val/<bench>/acc/<kind>`,
    `val/<bench>/realised_keep`, `val/<bench>/acc_full`, `val/<bench>/acc_full/<kind>`, `perf/prefill_speedup`
    (and the same with `test/` in `trainer.test`).
    """

    def __init__(
        self,
        model: nn.Module,
        reduction: ReductionConfig,
        optim: OptimSpec | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        eval_full: bool = True,
        save_full: bool = False,
        normalize: bool = False,
        bench: str = "needle",
    ) -> None:
        super().__init__()
        self.model = model
        self.reduction = reduction
        self.optim = optim if isinstance(optim, OptimSpec) else OptimSpec(optimizer=optim)
        self.eval_full = eval_full
        self.save_full = save_full
        self.normalize = normalize
        self.bench = bench
        # Adapter-only checkpoints lack the frozen base weights: those come from the model as built.
        self.strict_loading = save_full
        self.save_hyperparameters(
            {"reduction": reduction.as_dict(), "eval_full": eval_full, "save_full": save_full, "bench": bench}
        )
        self._step_start: float | None = None
        self._records: dict[str, list[tuple[int, int, str]]] = {}

    # -- modes -----------------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> HybridVLMModule:
        """Set the training mode of every module except the frozen towers, which stay in eval mode."""
        super().train(mode)
        set_frozen_eval(self.model)
        return self

    def on_fit_start(self) -> None:
        """Lightning keeps the modes the modules arrive in (models load in eval mode): switch to training mode.

        Evaluation loops restore these modes afterwards, so the towers stay in eval mode for the whole fit
        (Lightning's "modules in eval mode at the start of training" warning counts exactly them).
        """
        self.train()

    def configure_model(self) -> None:
        """Under `strategy=fsdp2` (`ModelParallelStrategy`): FSDP2-shard each decoder block, then this module.

        This module (not only the VLM) is the root unit: training calls `self(batch)`, so the root's forward hooks
        gather the non-block weights (vision tower, projector, embeddings, LM head) and register their gradient
        reduce-scatter, although the engine runs the VLM's parts one by one. Other strategies: nothing to do.
        """
        mesh = self._device_mesh
        if mesh is None or getattr(self, "_fsdp_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        shard_decoder_blocks(self.model, mesh, root=False)
        fully_shard(self, mesh=mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh)
        self._fsdp_sharded = True

    # -- shared step -----------------------------------------------------------------------------------------

    def forward(self, batch: Mapping, config: ReductionConfig | None = None):
        """`reduced_vlm_forward` on a collated batch (with its labels); returns the engine's `ReducedOutput`."""
        return reduced_vlm_forward(
            self.model,
            batch["input_ids"],
            batch["pixel_values_videos"],
            batch["query_mask"],
            config or self.reduction,
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )

    def _shared_step(self, batch: Mapping, stage: str) -> torch.Tensor:
        out = self(batch)
        size = batch["input_ids"].shape[0]
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            out.loss,
            on_step=on_step,
            on_epoch=not on_step,
            prog_bar=True,
            sync_dist=True,
            batch_size=size,
        )
        keep_key = "reduction/realised_keep" if stage == "train" else f"{stage}/{self.bench}/realised_keep"
        self.log(
            keep_key, float(out.realised_keep), on_step=on_step, on_epoch=not on_step, sync_dist=True, batch_size=size
        )
        return out.loss

    # -- training --------------------------------------------------------------------------------------------

    def training_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        """One step under reduction; the loss covers answer tokens only."""
        return self._shared_step(batch, "train")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Start the step clock."""
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log `perf/tokens_per_s`: this device's real tokens over the step's wall time (forward, backward, step)."""
        if self._step_start is None:
            return
        elapsed = time.perf_counter() - self._step_start
        tokens = float(batch["attention_mask"].sum())
        self.log(
            "perf/tokens_per_s",
            tokens / max(elapsed, 1e-9),
            on_step=True,
            on_epoch=False,
            sync_dist=True,
            batch_size=batch["input_ids"].shape[0],
        )

    # -- validation / test -----------------------------------------------------------------------------------

    def _eval_step(self, batch: Mapping, batch_idx: int, stage: str) -> torch.Tensor:
        loss = self._shared_step(batch, stage)
        modes = [("acc", self.reduction)] + ([("acc_full", _FULL)] if self.eval_full else [])
        for name, config in modes:
            with fsdp_unsharded(self):  # FSDP2: the root's weights, gathered outside `self(batch)`
                choices, _ = score_options(self.model, batch, config, normalize=self.normalize)
            answers = batch["answer_index"].tolist()
            self._records.setdefault(name, []).extend(zip(choices.tolist(), answers, batch["kind"]))
        if batch_idx == 0:
            self.log("perf/prefill_speedup", self.prefill_speedup(batch), sync_dist=True, batch_size=1)
        return loss

    def validation_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        """Loss under reduction, option-text choices (reduced and full) and, on the first batch, the speedup."""
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        """As `validation_step`, logged under `test/`."""
        return self._eval_step(batch, batch_idx, "test")

    def on_validation_epoch_start(self) -> None:
        """Forget the previous epoch's choices."""
        self._records = {}

    on_test_epoch_start = on_validation_epoch_start

    def _log_accuracy(self, stage: str) -> None:
        for name, records in self._records.items():
            choices, answers, kinds = zip(*_gather(records))
            metrics = accuracy_by_kind(choices, answers, kinds)
            for key, value in metrics.items():  # "acc" -> name, "acc/<kind>" -> name/<kind>
                # Every rank holds the gathered records, so the mean across ranks is the global value.
                self.log(f"{stage}/{self.bench}/{name}{key.removeprefix('acc')}", value, sync_dist=True)
        self._records = {}

    def on_validation_epoch_end(self) -> None:
        """Accuracy over the whole validation set (all ranks), overall and per kind."""
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        """Accuracy over the whole test set, overall and per kind."""
        self._log_accuracy("test")

    @torch.no_grad()
    def prefill_speedup(self, batch: Mapping) -> float:
        """Wall time of the unreduced decoder prefill over the reduced one, on this batch's prompts.

        The vision tower and projector run once outside the timing (reduction does not change them); each prefill
        computes the last position's logits only, as generation does.
        """
        with fsdp_unsharded(self):
            return self._prefill_speedup(batch)

    def _prefill_speedup(self, batch: Mapping) -> float:
        embeds, visual_mask = embed_video_prompt(self.model, batch["input_ids"], batch["pixel_values_videos"])
        args = (embeds, visual_mask, batch["query_mask"])
        times = []
        for config in (_FULL, self.reduction):
            _synchronize(embeds.device)
            start = time.perf_counter()
            reduced_forward(
                self.model.language_model, *args, config, attention_mask=batch["attention_mask"], logits_to_keep=1
            )
            _synchronize(embeds.device)
            times.append(time.perf_counter() - start)
        return times[0] / max(times[1], 1e-9)

    # -- optimisation ----------------------------------------------------------------------------------------

    def configure_optimizers(self):
        """The optimizer (and scheduler) over the parameters that require grad only."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameter: apply hpft.peft_setup (LoraSpec / NoPeft) to the model")
        optimizer = self.optim.optimizer(params)
        if self.optim.scheduler is None:
            return optimizer
        scheduler = self.optim.scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.optim.interval}}

    # -- checkpoints -----------------------------------------------------------------------------------------

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the trainable parameters (LoRA and projector, or decoder and projector)."""
        return {name for name, param in self.named_parameters() if param.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With `save_full=False`, keep only the trainable parameters in the checkpoint's `state_dict`."""
        if self.save_full:
            return
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[_ADAPTER_ONLY_KEY] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse an adapter-only checkpoint that misses a trainable parameter of this model (other LoRA targets)."""
        if not checkpoint.get(_ADAPTER_ONLY_KEY) or "state_dict" not in checkpoint:
            return  # a DeepSpeed checkpoint: its engine restores the weights from the shards itself
        missing = sorted(self.trainable_keys() - set(checkpoint["state_dict"]))
        if missing:
            raise KeyError(f"adapter-only checkpoint lacks {len(missing)} trainable parameters, e.g. {missing[:3]}")


def _gather(records: list) -> list:
    """All ranks' records, in rank order (the records themselves in one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return records
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, records)
    return [r for part in gathered for r in part]
