"""Guards around transformers' optional Mamba-2 GPU kernels: tensors off CUDA always take the PyTorch path.

How transformers 5.24 chooses (`models/nemotron_h/modeling_nemotron_h.py`): the five Mamba-2 kernel functions
(`causal_conv1d_fn`, `causal_conv1d_update`, `mamba2_split_conv1d_scan_combined`, `mamba2_selective_state_update`,
`mamba2_chunk_scan`) are module globals built by `integrations.hub_kernels.use_kernel_func_from_hub_with_fallback`.
At *import* time that decorator tries `import mamba_ssm` / `import causal_conv1d`; when the import works, the global
calls the package's CUDA/Triton function on every call, whatever device the tensors are on, and otherwise the
PyTorch reference (the decorated function itself). The fused training kernel's reference returns None, which sends
the mixer down its unfused path; the mixer's forward looks all five up as module globals at call time.

So on a machine with mamba-ssm installed, a model on CPU (tests, CPU evaluation, a reference run) hands CPU tensors
to Triton kernels and fails. There is no per-model switch (every model of the class shares the globals), so
`force_torch_path` replaces each such global by a dispatcher that sends non-CUDA tensors to the reference and CUDA
tensors to whatever transformers picked: a CPU model never reaches a CUDA kernel and a GPU model keeps the fused
kernels, in the same process. `torch_path_only` forces the reference on every device, so that a fast path can be
compared with its reference (`tests/test_gpu.py`).

Hub kernels (`from_pretrained(..., use_kernels=True)`, the `kernels` package) are a separate mechanism that hpft does
not enable; they are not guarded here.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import torch
from torch import nn

__all__ = [
    "FAST_DEVICE_TYPES",
    "fallback_functions",
    "force_torch_path",
    "modeling_modules",
    "torch_path_only",
    "uses_fast_kernel",
]

FAST_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
"""Device types whose tensors may reach the package kernels (mamba-ssm and causal-conv1d are CUDA/Triton only)."""

# Set by `torch_path_only`: route every call to the reference, CUDA included.
_FORCE_REFERENCE: contextvars.ContextVar[bool] = contextvars.ContextVar("hpft_force_reference", default=False)


def _closure(fn: object) -> dict[str, object]:
    """The free variables a function closes over, by name (empty for anything that is not a Python function)."""
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None or not cells:
        return {}
    found = {}
    for name, cell in zip(code.co_freevars, cells):
        try:
            found[name] = cell.cell_contents
        except ValueError:  # a cell not filled yet
            pass
    return found


def _is_fallback_wrapper(obj: object) -> bool:
    """Whether `obj` is a function built by `use_kernel_func_from_hub_with_fallback` (it closes over both paths)."""
    cells = _closure(obj) if inspect.isfunction(obj) else {}
    return callable(cells.get("torch_function")) and "implementation" in cells


class _DeviceDispatch:
    """Stands in for one kernel global: non-CUDA tensors to the reference, CUDA tensors to transformers' choice."""

    def __init__(self, fast: Callable) -> None:
        cells = _closure(fast)
        self.fast = fast
        self.reference: Callable = cells["torch_function"]
        self.uses_fast_kernel = bool(cells.get("is_new_implementation", False))
        # transformers passes only the keywords the chosen implementation declares; do the same for the reference.
        self._params = tuple(inspect.signature(self.reference).parameters)
        functools.update_wrapper(self, self.reference)  # name, docstring, and `__wrapped__` -> the reference

    def __call__(self, *args, **kwargs):
        tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        on_fast_device = tensor is not None and tensor.device.type in FAST_DEVICE_TYPES
        if on_fast_device and not _FORCE_REFERENCE.get():
            return self.fast(*args, **kwargs)
        if kwargs.get("cu_seqlens") is not None or kwargs.get("seq_idx") is not None:
            # The reference ignores packing metadata and would mix packed sequences; transformers refuses it too.
            raise ValueError(f"`{self.__name__}` cannot keep packed sequences apart on the PyTorch path")
        return self.reference(*args, **{k: v for k, v in kwargs.items() if k in self._params})


def modeling_modules(model: nn.Module) -> list[ModuleType]:
    """The transformers modelling modules (`transformers.models.*`) that define the classes of `model`'s modules."""
    names = sorted({type(m).__module__ for m in model.modules()})
    return [sys.modules[n] for n in names if n.startswith("transformers.models.") and n in sys.modules]


def fallback_functions(module: ModuleType) -> dict[str, Callable]:
    """The kernel-or-reference globals of a modelling module (raw decorator output, or already guarded), by name.

    For `modeling_nemotron_h` these are the five Mamba-2 kernel functions named in the module docstring.
    """
    return {
        name: obj for name, obj in vars(module).items() if isinstance(obj, _DeviceDispatch) or _is_fallback_wrapper(obj)
    }


def uses_fast_kernel(fn: Callable) -> bool:
    """Whether a kernel global calls a package kernel (mamba-ssm / causal-conv1d) for CUDA tensors.

    False for the PyTorch reference (the package was not importable when transformers imported the module).
    """
    if isinstance(fn, _DeviceDispatch):
        return fn.uses_fast_kernel
    return bool(_closure(fn).get("is_new_implementation", False))


def force_torch_path(model: nn.Module) -> nn.Module:
    """Make sure `model`'s Mamba-2 (and any other fallback-decorated) kernels never see tensors off CUDA.

    Replaces, in every transformers modelling module the model uses, each kernel global by a device dispatcher
    (idempotent, process-wide: see the module docstring for why it cannot be per model). CUDA tensors keep the
    fused kernels when mamba-ssm / causal-conv1d are installed; CPU tensors take the PyTorch reference, which is
    what transformers runs anyway when the packages are absent, so outputs on CPU are unchanged.

    Args:
        model: any transformers model (e.g. a `nemotron_h_omni` VLM or a `NemotronHForCausalLM`), on any device.

    Returns:
        `model`, unchanged (only module globals are replaced).
    """
    for module in modeling_modules(model):
        for name, fn in fallback_functions(module).items():
            if not isinstance(fn, _DeviceDispatch):
                setattr(module, name, _DeviceDispatch(fn))
    return model


@contextlib.contextmanager
def torch_path_only(model: nn.Module) -> Iterator[None]:
    """Within the block, every kernel global of `model`'s modules runs its PyTorch reference, CUDA tensors included.

    The fused training kernel's reference returns None, so Mamba-2 mixers take their unfused PyTorch path: the oracle
    that a fused-kernel output is compared with.
    """
    force_torch_path(model)
    token = _FORCE_REFERENCE.set(True)
    try:
        yield
    finally:
        _FORCE_REFERENCE.reset(token)
