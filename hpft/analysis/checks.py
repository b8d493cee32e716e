"""Validate a composed `conf/analyze.yaml` at startup and report every problem at once (exit code 2).

Two rounds, both before the model's weights load: the settings and the model's layer pattern (its
`config.json`), then the split's question file (enough videos, questions and needles for what was asked).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hpft.analysis.needles import video_of
from hpft.analysis.runner import AnalysisSettings, first_video_rows, probe_split
from hpft.analysis.sections import ProbeSettings
from hpft.config_builders import build_reduction
from hpft.config_checks import ConfigError, _cause, _model_config
from hpft.reduction.adapters.nemotron_h import MIXING_KINDS, block_kinds
from hpft.reduction.config import ReductionConfig

PARTS = ("train", "val", "test")


class AnalyzeConfigError(ConfigError):
    """Every problem found in a composed `conf/analyze.yaml`, as one message (with the analyze command in the fix)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        text = str(self.args[0]).replace("python -m hpft.train keep=0.25", "python -m hpft.analyze probe.cut_block=0")
        self.args = (text.replace("python -m hpft.train", "python -m hpft.analyze"),)


def _int(cfg: DictConfig, key: str, low: int, problems: list[str], optional: bool = False) -> int | None:
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        problems.append(f"{key}={value!r} must be an integer >= {low}" + (", or null" if optional else ""))
        return None
    return value


def _float(cfg: DictConfig, key: str, low: float, problems: list[str], strict: bool = True) -> float | None:
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value > low if strict else value >= low)
    if not ok:
        problems.append(f"{key}={value!r} must be a number {'>' if strict else '>='} {low}")
        return None
    return float(value)


def _fractions(cfg: DictConfig, key: str, problems: list[str]) -> tuple[float, ...] | None:
    values = OmegaConf.select(cfg, key)
    values = list(values) if OmegaConf.is_list(values) or isinstance(values, list | tuple) else None
    if not values or any(not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v <= 1 for v in values):
        problems.append(f"{key}={OmegaConf.select(cfg, key)!r} must be a non-empty list of numbers in (0, 1]")
        return None
    return tuple(float(v) for v in values)


def check_settings(cfg: DictConfig) -> tuple[AnalysisSettings | None, ReductionConfig | None, Any, list[str]]:
    """Check the analysis keys, the scorer and the model's layer pattern (reads `config.json`, no weights).

    Returns:
        `(settings or None, scorer settings as a ReductionConfig or None, model config or None, problems)`.
    """
    problems: list[str] = []
    values = {
        "num_videos": _int(cfg, "num_videos", 1, problems),
        "num_items": _int(cfg, "num_items", 1, problems, optional=True),
        "batch_size": _int(cfg, "batch_size", 1, problems),
        "masses": _fractions(cfg, "sparsity.masses", problems),
        "top_fractions": _fractions(cfg, "stability.top_fractions", problems),
        "cut_block": _int(cfg, "probe.cut_block", 0, problems),
        "train_size": _int(cfg, "probe.train_size", 1, problems),
        "test_size": _int(cfg, "probe.test_size", 1, problems),
        "seed": _int(cfg, "seed", 0, problems),
        "progress": bool(cfg.get("progress", True)),
    }
    probe = {
        "steps": _int(cfg, "probe.steps", 1, problems),
        "lr": _float(cfg, "probe.lr", 0.0, problems),
        "l2": _float(cfg, "probe.l2", 0.0, problems, strict=False),
        "centre": bool(OmegaConf.select(cfg, "probe.centre", default=True)),
    }
    if cfg.get("split") not in PARTS:
        problems.append(f"split={cfg.get('split')!r} must be one of {list(PARTS)} (a part of the data config)")
    reduction = None
    try:
        reduction = build_reduction({"name": "none", "keep": 1.0}, instantiate(cfg.scorer))
    except (InstantiationException, ValueError, TypeError) as err:
        problems.append(f"scorer: {_cause(err)}")
    model_config, model_problems = _model_config(cfg)
    problems += model_problems
    if model_config is not None:
        problems += check_layer_pattern(model_config, values["cut_block"])
    settings = None if problems else AnalysisSettings(**values, probe=ProbeSettings(**probe))
    return settings, reduction, model_config, problems


def check_layer_pattern(model_config: Any, cut_block: int | None) -> list[str]:
    """The model needs an attention block, and the probe's cut must follow a token-mixing block that has a successor."""
    text_config = getattr(model_config, "text_config", model_config)
    try:
        kinds = block_kinds(text_config)
    except (ValueError, AttributeError) as err:
        return [f"model: cannot read the decoder's layer pattern ({err})"]
    problems = []
    if "attention" not in kinds:
        problems.append(
            f"the model has no attention block (pattern {kinds}); the analysis compares attention and Mamba blocks"
        )
    if cut_block is not None:
        mixing = [b for b, kind in enumerate(kinds[:-1]) if kind in MIXING_KINDS]
        if cut_block >= len(kinds):
            why = f"out of range for a decoder of {len(kinds)} blocks"
        elif cut_block == len(kinds) - 1:
            why = "the last block leaves no later block to carry anything"
        elif kinds[cut_block] not in MIXING_KINDS:
            why = (
                f"block {cut_block} is a {kinds[cut_block]} block; the engine cuts only after attention or Mamba blocks"
            )
        else:
            why = None
        if why:
            problems.append(f"probe.cut_block={cut_block}: {why}; choose one of {mixing}")
    return problems


def check_rows(
    rows: Sequence[dict], settings: AnalysisSettings, num_frames: int, tokens_per_tubelet: int, temporal_patch: int
) -> list[str]:
    """Whether the split's rows hold what the settings ask for (videos, questions, needles, whole videos)."""
    problems = []
    indices = first_video_rows(rows, settings.num_videos)
    videos = {video_of(rows[i]) for i in indices}
    if settings.num_items is not None and settings.num_items > len(indices):
        problems.append(
            f"num_items={settings.num_items} but the first {len(videos)} video(s) of the split hold only "
            f"{len(indices)} questions; raise num_videos or lower num_items"
        )
    missing = [rows[i]["id"] for i in indices if "needle" not in rows[i]]
    if missing:
        problems.append(
            f"{len(missing)} question(s) have no `needle` record (e.g. {missing[0]}); the analysis needs the synthetic "
            "needle data (data=needle or data=needle_fixture)"
        )
        return problems
    frames = {int(rows[i].get("num_frames", num_frames)) for i in indices}
    if frames != {num_frames}:
        problems.append(
            f"num_frames={num_frames} but the videos have {sorted(frames)} frames; the probe maps needles to tokens "
            "only when every frame is read: set num_frames to the videos' frame count"
        )
    try:
        examples, train, test = probe_split(rows, indices, tokens_per_tubelet, temporal_patch, settings)
    except ValueError as err:
        return problems + [f"probe: {err}"]
    if len(train) < settings.train_size or len(test) < settings.test_size:
        problems.append(
            f"probe.train_size={settings.train_size} + probe.test_size={settings.test_size} needles, on disjoint "
            f"videos, but the first {len(videos)} video(s) hold {len(examples)} needles (split {len(train)} + "
            f"{len(test)}); raise num_videos or lower the probe sizes"
        )
    return problems
