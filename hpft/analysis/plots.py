"""PNG figures of an `analysis.json` (matplotlib's object API on the Agg canvas: no pyplot, no display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

PLOTS = ("sparsity", "stability", "stability_adjacent", "probing")
_MARKERS = {"attention": "s", "mamba": "o"}


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def plot_sparsity(section: dict[str, Any], path: Path) -> Path:
    """Coverage fraction over depth, one line per block kind and score mass."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for kind, marker in _MARKERS.items():
        rows = [r for r in section["blocks"] if r["kind"] == kind]
        for mass, style in zip(section["masses"], ("-", "--", ":", "-."), strict=False):
            key = f"cover_{round(100 * mass)}"
            ax.plot(
                [r["block"] for r in rows],
                [_nan(r[key]) for r in rows],
                linestyle=style,
                marker=marker,
                label=f"{kind}, {round(100 * mass)}% of the mass",
            )
    ax.set_xlabel("decoder block")
    ax.set_ylabel("fraction of visual tokens")
    ax.set_ylim(0, 1)
    ax.set_title("Tokens needed to cover the question's score mass")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _labels(section: dict[str, Any]) -> list[str]:
    return [f"{b}{'A' if k == 'attention' else 'M'}" for b, k in zip(section["blocks"], section["kinds"], strict=True)]


def plot_stability(section: dict[str, Any], path: Path) -> Path:
    """Block x block heatmaps: top-k Jaccard at each fraction and Spearman rank correlation."""
    names = list(section["matrices"])
    labels = _labels(section)
    fig = Figure(figsize=(4.2 * len(names), 4))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        low = -1.0 if name == "spearman" else 0.0
        image = ax.imshow(section["matrices"][name], vmin=low, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=90)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(name.replace("_", " @ ") + ("%" if name.startswith("jaccard") else ""))
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle("Importance stability between token-mixing blocks (A attention, M Mamba)")
    return _save(fig, path)


def plot_adjacent(section: dict[str, Any], path: Path) -> Path:
    """Stability between consecutive token-mixing blocks, with what random rankings would give."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    pairs = section["adjacent"]
    x = range(len(pairs))
    for name in section["matrices"]:
        line = ax.plot(x, [_nan(p[name]) for p in pairs], marker="o", label=name)[0]
        ax.axhline(section["chance"][name], color=line.get_color(), linestyle=":", linewidth=1)
    ticks = [f"{p['from']}→{p['to']}" for p in pairs]
    ax.set_xticks(list(x), ticks, fontsize=8)
    ax.set_xlabel("adjacent token-mixing blocks (dotted: random rankings)")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title("Stability between adjacent blocks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_probing(section: dict[str, Any], path: Path) -> Path:
    """Held-out probe accuracy per variant, against chance and the majority class."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    names = list(section["accuracy"])
    ax.bar(names, [section["accuracy"][n] for n in names], color="tab:blue")
    ax.axhline(section["chance"], color="black", linestyle="--", label="chance")
    ax.axhline(section["majority"], color="tab:red", linestyle=":", label="majority class")
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (needle colour)")
    ax.set_title(f"Probe after cutting the needle at block {section['cut_block']} ({section['cut_kind']})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write every figure of `PLOTS` as `<out_dir>/<name>.png`; returns the paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "sparsity": plot_sparsity(results["sparsity"], out / "sparsity.png"),
        "stability": plot_stability(results["stability"], out / "stability.png"),
        "stability_adjacent": plot_adjacent(results["stability"], out / "stability_adjacent.png"),
        "probing": plot_probing(results["probing"], out / "probing.png"),
    }
