"""What a training run leaves in its output folder: `config.yaml`, `metrics.json`, and the printed eval table."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpft.reduction import ReductionConfig

REQUIRED_KEYS = (
    "schedule",
    "keep",
    "scorer",
    "reduction/realised_keep",
    "val/needle/acc",
    "val/needle/acc_full",
    "train/loss",
    "perf/prefill_speedup",
)
"""Keys every `metrics.json` holds (null when the run did not measure them, e.g. `eval_full=false`)."""


def _scalar(value: Any) -> Any:
    """A JSON-ready scalar from a tensor / number (NaN and inf become null)."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_metrics(
    reduction: ReductionConfig,
    train_metrics: Mapping[str, Any],
    val_metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The flat metrics of one run: reduction settings, last training metrics, final validation metrics.

    Args:
        reduction: the run's reduction setting (gives `schedule`, `keep`, `scorer`).
        train_metrics: Lightning's `callback_metrics` right after `fit` (`train/loss` is the last logged value).
        val_metrics: the final `validate` results (reduced and, with `eval_full`, unreduced).
        extra: anything else (`global_step`, `wall_time_s`, `ckpt_path`, ...).

    Returns:
        A flat dict with every key of `REQUIRED_KEYS` (None where not measured); `*_step`/`*_epoch` suffixes
        that Lightning adds are folded into the plain key.
    """
    metrics: dict[str, Any] = {"schedule": reduction.schedule, "keep": reduction.keep, "scorer": reduction.scorer}
    for source in (train_metrics, val_metrics):
        for key, value in source.items():
            plain = key.removesuffix("_step").removesuffix("_epoch")
            # `train/loss_step` (last step) wins over `train/loss_epoch` (an epoch mean), and both over nothing.
            if key.endswith("_epoch") and plain in metrics:
                continue
            metrics[plain] = _scalar(value)
    metrics.update({k: _scalar(v) for k, v in (extra or {}).items()})
    for key in REQUIRED_KEYS:
        metrics.setdefault(key, None)
    return metrics


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def format_table(metrics: Mapping[str, Any]) -> str:
    """A small text table of the final validation: reduced against unreduced, and the prefill speedup."""
    rows = [
        ("reduced", metrics["schedule"], metrics["scorer"], metrics["keep"],
         metrics.get("val/needle/realised_keep", metrics["reduction/realised_keep"]), metrics["val/needle/acc"]),
        ("unreduced", "none", "-", 1.0, 1.0 if metrics["val/needle/acc_full"] is not None else None,
         metrics["val/needle/acc_full"]),
    ]  # fmt: skip
    header = ("val", "schedule", "scorer", "keep", "realised keep", "val/needle/acc")
    cells = [header] + [tuple(_fmt(v) for v in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    speedup = metrics["perf/prefill_speedup"]
    lines.append(f"prefill speedup (unreduced time / reduced time): {_fmt(speedup, '.2f')}x")
    if metrics.get("train/loss") is not None:
        lines.append(f"last train/loss: {metrics['train/loss']:.4f}")
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_config(output_dir: str | os.PathLike[str], cfg: DictConfig) -> Path:
    """Write the resolved config as `<output_dir>/config.yaml` (Hydra's `.hydra/config.yaml` is unresolved)."""
    path = Path(output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    container = OmegaConf.to_container(cfg, resolve=True)
    _write_atomic(path, OmegaConf.to_yaml(OmegaConf.create(container)))
    return path


def write_metrics(output_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write `metrics` as `<output_dir>/metrics.json` (flat keys, sorted)."""
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n")
    return path
