"""Tabulate runs side by side and plot their accuracy against prefill speedup (`python -m hpft.compare`).

A run is one flat record: `run` (its name), `schedule`, `keep`, `scorer` and the metric keys of `metrics.json`
(`hpft.run_report`). Records come from run folders (`load_run_folders`: a run folder, or a multirun folder
searched recursively; offline W&B runs live inside those folders) or from a W&B project (`load_wandb_runs`: each
run's summary and config through the public API).

Run folders are training runs (`metrics.json`) or evaluation runs of `python -m hpft.evaluate` (`results.json`,
`hpft.eval_runner.RESULT_KEYS`). An evaluation becomes the same kind of row (`eval_record`): its accuracy as
`val/<bench>/acc` (and `val/<bench>/acc/<kind>` per question kind), `reduction/realised_keep`, `perf/prefill_s`.
It measures no unreduced reference itself, so `attach_unreduced` takes `val/<bench>/acc_full` and
`perf/prefill_speedup` from the unreduced evaluation of the same benchmark data, model and checkpoint when one
is among the runs read (blank otherwise). transformers' EVS runs (`video_pruning_rate > 0`) show as schedule and
scorer `evs` with keep `1 - rate`. A `results.json` inside a training run's folder (the in-training benchmark
callback's) is not a run of its own.

`comparison_frame` turns records into the table (one row per run; blank where a run lacks a metric),
`markdown_table` renders it, `pareto_front` marks the runs no other run beats on both accuracy and speed, and
`write_comparison` writes `comparison.md`, `comparison.csv` and `pareto.png`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hpft.errors import UserInputError

ID_COLUMNS = ("run", "schedule", "keep", "scorer")
"""What identifies a run in the table: its name and its reduction setting."""
TAIL_COLUMNS = ("perf/prefill_speedup", "reduction/realised_keep", "train/loss")
"""Metrics every table shows after the benchmark scores, blank where a run did not measure them."""
SPEEDUP = "perf/prefill_speedup"
_SCORE = re.compile(r"^val/[^/]+/acc")  # val/<bench>/acc, acc_full and their breakdowns (acc/<kind>)
_HEADLINE = re.compile(r"^val/[^/]+/acc$")  # the reduced accuracy of a benchmark
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"  # an `hpft.evaluate` run
PREFILL_S = "perf/prefill_s"


@dataclass(frozen=True)
class ComparisonFiles:
    """What `write_comparison` wrote, and the table it printed."""

    markdown: Path
    csv: Path
    plot: Path
    table: str


# ------------------------------------------------------------------------------------------------ records


def _unwrap(value: Any) -> Any:
    """A W&B config value without the `{"value": x}` wrapping the public API may return."""
    if isinstance(value, Mapping) and set(value) == {"value"}:
        return value["value"]
    return value


def _plain(value: Any) -> Any:
    """A table-ready scalar: W&B's config wrapping removed, NaN/inf and non-scalars as None."""
    value = _unwrap(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # a tensor of several elements is not a table cell
            return None
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    return None


def flat_metrics(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar metrics under their plain keys (Lightning's `_step`/`_epoch` suffixes folded, `_step` first).

    W&B summaries of runs that did not record the flat `metrics.json` keys hold `train/loss_step` and
    `train/loss_epoch` instead of `train/loss`; the last step's value is the one `metrics.json` keeps.
    """
    out: dict[str, Any] = {}
    folded: dict[str, tuple[int, Any]] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key.startswith("_"):  # W&B's own `_runtime`, `_step`, `_timestamp`, ...
            continue
        # Only namespaced metrics carry Lightning's suffixes; `global_step` is a key of its own.
        if "/" in key and key.endswith(("_step", "_epoch")):
            plain, rank = (key.removesuffix("_step"), 1) if key.endswith("_step") else (key.removesuffix("_epoch"), 0)
            if plain not in folded or folded[plain][0] < rank:
                folded[plain] = (rank, _plain(value))
            continue
        out[key] = _plain(value)
    for plain, (_, value) in folded.items():
        if out.get(plain) is None:
            out[plain] = value
    return out


def _setting(metrics: Mapping[str, Any], config: Mapping[str, Any] | None, key: str) -> Any:
    """`schedule` / `keep` / `scorer` from the metrics, else from a config.

    The config is a resolved Hydra `config.yaml` (`schedule: {name: low_to_high, ...}`) or a W&B run config
    (hpft logs them flat, `schedule: low_to_high`, and the Hydra config under `config`).
    """
    if metrics.get(key) is not None:
        return metrics[key]
    config = config or {}
    nested = _unwrap(config.get("config"))
    for source in (config, nested if isinstance(nested, Mapping) else {}):
        value = _unwrap(source.get(key))
        if isinstance(value, Mapping):  # a Hydra group node
            value = value.get("name")
        value = _plain(value)
        if value is not None:
            return value
    return None


def make_record(name: str, metrics: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One run's record: its name, its reduction setting and its flat scalar metrics.

    Args:
        name: how the run is named in the table.
        metrics: `metrics.json`, or a W&B summary.
        config: the run's config (resolved `config.yaml` or the W&B run config), read only for
            `schedule`, `keep` and `scorer` when the metrics lack them.
    """
    record = flat_metrics(metrics)
    record["run"] = name
    for key in ("schedule", "keep", "scorer"):
        record[key] = _setting(record, config, key)
    return record


def _in_training_run(file: Path, root: Path) -> bool:
    """Whether a `results.json` sits in a training run's folder tree (from `root` down): the benchmark callback's."""
    for folder in (file.parent, *file.parent.parents):
        if (folder / METRICS_FILE).is_file() or (folder / "checkpoints").is_dir():
            return True
        if folder == root:
            break
    return False


def find_metrics_files(paths: Sequence[str | Path]) -> list[Path]:
    """Every run file under `paths`: training runs' `metrics.json` and evaluation runs' `results.json`.

    A path is a run folder, a multirun folder searched recursively, or the file itself. A `results.json` inside a
    training run's folder (the in-training benchmark callback's) is left out.

    Raises:
        UserInputError: a path that does not exist, or no run file under any of them.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise UserInputError(f"--runs: no such folder: {', '.join(missing)}")
    found: dict[Path, None] = {}  # ordered set: overlapping --runs list a run once
    for path in map(Path, paths):
        if path.is_file():
            files = [path]
        else:
            root = path.resolve()
            results = [f for f in path.rglob(RESULTS_FILE) if not _in_training_run(f.resolve(), root)]
            files = sorted([*path.rglob(METRICS_FILE), *results])
        for file in files:
            found.setdefault(file.resolve())
    if not found:
        raise UserInputError(
            f"--runs: no {METRICS_FILE} or {RESULTS_FILE} under {', '.join(map(str, paths))}. Pass run folders of "
            "`python -m hpft.train` or `python -m hpft.evaluate`, or multirun folders (multirun/<time>); a run writes "
            "its file when it finishes."
        )
    return list(found)


def _run_name(file: Path, roots: Sequence[Path]) -> str:
    """A run's name: its folder relative to the parent of the `--runs` folder holding it (`<sweep>/<job>`)."""
    folder = file.parent
    for root in roots:
        base = root.parent if root.is_dir() else root.parent.parent
        if folder.is_relative_to(base):
            return folder.relative_to(base).as_posix() or folder.name
    return folder.name


def load_run_folders(paths: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of every run under `paths`, and a warning for each run file that could not be read.

    Training runs come from `metrics.json`, evaluation runs from `results.json` (`eval_record`, then
    `attach_unreduced` across all of them).

    Raises:
        UserInputError: a missing path, or no run file at all (see `find_metrics_files`).
    """
    files = find_metrics_files(paths)
    roots = [Path(p).resolve() for p in paths]
    records, warnings = [], []
    for file in files:
        try:
            metrics = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(metrics, Mapping):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            warnings.append(f"skipped {file}: {err}")
            continue
        name = _run_name(file, roots)
        if file.name == RESULTS_FILE:
            records.append(eval_record(name, metrics))
        else:
            records.append(make_record(name, metrics, _read_config(file.parent / "config.yaml")))
    if not records:
        raise UserInputError("--runs: no readable metrics.json or results.json:\n  " + "\n  ".join(warnings))
    return attach_unreduced(records), warnings


def _number(value: Any) -> float | None:
    value = _plain(value)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def eval_record(name: str, results: Mapping[str, Any]) -> dict[str, Any]:
    """One `python -m hpft.evaluate` run (its `results.json`) as a comparison record (see the module docstring).

    Missing fields become missing keys (blank cells); nothing here raises on a partial file.
    """
    bench = str(results.get("benchmark") or "bench")
    rate = _number(results.get("video_pruning_rate")) or 0.0
    record: dict[str, Any] = {
        "run": name,
        "schedule": "evs" if rate > 0 else _plain(results.get("schedule")),
        "keep": round(1.0 - rate, 6) if rate > 0 else _plain(results.get("keep")),
        "scorer": "evs" if rate > 0 else _plain(results.get("scorer")),
        f"val/{bench}/acc": _number(results.get("acc")),
        "reduction/realised_keep": _number(results.get("realised_keep")),
        PREFILL_S: _number(results.get("prefill_s")),
    }
    by = results.get("by")
    kinds = by.get("kind") if isinstance(by, Mapping) else None
    if isinstance(kinds, Mapping):  # per question kind, as training logs `val/<bench>/acc/<kind>`
        for kind, value in kinds.items():
            record[f"val/{bench}/acc/{kind}"] = _number(value)
    keep = _number(results.get("keep"))
    unreduced = rate == 0 and (results.get("schedule") == "none" or (keep is not None and keep >= 1.0))
    data = [results.get(k) for k in ("benchmark", "root", "num_frames", "n_scored", "model", "ckpt")]
    record["_eval"] = {"data": json.dumps(data, default=str), "unreduced": unreduced, "bench": bench}
    return record


def attach_unreduced(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give evaluation records the unreduced accuracy and the prefill speedup of their unreduced twin (pure).

    The twin is an unreduced evaluation (schedule `none` or keep 1, no EVS) of the same benchmark data (root,
    frames, items scored), model and checkpoint. It sets `val/<bench>/acc_full` (its accuracy) and
    `perf/prefill_speedup` (its `perf/prefill_s` over this run's); without a twin both stay missing. Training
    records pass through unchanged. Returns new records, without the internal `_eval` key.
    """
    twins = {r["_eval"]["data"]: r for r in records if "_eval" in r and r["_eval"]["unreduced"]}
    out = []
    for record in records:
        info = record.get("_eval")
        record = {k: v for k, v in record.items() if k != "_eval"}
        twin = twins.get(info["data"]) if info else None
        if twin is not None:
            bench = info["bench"]
            record.setdefault(f"val/{bench}/acc_full", twin.get(f"val/{bench}/acc"))
            mine, theirs = record.get(PREFILL_S), twin.get(PREFILL_S)
            if _finite(mine) and _finite(theirs) and mine > 0:
                record.setdefault(SPEEDUP, theirs / mine)
        out.append(record)
    return out


def _read_config(path: Path) -> dict[str, Any] | None:
    """The run's resolved `config.yaml`, or None when absent or unreadable (it only backs up the metrics)."""
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]
    except Exception:  # a broken config must not hide the run's metrics
        return None


def _as_dict(value: Any) -> dict[str, Any]:
    """A W&B summary/config object (public-API `HTTPSummary`, dict, ...) as a plain dict."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    json_dict = getattr(value, "_json_dict", None)
    if isinstance(json_dict, Mapping):
        return dict(json_dict)
    return dict(value.items()) if hasattr(value, "items") else {}


def load_wandb_runs(project: str, group: str | None = None, api: Any = None) -> list[dict[str, Any]]:
    """Records of the runs of a W&B project (`entity/project`), read through the public API.

    Args:
        project: `entity/project` (or `project` for the default entity).
        group: only the runs of this W&B group (one sweep), or every run.
        api: a `wandb.Api`-like object (tests pass a fake); default `wandb.Api()`.

    Raises:
        UserInputError: the API could not be reached or the project has no run.
    """
    try:
        if api is None:
            import wandb

            api = wandb.Api()
        runs = list(api.runs(project, filters={"group": group} if group else None))
    except UserInputError:
        raise
    except Exception as err:  # network, credentials, unknown project: all reported the same way
        raise UserInputError(
            f"--project {project}: cannot read it from W&B ({type(err).__name__}: {err}). Online access needs "
            "WANDB_API_KEY or `wandb login`; offline runs are read with --runs <run folder>."
        ) from err
    if not runs:
        raise UserInputError(f"--project {project}: no runs" + (f" in group {group!r}" if group else ""))
    records = []
    for run in runs:
        summary = getattr(run, "summary_metrics", None)
        summary = _as_dict(summary if summary is not None else getattr(run, "summary", None))
        name = getattr(run, "name", None) or getattr(run, "id", None) or "?"
        records.append(make_record(str(name), summary, _as_dict(getattr(run, "config", None))))
    return records


# ------------------------------------------------------------------------------------------------ table


def score_columns(keys: Iterable[str]) -> list[str]:
    """The benchmark score keys among `keys` (`val/<bench>/acc*`), each benchmark's headline accuracy first."""

    def order(key: str) -> tuple[str, int, str]:
        bench = key.split("/")[1]
        rest = key.split("/", 2)[2]
        return bench, 0 if rest == "acc" else 1 if rest == "acc_full" else 2, rest

    return sorted({k for k in keys if _SCORE.match(k)}, key=order)


def _sort_key(record: Mapping[str, Any]) -> tuple:
    """Rows by schedule, keep, scorer, then name; a missing value sorts last."""
    return tuple((record.get(k) is None, record.get(k) if record.get(k) is not None else 0) for k in ID_COLUMNS[1:]) + (
        str(record.get("run")),
    )


def comparison_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The comparison table: one row per run, blank (None) where the run did not record a metric.

    Columns: `run, schedule, keep, scorer`, every `val/<bench>/acc*` score found in any run, then
    `perf/prefill_speedup, reduction/realised_keep, train/loss`.
    """
    records = sorted(records, key=_sort_key)
    keys = {k for record in records for k in record}
    columns = [*ID_COLUMNS, *score_columns(keys), *TAIL_COLUMNS]
    rows = [[record.get(column) for column in columns] for record in records]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """The table as GitHub markdown; missing values are empty cells."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def pareto_front(speedups: Sequence[float], accuracies: Sequence[float]) -> list[bool]:
    """Which points no other point beats: at least as fast and as accurate, and strictly better in one.

    Args:
        speedups: prefill speedup of each run (higher is better).
        accuracies: accuracy of each run (higher is better).

    Returns:
        One flag per point; points with a missing or NaN coordinate are never on the front.
    """

    def ok(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    points = [(s, a) if ok(s) and ok(a) else None for s, a in zip(speedups, accuracies, strict=True)]
    front = []
    for p in points:
        if p is None:
            front.append(False)
            continue
        beaten = any(q is not None and q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)
        front.append(not beaten)
    return front


def default_accuracy(frame: pd.DataFrame) -> str | None:
    """The accuracy the plot uses: `val/needle/acc` if present, else the first benchmark's reduced accuracy."""
    headlines = [c for c in frame.columns if _HEADLINE.match(c)]
    if "val/needle/acc" in headlines:
        return "val/needle/acc"
    return headlines[0] if headlines else None


# ------------------------------------------------------------------------------------------------ outputs


def plot_pareto(frame: pd.DataFrame, path: str | Path, accuracy: str | None = None) -> Path:
    """Accuracy against prefill speedup: one line per schedule (points in speedup order), the Pareto front ringed.

    The mean unreduced accuracy (`<accuracy>_full`), when recorded, is drawn as a dotted reference line. Runs
    lacking either coordinate are left out; with none left the figure says so instead of failing.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters and CI
    import matplotlib.pyplot as plt

    accuracy = accuracy or default_accuracy(frame)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = frame[[c for c in ("schedule", "keep", SPEEDUP, accuracy) if c in frame.columns]].copy()
    if accuracy is None or SPEEDUP not in points or accuracy not in points:
        points = points.iloc[0:0]
    else:
        points = points[[_finite(s) and _finite(a) for s, a in zip(points[SPEEDUP], points[accuracy], strict=True)]]
    if points.empty:
        ax.text(0.5, 0.5, f"no run has both {accuracy or 'an accuracy'} and {SPEEDUP}", ha="center", va="center")
    else:
        for schedule, group in points.groupby(points["schedule"].astype(str), sort=True):
            group = group.sort_values(SPEEDUP)
            ax.plot(group[SPEEDUP].astype(float), group[accuracy].astype(float), marker="o", label=schedule)
            for _, row in group.iterrows():
                if _finite(row.get("keep")):
                    ax.annotate(
                        f"{row['keep']:g}",
                        (row[SPEEDUP], row[accuracy]),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                    )
        on_front = pareto_front(list(points[SPEEDUP]), list(points[accuracy]))
        front = points[on_front].sort_values(SPEEDUP)
        ax.plot(
            front[SPEEDUP].astype(float),
            front[accuracy].astype(float),
            linestyle="--",
            color="black",
            marker="o",
            markersize=12,
            markerfacecolor="none",
            label="Pareto front",
        )
        full = f"{accuracy}_full"
        if full in frame.columns:
            values = [float(v) for v in frame[full] if _finite(v)]
            if values:
                ax.axhline(sum(values) / len(values), color="grey", linestyle=":", label="unreduced (mean)")
        ax.legend(fontsize=8)
    ax.set_xlabel("prefill speedup (unreduced time / reduced time)")
    ax.set_ylabel(accuracy or "accuracy")
    ax.set_title("accuracy vs prefill speedup (labels: keep)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def write_comparison(
    records: Sequence[Mapping[str, Any]], out: str | Path, accuracy: str | None = None
) -> ComparisonFiles:
    """Write `comparison.md`, `comparison.csv` (blank cells for missing metrics) and `pareto.png` into `out`.

    Args:
        records: one record per run (`make_record`, `load_run_folders`, `load_wandb_runs`).
        out: output folder (created).
        accuracy: the accuracy key of the plot (default `default_accuracy`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = comparison_frame(records)
    table = markdown_table(frame)
    markdown = out / "comparison.md"
    markdown.write_text(f"# Run comparison\n\n{len(frame)} runs.\n\n{table}\n\n![accuracy vs speedup](pareto.png)\n")
    csv = out / "comparison.csv"
    frame.to_csv(csv, index=False)  # None is written as an empty field
    plot = plot_pareto(frame, out / "pareto.png", accuracy)
    return ComparisonFiles(markdown=markdown, csv=csv, plot=plot, table=table)
