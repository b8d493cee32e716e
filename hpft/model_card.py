"""The model card (`README.md`) of an exported model: what it is, its reduction settings, and only measured scores.

Pure: values in, Markdown out. Every number in the card comes from a file the training run wrote — its
`metrics.json` (the validation at the end of training) and the `results.json` of evaluations found in the run
folder. Where neither exists the card says so; nothing is estimated or filled in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["format_value", "model_card"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def format_value(value: Any) -> str:
    """How the card prints a value: floats with 4 decimals, None as `-`, everything else as `str`."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _setting(value: Any) -> str:
    """A setting as written in `reduction.json` (JSON spelling: `0.25`, `true`), not rounded like a measurement."""
    return value if isinstance(value, str) else json.dumps(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: Callable[[Any], str] = format_value) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _front_matter(base_model: str, merged: bool) -> list[str]:
    lines = ["---", f"library_name: {'transformers' if merged else 'peft'}", "pipeline_tag: video-text-to-text"]
    # The Hub validates `base_model` as a repo id: a local folder path there would make the push fail.
    if _HUB_ID.match(base_model):
        lines.append(f"base_model: {base_model}")
    lines += ["tags:", "  - hpft", "  - nemotron_h_omni", "  - video", "  - token-reduction"]
    if not merged:
        lines.append("  - lora")
    return lines + ["---", ""]


def _metrics_section(metrics: Mapping[str, Any], step: int | None) -> list[str]:
    """Every numeric value of `metrics.json`, under its own key (reduced, unreduced, speed, loss, step)."""
    # `keep` is the setting, not a measurement (it is in the reduction table).
    rows = [(f"`{key}`", metrics[key]) for key in sorted(metrics) if _is_number(metrics[key]) and key != "keep"]
    if not rows:
        return []
    setting = f"schedule `{metrics.get('schedule')}`, keep {metrics.get('keep')}, scorer `{metrics.get('scorer')}`"
    measured_at = metrics.get("global_step")
    # An earlier checkpoint of the run can be exported: its card must not pass the final scores off as its own.
    note = (
        [f"These were measured at step {measured_at}; this export is the checkpoint of step {step}.", ""]
        if step is not None and measured_at is not None and measured_at != step
        else []
    )
    return [
        "### End of training (`metrics.json`)",
        "",
        *note,
        f"Validation of the training run under its reduction ({setting}); `*/acc_full` is the same model without "
        "reduction, `perf/prefill_speedup` the unreduced over the reduced prefill time measured in that run.",
        "",
        *_table(("metric", "value"), rows),
        "",
    ]


def _results_section(results: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """One row per `results.json` (an evaluation of this run): benchmark, setting and the measured figures."""
    if not results:
        return []
    header = ("file", "benchmark", "schedule", "scorer", "keep", "realised keep", "acc", "items scored", "prefill s")
    rows = [
        (
            f"`{name}`",
            r.get("benchmark"),
            r.get("schedule"),
            r.get("scorer"),
            r.get("keep"),
            r.get("realised_keep"),
            r.get("acc"),
            r.get("n_scored"),
            r.get("prefill_s"),
        )
        for name, r in results
    ]
    return [
        "### Benchmark evaluations (`results.json`)",
        "",
        "Evaluations found in the run folder; `acc` is a fraction in [0, 1], `prefill s` the mean decoder prefill "
        "time per item on the machine that ran it.",
        "",
        *_table(header, rows),
        "",
    ]


def _usage(name: str, base_model: str, merged: bool) -> list[str]:
    load = (
        f'model = AutoModelForImageTextToText.from_pretrained("{name}")'
        if merged
        else f'base = AutoModelForImageTextToText.from_pretrained("{base_model}")\n'
        f'model = PeftModel.from_pretrained(base, "{name}")  # or AutoModelForImageTextToText on this folder'
    )
    imports = "from transformers import AutoModelForImageTextToText" + (
        "" if merged else "\nfrom peft import PeftModel"
    )
    # hpft evaluates local folders: a Hub repo is downloaded first.
    folder = name.rsplit("/", 1)[-1]
    download = [f"hf download {name} --local-dir {folder}"] if "/" in name else []
    return [
        "## Usage",
        "",
        "With hpft the reduction above is applied by default (override any part on the command line):",
        "",
        "```bash",
        *download,
        f"python -m hpft.evaluate ckpt={folder}",
        f"python -m hpft.evaluate ckpt={folder} keep=0.5 schedule=uniform",
        "```",
        "",
        "Plain transformers runs the model without token reduction:",
        "",
        "```python",
        imports,
        "",
        load,
        "```",
        "",
    ]


def model_card(
    *,
    name: str,
    base_model: str,
    merged: bool,
    reduction: Mapping[str, Any],
    lora: Mapping[str, Any] | None = None,
    run: str | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    results: Sequence[tuple[str, Mapping[str, Any]]] = (),
) -> str:
    """The Markdown model card of an exported model.

    Args:
        name: how the card refers to the model (the Hub repo id when pushed, else the folder name).
        base_model: the base model's hub id or path (a hub id also goes into the card's metadata).
        merged: LoRA merged into the weights (True) or shipped as a PEFT adapter (False).
        reduction: the token-reduction settings (`ReductionConfig.as_dict()`, as in `reduction.json`).
        lora: the run's LoRA settings (`r`, `alpha`, `dropout`, `modules`), None for a full finetune.
        run: the training run's folder name.
        step: the optimiser step of the exported checkpoint.
        metrics: the run's `metrics.json`, None when it has none.
        results: `(file name relative to the run folder, results.json)` of evaluations of the run.

    Returns:
        The card's text (YAML front matter, then Markdown).
    """
    lines = _front_matter(base_model, merged)
    lines += [f"# {name.rsplit('/', 1)[-1]}", ""]
    origin = f"training run `{run}`" if run else "a training run"
    at_step = f" at step {step}" if step is not None else ""
    if lora:
        how = "merged into the weights" if merged else "kept as a PEFT adapter (with the trained projector)"
        finetune = f"LoRA (r={lora.get('r')}, alpha={lora.get('alpha')}, {lora.get('modules')} decoder modules) {how}"
    else:
        finetune = "full finetune of the decoder and projector"
    lines += [
        f"A `nemotron_h_omni` hybrid (Mamba + attention) video VLM finetuned with hpft from `{base_model}` under "
        "progressive, query-conditioned visual-token reduction inside the decoder.",
        "",
        f"Exported from {origin}{at_step}: {finetune}.",
        "",
        "## Token reduction (`reduction.json`)",
        "",
        "The setting the model was trained and evaluated with: `keep` is the mean over all decoder blocks of the "
        "fraction of visual tokens entering each block.",
        "",
        *_table(("setting", "value"), [(f"`{k}`", v) for k, v in reduction.items()], fmt=_setting),
        "",
        "## Measured scores",
        "",
    ]
    measured = _metrics_section(metrics or {}, step) + _results_section(results)
    lines += measured or ["No scores were measured for this run (no `metrics.json` or `results.json` found).", ""]
    lines += _usage(name, base_model, merged)
    return "\n".join(lines)
