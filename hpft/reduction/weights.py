"""Effective weights of a (possibly LoRA-wrapped) linear layer, so scores see what the block really computes."""

from __future__ import annotations

import torch
from torch import nn


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
