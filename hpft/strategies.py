"""Lightning strategies for `conf/strategy/*.yaml`: DeepSpeed ZeRO (CUDA, or CPU with gloo), FSDP2, DDP.

Everything here is Lightning's own strategy with at most one hook changed:

- `deepspeed_strategy` builds Lightning's `DeepSpeedStrategy` from the YAML's DeepSpeed JSON settings. On a
  machine without CUDA (or with `trainer.accelerator=cpu`) it builds `CPUDeepSpeedStrategy` instead: the same
  strategy without Lightning's CUDA-only check, DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`) and the gloo
  backend, so ZeRO-2/3 runs with N CPU processes (tests, laptops, debugging a ZeRO config before a cluster job).
  Micro-batch size, gradient accumulation, clipping and precision are *not* written in the YAML: Lightning fills
  them from the data loader and the `trainer` config, so they are never written twice.
- `fsdp2_strategy` builds Lightning's `ModelParallelStrategy` (data-parallel FSDP2); `HybridVLMModule.configure_model`
  applies `fully_shard` to each decoder block and then the whole model (`shard_decoder_blocks`).

The reduction engine reads block weights to score tokens before running the block; with parameters sharded (ZeRO-3,
FSDP2) it gathers them first (`hpft.reduction.weights.full_parameters`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy
from torch import nn

log = logging.getLogger(__name__)

CPU_NOTICE = (
    "DeepSpeed on CPU: no CUDA device, so hpft runs ZeRO with DeepSpeed's CPU accelerator and the gloo backend "
    "(Lightning's DeepSpeedStrategy is CUDA-only)."
)


def wants_cuda(accelerator: str | None) -> bool:
    """Whether a `trainer.accelerator` value means CUDA here (`auto` does when a CUDA device is visible)."""
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator in (None, "auto") and torch.cuda.is_available()


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's `DeepSpeedStrategy` on CPU processes: DeepSpeed's CPU accelerator and the gloo backend.

    Lightning refuses DeepSpeed without CUDA in `setup_environment`; DeepSpeed itself runs ZeRO-1/2/3 on CPU when
    `DS_ACCELERATOR=cpu` is set before it is imported (set by `deepspeed_strategy`, inherited by the ranks
    Lightning starts). Everything else (config formatting, engine setup, sharded checkpoints) is Lightning's.
    """

    strategy_name = "deepspeed_cpu"

    def setup_environment(self) -> None:
        """DDP's environment set-up, without the CUDA check of `DeepSpeedStrategy.setup_environment`."""
        os.environ["DS_ACCELERATOR"] = "cpu"
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        """`DeepSpeedStrategy.setup_distributed` minus its check that device indices equal local ranks (CUDA only)."""
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _get_process_group_backend(self) -> str:
        return self._process_group_backend or "gloo"

    def init_deepspeed(self) -> None:
        """Lightning's engine set-up, with DeepSpeed told this process's rank.

        Lightning passes `device_rank=root_device.index` to `deepspeed.initialize`, which is None for the CPU
        device, and DeepSpeed then compares None with 0. The rank DeepSpeed needs is the local rank.
        """
        with _deepspeed_device_rank(self.local_rank):
            super().init_deepspeed()


@contextmanager
def _deepspeed_device_rank(local_rank: int) -> Iterator[None]:
    """While inside, `deepspeed.initialize(args=Namespace(device_rank=None))` gets `device_rank=local_rank`."""
    import deepspeed

    original = deepspeed.initialize

    def initialize(*args: Any, **kwargs: Any):
        namespace = kwargs.get("args")
        if namespace is not None and getattr(namespace, "device_rank", 0) is None:
            namespace.device_rank = local_rank
        return original(*args, **kwargs)

    deepspeed.initialize = initialize
    try:
        yield
    finally:
        deepspeed.initialize = original


def deepspeed_strategy(
    config: dict[str, Any],
    accelerator: str | None = "auto",
    **kwargs: Any,
) -> DeepSpeedStrategy:
    """Target of `strategy/deepspeed_*.yaml`: Lightning's DeepSpeed strategy, or its CPU variant without CUDA.

    Args:
        config: DeepSpeed JSON settings (`zero_optimization`, ...). Leave out `train_micro_batch_size_per_gpu`,
            `gradient_accumulation_steps`, `gradient_clipping` and the precision blocks: Lightning derives them
            from the loader's batch size and `trainer.{accumulate_grad_batches, gradient_clip_val, precision}`.
        accelerator: `trainer.accelerator` (`cpu` selects the CPU variant; `auto` does when CUDA is absent).
        **kwargs: further `DeepSpeedStrategy` arguments (e.g. `exclude_frozen_parameters`).

    Raises:
        ValueError: the config sets a key that Lightning derives from the trainer config.
    """
    config = _plain(config)
    derived = sorted({"gradient_accumulation_steps", "train_batch_size", "fp16", "bf16"} & set(config))
    if derived:
        raise ValueError(
            f"strategy.config sets {derived}: these come from the trainer config (trainer.accumulate_grad_batches, "
            "trainer.precision, data.batch_size); remove them from conf/strategy/<name>.yaml"
        )
    if wants_cuda(accelerator):
        return DeepSpeedStrategy(config=config, **kwargs)
    os.environ["DS_ACCELERATOR"] = "cpu"  # before anything imports deepspeed; the ranks inherit it
    # DeepSpeed insists on its own CPU Adam (a C++ extension, compiled on first use) when offloading; a torch
    # optimizer works on CPU and compiles nothing.
    config.setdefault("zero_force_ds_cpu_optimizer", False)
    log.warning(CPU_NOTICE)
    return CPUDeepSpeedStrategy(config=config, **kwargs)


def fsdp2_strategy(
    devices: int | str | list = 1,
    num_nodes: int = 1,
    data_parallel_size: int | str = "auto",
    tensor_parallel_size: int = 1,
    **kwargs: Any,
) -> ModelParallelStrategy:
    """Target of `strategy/fsdp2.yaml`: Lightning's `ModelParallelStrategy`, FSDP2 over every process by default.

    Lightning's own `auto` data-parallel size is the node count (it assumes tensor parallelism inside a node);
    hpft has no tensor parallelism, so `auto` here means all processes: `devices × num_nodes`.
    The module shards itself in `configure_model` (`shard_decoder_blocks`).

    Args:
        devices: `trainer.devices` (an int, a list of device ids, or `auto`: the visible CUDA devices, else 1).
        num_nodes: `trainer.num_nodes`.
        data_parallel_size: processes that shard the parameters (`auto`: all of them).
        tensor_parallel_size: 1 (hpft does not split layers).
        **kwargs: further `ModelParallelStrategy` arguments.
    """
    if data_parallel_size == "auto":
        if isinstance(devices, str) and devices != "auto":
            devices = [d for d in devices.split(",") if d.strip()] if "," in devices else int(devices)
        per_node = len(devices) if isinstance(devices, list | tuple) else devices
        if per_node == "auto":
            per_node = max(1, torch.cuda.device_count())
        data_parallel_size = int(per_node) * int(num_nodes) // int(tensor_parallel_size)
    return ModelParallelStrategy(
        data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs
    )


def shard_decoder_blocks(model: nn.Module, device_mesh, root: bool = True) -> int:
    """Apply FSDP2 `fully_shard` to each decoder block of a VLM, then (with `root`) to the whole model.

    Only the decoder blocks (and the rest as one unit) are sharded: a block is the unit the reduction engine runs
    and gathers, so each block's weights are gathered once per forward.

    Args:
        model: a `nemotron_h_omni` VLM (`model.language_model.model.layers`), LoRA already applied.
        device_mesh: the strategy's mesh; its `data_parallel` dimension shards the parameters.
        root: also shard `model` itself (False when the caller makes an enclosing module the root unit).

    Returns:
        The number of sharded blocks.
    """
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    blocks = model.language_model.model.layers
    for block in blocks:
        fully_shard(block, mesh=mesh)
    if root:
        fully_shard(model, mesh=mesh)
    return len(blocks)


def precision_notice(trainer: Any) -> str | None:
    """A one-line warning when a trainer runs bf16 on CPU (measured 10-20x slower than fp32 on our CPUs), else None."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if str(trainer.precision).startswith("bf16") and isinstance(trainer.accelerator, CPUAccelerator):
        return (
            f"trainer.precision={trainer.precision} on CPU: bf16 matmuls are 10-20x slower than fp32 on most CPUs; "
            "use trainer.precision=32-true here and bf16-mixed on GPUs"
        )
    return None


def _plain(config: Any) -> dict[str, Any]:
    """A mutable plain dict from an OmegaConf node or a mapping."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    return {k: (_plain(v) if isinstance(v, dict) else v) for k, v in dict(config or {}).items()}
