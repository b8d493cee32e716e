"""The claims suite's report: per-setting mean ± std over seeds, Markdown tables, bar charts and the budget Pareto plot.

Input: flat records, one per (claim, setting, seed) evaluation (`hpft.claims.collect`): `claim`, `setting`, `seed`,
`order`, `acc`, `speedup`, `realised_keep`, `prefill_s`. `aggregate` groups them by claim and setting (pure);
`write_report` writes `claims.json` (settings, records, summary), `claims.md` (one table per claim) and the PNGs.

`Δ` is the per-seed paired difference to the claim's reference setting (same test split, and for `random` the same
scorer seed index), then mean ± std over seeds: the seeds' shared difficulty cancels, so a small but consistent
difference shows up where the two accuracies' own spreads overlap.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpft.claims import CLAIMS, UNREDUCED, Claim

METRICS = ("acc", "acc_object", "speedup", "realised_keep", "prefill_s")


def stats(values: Iterable[Any]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for fewer than 2 values) and count of the finite numbers (pure)."""
    kept = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    return {
        "mean": statistics.fmean(kept) if kept else None,
        "std": statistics.stdev(kept) if len(kept) > 1 else None,
        "n": len(kept),
    }


def aggregate(records: Iterable[Mapping[str, Any]], claims: Mapping[str, Claim] = CLAIMS) -> dict[str, Any]:
    """Group records by claim and setting and summarise each over seeds (pure).

    Args:
        records: flat records (see the module docstring); a seed repeated for one setting counts once (the last).
        claims: claim definitions (titles, reference setting, axis name).

    Returns:
        `{claim: {title, measures, axis, reference, rows: [{setting, n, seeds, acc, delta, speedup, realised_keep,
        prefill_s, per_seed}]}}`, rows in the claims' setting order; each metric is `stats` output, `delta` the
        paired difference to the reference (None for the reference itself or without it).
    """
    grouped: dict[str, dict[str, dict[int, Mapping[str, Any]]]] = {}
    order: dict[tuple[str, str], int] = {}
    for record in records:
        claim, setting = str(record["claim"]), str(record["setting"])
        grouped.setdefault(claim, {}).setdefault(setting, {})[int(record["seed"])] = record
        order.setdefault((claim, setting), int(record.get("order", len(order))))
    summary = {}
    for claim, settings in grouped.items():
        definition = claims.get(claim)
        reference = definition.reference if definition else None
        ref_acc = {seed: r.get("acc") for seed, r in settings.get(reference, {}).items()}
        rows = []
        for setting in sorted(settings, key=lambda s: order[(claim, s)]):
            by_seed = settings[setting]
            row: dict[str, Any] = {"setting": setting, "n": len(by_seed), "seeds": sorted(by_seed)}
            for metric in METRICS:
                row[metric] = stats(r.get(metric) for r in by_seed.values())
            paired = [
                r["acc"] - ref_acc[seed]
                for seed, r in by_seed.items()
                if isinstance(r.get("acc"), int | float) and isinstance(ref_acc.get(seed), int | float)
            ]
            row["delta"] = None if setting == reference or not paired else stats(paired)
            row["per_seed"] = {str(seed): {m: r.get(m) for m in METRICS} for seed, r in sorted(by_seed.items())}
            rows.append(row)
        summary[claim] = {
            "title": definition.title if definition else claim,
            "measures": definition.measures if definition else "",
            "axis": definition.axis if definition else "setting",
            "reference": reference,
            "rows": rows,
        }
    return {c: summary[c] for c in [*claims, *sorted(set(summary) - set(claims))] if c in summary}


# --------------------------------------------------------------------------------------------- markdown


def mean_std(value: Mapping[str, Any] | None, digits: int = 3, signed: bool = False, suffix: str = "") -> str:
    """`0.612 ± 0.021` (or `+0.010 ± 0.015` with `signed`); only the mean for one value; empty when missing."""
    if not value or value.get("mean") is None:
        return ""
    mean = f"{value['mean']:+.{digits}f}" if signed else f"{value['mean']:.{digits}f}"
    std = value.get("std")
    return f"{mean}{suffix}" if std is None else f"{mean}{suffix} ± {std:.{digits}f}"


def claim_table(claim: Mapping[str, Any]) -> str:
    """One claim's summary as a Markdown table (mean ± std over seeds)."""
    header = [claim["axis"], "accuracy", f"Δ acc vs {claim['reference']}", "colour+shape acc", "seeds",
              "prefill speedup", "realised keep"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
    for row in claim["rows"]:
        name = f"**{row['setting']}**" if row["setting"] == claim["reference"] else row["setting"]
        cells = [
            name.replace("|", "\\|"),
            mean_std(row["acc"]),
            "(reference)" if row["setting"] == claim["reference"] else mean_std(row["delta"], signed=True),
            mean_std(row.get("acc_object")),
            str(row["n"]),
            mean_std(row["speedup"], digits=2, suffix="×"),
            mean_std(row["realised_keep"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(summary: Mapping[str, Any], meta: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """`claims.md`: the settings the suite ran with, then one section (table + plot) per claim."""
    lines = ["# Claims suite", ""]
    lines += [f"- {key}: `{value}`" for key, value in meta.items()]
    lines += [
        "",
        "Accuracy: fraction of needle questions answered right (4 options, chance 0.25), mean ± sample std over the "
        "seeds. Δ: per-seed paired difference to the claim's reference setting. Prefill speedup: the unreduced "
        "prefill time on the same split and weights over this setting's (decoder prefill, mean per item).",
    ]
    for name, claim in summary.items():
        lines += ["", f"## {name}: {claim['title']}", "", claim["measures"], "", claim_table(claim)]
        for plot in (f"{name}.png", "budget_pareto.png" if name == "budget" else None):
            if plot and plot in plots.values():
                lines += ["", f"![{name}]({plot})"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters and CI
    import matplotlib.pyplot as plt

    return plt


def _unreduced_acc(claim: Mapping[str, Any]) -> float | None:
    """The claim's unreduced accuracy (a row named unreduced, keep 1.0 or ending in `→ unreduced`), if any."""
    for row in claim["rows"]:
        if row["setting"] in (UNREDUCED, "1.0", "training-free → unreduced"):
            return row["acc"]["mean"]
    return None


def plot_claim(claim: Mapping[str, Any], path: str | Path) -> Path:
    """Bar chart of one claim: mean accuracy per setting with ± std error bars, each seed as a dot."""
    plt = _pyplot()
    rows = claim["rows"]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(rows) + 2), 4.2))
    xs = list(range(len(rows)))
    means = [r["acc"]["mean"] if r["acc"]["mean"] is not None else 0.0 for r in rows]
    errors = [r["acc"]["std"] or 0.0 for r in rows]
    colours = ["tab:orange" if r["setting"] == claim["reference"] else "tab:blue" for r in rows]
    ax.bar(xs, means, yerr=errors, capsize=4, color=colours, alpha=0.8)
    for x, row in zip(xs, rows, strict=True):
        seeds = [v["acc"] for v in row["per_seed"].values() if isinstance(v.get("acc"), int | float)]
        ax.scatter([x] * len(seeds), seeds, color="black", s=10, zorder=3)
    ax.axhline(0.25, color="grey", linestyle=":", linewidth=1, label="chance (4 options)")
    unreduced = _unreduced_acc(claim)
    if unreduced is not None:
        ax.axhline(unreduced, color="tab:green", linestyle="--", linewidth=1, label="unreduced")
    ax.set_xticks(xs, [r["setting"] for r in rows], rotation=20 if len(rows) > 4 else 0, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    # Headroom above 1.0 for the legend: near-perfect bars would otherwise sit under it.
    ax.set_ylim(0, 1.13)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(claim["title"], fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_budget_pareto(summary: Mapping[str, Any], path: str | Path) -> Path | None:
    """Accuracy against prefill speedup for the budget claim (labels: keep), EVS beside it; the Pareto front ringed.

    Returns None when the summary has no budget claim.
    """
    from hpft.comparison import pareto_front

    budget = summary.get("budget")
    if budget is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    points = [(r, "in-decoder (low_to_high)") for r in budget["rows"]]
    points += [(r, "EVS (transformers)") for r in summary.get("evs", {}).get("rows", []) if r["setting"] == "evs"]
    drawn = []
    for row, series in points:
        x, y = row["speedup"]["mean"], row["acc"]["mean"]
        if x is None or y is None:
            continue
        drawn.append((row, series, x, y))
    for series, marker in (("in-decoder (low_to_high)", "o"), ("EVS (transformers)", "s")):
        mine = sorted((d for d in drawn if d[1] == series), key=lambda d: d[2])
        if not mine:
            continue
        ax.errorbar(
            [d[2] for d in mine], [d[3] for d in mine],
            xerr=[d[0]["speedup"]["std"] or 0 for d in mine], yerr=[d[0]["acc"]["std"] or 0 for d in mine],
            marker=marker, capsize=3, linestyle="-" if marker == "o" else "none", label=series,
        )  # fmt: skip
        for row, _, x, y in mine:
            label = f"keep {row['setting']}" if series.startswith("in-decoder") else "EVS 0.75"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    front = pareto_front([d[2] for d in drawn], [d[3] for d in drawn])
    ringed = [d for d, on in zip(drawn, front, strict=True) if on]
    if ringed:
        ax.scatter([d[2] for d in ringed], [d[3] for d in ringed], s=200, facecolors="none", edgecolors="black",
                   label="Pareto front")  # fmt: skip
    if not drawn:
        ax.text(0.5, 0.5, "no run has both accuracy and speedup", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("prefill speedup (unreduced / reduced, mean ± std)")
    ax.set_ylabel("accuracy (mean ± std)")
    ax.set_title(budget["title"], fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- files


def write_report(
    records: Sequence[Mapping[str, Any]], out: str | Path, meta: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write `claims.json`, `claims.md`, `<claim>.png` per claim and `budget_pareto.png` into `out`.

    Args:
        records: flat records (`hpft.claims.collect`).
        out: the suite folder (created).
        meta: the suite's settings (seeds, items, frames, command, timings), written into both files.

    Returns:
        `{name: path}` of every file written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    summary = aggregate(records)
    plots: dict[str, str] = {}
    files: dict[str, Path] = {}
    for name, claim in summary.items():
        files[name] = plot_claim(claim, out / f"{name}.png")
        plots[name] = f"{name}.png"
    pareto = plot_budget_pareto(summary, out / "budget_pareto.png")
    if pareto is not None:
        files["budget_pareto"] = pareto
        plots["budget_pareto"] = pareto.name
    files["json"] = out / "claims.json"
    payload = {"meta": meta, "claims": summary, "records": list(records)}
    files["json"].write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    files["markdown"] = out / "claims.md"
    files["markdown"].write_text(markdown_report(summary, meta, plots), encoding="utf-8")
    return files
