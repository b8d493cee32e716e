"""Effective weights of a (possibly LoRA-wrapped) linear layer, so scores see what the block really computes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def full_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Make `module`'s own weights whole for reading inside the block, when a sharding strategy split them.

    Scores read a block's weights before the block runs, i.e. outside its forward hooks, which is where ZeRO-3
    and FSDP2 gather shards. Without sharding this is a no-op.

    - DeepSpeed ZeRO-3 (parameters carry `ds_status`): `deepspeed.zero.GatheredParameters`, read-only.
    - FSDP2 (`fully_shard`ed module): see `fsdp_unsharded`.
    """
    params = list(module.parameters())
    if any(hasattr(p, "ds_status") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield module
        return
    with fsdp_unsharded(module):
        yield module


@contextmanager
def fsdp_unsharded(module: nn.Module) -> Iterator[nn.Module]:
    """For an FSDP2 (`fully_shard`ed) module: `unshard()` its own parameter group on entry, `reshard()` on exit.

    Read-only use (scores, no-grad evaluation): gradients of parameters used this way are not reduce-scattered.
    Nested FSDP units (e.g. decoder blocks inside the root) gather themselves in their own forward. A no-op for
    any other module.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch builds without distributed
        yield module
        return
    if not isinstance(module, FSDPModule):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()


def effective_linear(module: nn.Module, rows: slice | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of a linear layer, with any active, unmerged PEFT LoRA delta folded in.

    Scores are recomputed from a block's own weights; after LoRA wraps `q_proj` or `in_proj`, the block's
    output uses `W + scale * B @ A`, so the score must too. Only the requested output rows are built
    (e.g. the B and C columns of a Mamba `in_proj`), which keeps scoring cheap.

    Args:
        module: `nn.Linear` or a PEFT `lora.Linear` wrapping one.
        rows: output rows to return; None for all.

    Returns:
        `(weight (out, in), bias (out,) or None)` restricted to `rows`, detached.
    """
    rows = rows if rows is not None else slice(None)
    base = getattr(module, "base_layer", module)
    weight = base.weight[rows]
    bias = base.bias[rows] if base.bias is not None else None
    lora_a = getattr(module, "lora_A", None)
    if lora_a is None or getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return weight.detach(), None if bias is None else bias.detach()
    if any(getattr(module, "use_dora", {}).get(name, False) for name in module.active_adapters):
        raise NotImplementedError("DoRA adapters are not supported by the reduction scores; use plain LoRA.")
    weight = weight.detach().clone()
    for name in module.active_adapters:
        if name not in lora_a:
            continue
        delta = module.lora_B[name].weight[rows] @ module.lora_A[name].weight
        weight += module.scaling[name] * delta.detach().to(weight.dtype)
    return weight, None if bias is None else bias.detach()
