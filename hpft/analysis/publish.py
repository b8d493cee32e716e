"""Hand an analysis to the configured loggers: scalars to every logger, tables and figures to W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers as slash-namespaced scalars (`analysis/...`), None values left out."""
    metrics: dict[str, Any] = {}
    for kind, summary in results["sparsity"]["by_kind"].items():
        for key, value in summary.items():
            if key != "blocks":
                metrics[f"analysis/sparsity/{kind}/{key}"] = value
    for key, value in results["stability"]["adjacent_mean"].items():
        metrics[f"analysis/stability/adjacent/{key}"] = value
    probing = results["probing"]
    for variant, value in probing["accuracy"].items():
        metrics[f"analysis/probe/{variant}_acc"] = value
    metrics["analysis/probe/chance"] = probing["chance"]
    metrics["analysis/probe/majority"] = probing["majority"]
    return {k: float(v) for k, v in metrics.items() if v is not None}


def tables(results: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """`{name: (columns, rows)}`: per-block sparsity, adjacent-block stability, probe accuracies."""
    blocks = results["sparsity"]["blocks"]
    block_columns = list(blocks[0]) if blocks else []
    pairs = results["stability"]["adjacent"]
    pair_columns = list(pairs[0]) if pairs else []
    probing = results["probing"]
    return {
        "analysis/sparsity": (block_columns, [[r[c] for c in block_columns] for r in blocks]),
        "analysis/stability_adjacent": (pair_columns, [[p[c] for c in pair_columns] for p in pairs]),
        "analysis/probe": (
            ["variant", "accuracy", "chance", "majority"],
            [[v, a, probing["chance"], probing["majority"]] for v, a in probing["accuracy"].items()],
        ),
    }


def log_analysis(loggers: list[Any], results: dict[str, Any], images: dict[str, Path]) -> None:
    """Log the scalars to every logger; W&B loggers also get the tables and the PNGs."""
    metrics = flat_metrics(results)
    for logger in loggers:
        logger.log_metrics(metrics, step=0)
        if isinstance(logger, WandbLogger):
            for name, (columns, rows) in tables(results).items():
                logger.log_table(key=name, columns=columns, data=rows, step=0)
            for name, path in images.items():
                logger.log_image(key=f"analysis/{name}", images=[str(path)], step=0)
        logger.save()
