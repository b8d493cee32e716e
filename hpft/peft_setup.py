"""Model surgery for finetuning: decide the LoRA targets, apply LoRA and the freeze policy, verify the trainable set.

Decide → apply → verify:

1. `select_lora_targets` is a pure function of module names and the decoder's layer pattern (`block_kinds`): it
   returns the exact full names of the decoder modules to wrap, and `check_targets` refuses modules that a fused
   kernel reads by weight (Mamba-2 `out_proj` and `conv1d`: `mamba_split_conv1d_scan_combined` and
   `causal_conv1d_fn` take `out_proj.weight` / `conv1d.weight` directly, so a LoRA wrapper there would be silently
   bypassed on GPU while it works on CPU).
2. `apply_lora` / `apply_full_finetune` inject the adapters and set `requires_grad` through one function,
   `apply_freeze_policy`: the vision (and audio) towers are frozen and kept in eval mode, the projector is trained,
   the decoder is frozen under LoRA or trained in full without it.
3. `verify_trainable` checks the result, reports every problem at once, and logs the counts.

LoRA is injected **in place** with `peft.inject_adapter_in_model`: the VLM keeps its class, `vlm.language_model`
stays the `NemotronHForCausalLM` that `reduced_vlm_forward` and the engine's adapter walk block by block, and
state-dict keys stay the model's own (plus `lora_A` / `lora_B`). `get_peft_model` would wrap the VLM in a
`PeftModel` (`base_model.model.` key prefixes, and it freezes the projector), and wrapping only the decoder would
make `lm.model` resolve to the wrapped causal LM instead of its `NemotronHModel`. `merge_lora` folds the adapters
back into plain `nn.Linear` layers for export.

`LoraSpec` and `NoPeft` are the `peft` config group's `_target_`s; `.apply(vlm)` returns the prepared model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from hpft.reduction.adapters.nemotron_h import block_kinds as decoder_block_kinds

log = logging.getLogger(__name__)

# include key -> (block kind it applies to, mixer sub-module paths to wrap).
TARGET_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "attention_qkvo": ("attention", ("q_proj", "k_proj", "v_proj", "o_proj")),
    "mamba_in_proj": ("mamba", ("in_proj",)),
    "mlp_up_down": ("mlp", ("up_proj", "down_proj")),
    # Routed experts are fused parameter tensors (not nn.Linear), so only the shared experts can take LoRA.
    "moe_shared_experts": ("moe", ("shared_experts.up_proj", "shared_experts.down_proj")),
}
DEFAULT_INCLUDE = ("attention_qkvo", "mamba_in_proj", "mlp_up_down")

# Mixer sub-modules of a Mamba-2 block that must never be wrapped, and why.
UNSAFE_TARGETS: dict[str, str] = {
    "out_proj": (
        "Mamba-2 out_proj is read by weight inside the fused mamba_split_conv1d_scan_combined kernel "
        "(outproj_weight=self.out_proj.weight), so a LoRA wrapper would be bypassed on GPU"
    ),
    "conv1d": (
        "Mamba-2 conv1d is read by weight by causal_conv1d_fn / causal_conv1d_update and the fused kernel, "
        "so a LoRA wrapper would be bypassed"
    ),
}

# Top-level children of a `nemotron_h_omni` model -> component, for the freeze policy and the counts.
COMPONENTS: dict[str, str] = {
    "vision_model": "vision",
    "vision_final_layernorm": "vision",
    "audio_tower": "audio",
    "embed_audio": "audio",
    "multi_modal_projector": "projector",
    "language_model": "decoder",
}
FROZEN_COMPONENTS = ("vision", "audio")

_BLOCK_MODULE = re.compile(r"^(?P<prefix>(?:.+\.)?)layers\.(?P<index>\d+)\.mixer\.(?P<path>.+)$")


def _parse(name: str) -> tuple[str, int, str] | None:
    """`(prefix, block index, path inside the mixer)` of a decoder-block module name, else None."""
    match = _BLOCK_MODULE.match(name)
    if match is None:
        return None
    return match["prefix"], int(match["index"]), match["path"]


def _unknown_includes(include: Iterable[str]) -> list[str]:
    return [
        f"unknown LoRA include {k!r}; choose from {sorted(TARGET_GROUPS)}" for k in include if k not in TARGET_GROUPS
    ]


# -- decide ----------------------------------------------------------------------------------------------------


def select_lora_targets(
    module_names: Iterable[str], block_kinds: Sequence[str], include: Iterable[str] = DEFAULT_INCLUDE
) -> list[str]:
    """Full names of the decoder modules to wrap with LoRA (pure: names and the layer pattern in, names out).

    A decoder-block module is named `<prefix>layers.<i>.mixer.<path>` (e.g.
    `language_model.model.layers.1.mixer.q_proj`); other names (vision tower, norms, heads) are ignored. Block `i`'s
    kind comes from `block_kinds[i]`, so `in_proj` is wrapped only in Mamba blocks and `up_proj` only in MLP blocks.

    Args:
        module_names: module names, e.g. `[n for n, _ in vlm.named_modules()]`.
        block_kinds: the decoder's layer pattern (`hpft.reduction.adapters.nemotron_h.block_kinds(config)`).
        include: keys of `TARGET_GROUPS`: `attention_qkvo` (q/k/v/o_proj), `mamba_in_proj` (Mamba-2 in_proj),
            `mlp_up_down` (MLP up/down_proj), `moe_shared_experts` (MoE shared experts' up/down_proj).

    Returns:
        Matching names in the order given (module order for `named_modules`).

    Raises:
        ValueError: naming every problem at once: unknown include keys, module names from more than one decoder
            (distinct prefixes), block indices outside the pattern, or a block of an included kind that lacks the
            expected module (the names and the pattern disagree).
    """
    include = tuple(include)
    problems = _unknown_includes(include)
    wanted = {TARGET_GROUPS[key][0]: TARGET_GROUPS[key][1] for key in include if key in TARGET_GROUPS}
    parsed = [(name, _parse(name)) for name in module_names]
    parsed = [(name, p) for name, p in parsed if p is not None]
    prefixes = sorted({p[0] for _, p in parsed})
    if len(prefixes) > 1:
        problems.append(f"module names come from several decoders {prefixes}; pass one decoder's names")
    outside = sorted({p[1] for _, p in parsed if p[1] >= len(block_kinds)})
    if outside:
        problems.append(f"blocks {outside} are outside the layer pattern of {len(block_kinds)} blocks")

    selected, found = [], set()
    for name, (_, index, path) in parsed:
        if index < len(block_kinds) and path in wanted.get(block_kinds[index], ()):
            selected.append(name)
            found.add((index, path))
    for index, kind in enumerate(block_kinds):
        missing = [path for path in wanted.get(kind, ()) if (index, path) not in found]
        if missing:
            problems.append(f"block {index} is {kind!r} but has no mixer module {missing}")
    if not problems and not selected:
        problems.append(f"LoRA include {list(include)} matches no module of the pattern {sorted(set(block_kinds))}")
    if problems:
        raise ValueError("invalid LoRA targets:\n  - " + "\n  - ".join(problems))
    check_targets(selected, block_kinds)
    return selected


def check_targets(names: Iterable[str], block_kinds: Sequence[str]) -> None:
    """Refuse LoRA targets that a fused kernel reads by weight (`UNSAFE_TARGETS` inside Mamba-2 blocks).

    A name that ends in an unsafe module but whose block cannot be resolved is refused too (better safe).

    Raises:
        ValueError: naming each unsafe module and why.
    """
    problems = []
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in UNSAFE_TARGETS:
            continue
        parsed = _parse(name)
        kind = block_kinds[parsed[1]] if parsed is not None and parsed[1] < len(block_kinds) else None
        if kind in ("mamba", None):
            problems.append(f"{name}: {UNSAFE_TARGETS[leaf]}")
    if problems:
        raise ValueError("unsafe LoRA targets:\n  - " + "\n  - ".join(problems))


def decoder_module_names(vlm: nn.Module) -> list[str]:
    """Full names (relative to `vlm`) of the modules inside the decoder's blocks, the input of `select_lora_targets`.

    Only `language_model.model.layers` is listed, the blocks that `block_kinds` describes (no MTP or vision layers).
    """
    layers = vlm.language_model.model.layers
    return [name for name, _ in layers.named_modules(prefix="language_model.model.layers")]


# -- apply -----------------------------------------------------------------------------------------------------


def component_of(name: str) -> str:
    """Component of a parameter or module name relative to the VLM: a `COMPONENTS` value, `lora`, or `other`."""
    if "lora_" in name:
        return "lora"
    return COMPONENTS.get(name.split(".", 1)[0], "other")


def apply_freeze_policy(vlm: nn.Module, decoder: str) -> nn.Module:
    """The one place that decides what trains: towers frozen (eval mode), projector trained, decoder per `decoder`.

    Args:
        vlm: a `nemotron_h_omni` model (LoRA already injected when `decoder == "lora"`).
        decoder: `"lora"` (only LoRA parameters of the decoder train) or `"full"` (every decoder parameter trains).

    Returns:
        `vlm`, changed in place.
    """
    if decoder not in ("lora", "full"):
        raise ValueError(f"decoder={decoder!r} must be 'lora' or 'full'")
    for name, param in vlm.named_parameters():
        component = component_of(name)
        if component == "lora":
            param.requires_grad_(True)
        elif component == "decoder":
            param.requires_grad_(decoder == "full")
        else:
            param.requires_grad_(component == "projector")
    set_frozen_eval(vlm)
    return vlm


def set_frozen_eval(vlm: nn.Module) -> nn.Module:
    """Put the frozen towers in eval mode (call again after `.train()`, which Lightning calls on every fit)."""
    for name, child in vlm.named_children():
        if COMPONENTS.get(name) in FROZEN_COMPONENTS:
            child.eval()
    return vlm


def apply_lora(
    vlm: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: Sequence[str] | None = None,
    include: Iterable[str] = DEFAULT_INCLUDE,
) -> nn.Module:
    """Inject LoRA adapters into the decoder in place and apply the freeze policy.

    Args:
        vlm: a `nemotron_h_omni` model.
        r: LoRA rank.
        alpha: LoRA alpha (the update is scaled by `alpha / r`).
        dropout: dropout on the LoRA input.
        targets: exact full module names to wrap; None selects them with `select_lora_targets(include)`.
        include: target groups, when `targets` is None.

    Returns:
        The same `vlm` object (its class unchanged, `vlm.language_model` still the causal LM), with `lora_A` /
        `lora_B` inside the targeted linears.
    """
    from peft import LoraConfig, inject_adapter_in_model

    kinds = decoder_block_kinds(vlm.language_model.config)
    if targets is None:
        targets = select_lora_targets(decoder_module_names(vlm), kinds, include)
    else:
        targets = list(targets)
        check_targets(targets, kinds)
        names = {name for name, _ in vlm.named_modules()}
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise ValueError(f"LoRA targets {unknown} name no module of the model")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, vlm)
    return apply_freeze_policy(vlm, "lora")


def apply_full_finetune(vlm: nn.Module) -> nn.Module:
    """No adapters: the whole decoder and the projector train, the towers stay frozen."""
    return apply_freeze_policy(vlm, "full")


def merge_lora(vlm: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base linear and put the plain `nn.Linear` back (for export), in place."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, module) for name, module in vlm.named_modules() if isinstance(module, LoraLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(vlm.get_submodule(parent_name) if parent_name else vlm, child, module.get_base_layer())
    return vlm


# -- verify ----------------------------------------------------------------------------------------------------


def summarize_trainable(model: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable and frozen parameter counts (elements) per component of a VLM.

    Returns:
        `{component: {"trainable": n, "frozen": m}}` for `vision`, `audio`, `projector`, `decoder`, `lora`, `other`
        (components that are present) and `total`.
    """
    summary: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        counts = summary.setdefault(component_of(name), {"trainable": 0, "frozen": 0})
        counts["trainable" if param.requires_grad else "frozen"] += param.numel()
    summary["total"] = {key: sum(counts[key] for counts in summary.values()) for key in ("trainable", "frozen")}
    return summary


def lora_module_names(model: nn.Module) -> list[str]:
    """Names of the modules that hold a LoRA adapter."""
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A")]


def verify_trainable(model: nn.Module, lora: bool | None = None) -> dict[str, dict[str, int]]:
    """Check the trainable set after `apply_lora` / `apply_full_finetune`, log the counts, return the summary.

    Checks: something trains; no vision/audio parameter trains; the projector trains; no LoRA sits on an unsafe
    module (`check_targets`); under LoRA no base decoder parameter trains.

    Args:
        model: the prepared VLM.
        lora: whether LoRA is expected (True), not expected (False), or either (None: inferred from the model).

    Raises:
        RuntimeError: listing every problem at once.
    """
    summary = summarize_trainable(model)
    wrapped = lora_module_names(model)
    has_lora = bool(wrapped)
    problems = []
    if lora is not None and lora != has_lora:
        problems.append(f"expected {'LoRA' if lora else 'no LoRA'} but found {len(wrapped)} LoRA modules")
    if summary["total"]["trainable"] == 0:
        problems.append("no parameter is trainable")
    for component in FROZEN_COMPONENTS:
        if summary.get(component, {}).get("trainable", 0):
            problems.append(f"{summary[component]['trainable']} {component} tower parameters are trainable")
    if summary.get("projector", {}).get("frozen", 0):
        problems.append(f"{summary['projector']['frozen']} projector parameters are frozen")
    if has_lora and summary.get("decoder", {}).get("trainable", 0):
        problems.append(f"{summary['decoder']['trainable']} base decoder parameters train under LoRA")
    try:
        check_targets(wrapped, decoder_block_kinds(model.language_model.config))
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise RuntimeError("trainable set is wrong:\n  - " + "\n  - ".join(problems))
    log.info(
        "trainable parameters: %s (%d LoRA modules)",
        ", ".join(f"{k}: {v['trainable']:,} trainable / {v['frozen']:,} frozen" for k, v in summary.items()),
        len(wrapped),
    )
    return summary


# -- config-group builders -------------------------------------------------------------------------------------


@dataclass
class LoraSpec:
    """`peft` config group: LoRA on the decoder (`_target_: hpft.peft_setup.LoraSpec`).

    Args:
        r: LoRA rank.
        alpha: LoRA alpha (update scale `alpha / r`).
        dropout: dropout on the LoRA input, in [0, 1).
        include: target groups (`TARGET_GROUPS` keys).
        targets: exact module names instead of `include` (None: select from `include`).
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    include: Sequence[str] = field(default_factory=lambda: DEFAULT_INCLUDE)
    targets: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.include = tuple(self.include)  # Hydra passes a ListConfig
        self.targets = None if self.targets is None else tuple(self.targets)
        problems = []
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            problems.append(f"r={self.r!r} must be an integer >= 1")
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            problems.append(f"alpha={self.alpha!r} must be > 0")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            problems.append(f"dropout={self.dropout!r} must be in [0, 1)")
        problems += _unknown_includes(self.include)
        if problems:
            raise ValueError("invalid LoRA config:\n  - " + "\n  - ".join(problems))

    def apply(self, vlm: nn.Module) -> nn.Module:
        """Inject LoRA, apply the freeze policy and verify; returns `vlm`."""
        apply_lora(vlm, self.r, self.alpha, self.dropout, self.targets, self.include)
        verify_trainable(vlm, lora=True)
        return vlm


@dataclass
class NoPeft:
    """`peft` config group: full finetune of the decoder and projector (`_target_: hpft.peft_setup.NoPeft`)."""

    def apply(self, vlm: nn.Module) -> nn.Module:
        """Apply the full-finetune freeze policy and verify; returns `vlm`."""
        apply_full_finetune(vlm)
        verify_trainable(vlm, lora=False)
        return vlm


def setup_peft(vlm: nn.Module, spec: LoraSpec | NoPeft | None) -> nn.Module:
    """Apply a `peft` group node (None means `NoPeft`)."""
    return (spec if spec is not None else NoPeft()).apply(vlm)
