"""`ReductionConfig`: which schedule, which budget, which scorer — validated once, at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hpft.reduction.schedule import SCHEDULES, make_schedule
from hpft.reduction.scoring import MAMBA_NORMALIZATIONS


@dataclass(frozen=True)
class ScorerSpec:
    """What a scorer name means: which block kinds it cuts after and how it scores each kind.

    `attention`/`mamba` name the score used after that kind of block: `attention` (question-to-visual
    attention), `implicit` (Mamba-2 implicit attention), or a query-agnostic baseline (`random`, `norm`,
    `mean_pool`); None means no cut after that kind of block.
    """

    attention: str | None
    mamba: str | None
    decay: bool = False


SCORERS: dict[str, ScorerSpec] = {
    "unified": ScorerSpec(attention="attention", mamba="implicit"),
    "unified_decay": ScorerSpec(attention="attention", mamba="implicit", decay=True),
    "attention_only": ScorerSpec(attention="attention", mamba=None),
    "mamba_only": ScorerSpec(attention=None, mamba="implicit"),
    "random": ScorerSpec(attention="random", mamba="random"),
    "norm": ScorerSpec(attention="norm", mamba="norm"),
    "mean_pool": ScorerSpec(attention="mean_pool", mamba="mean_pool"),
}
QUERY_AGNOSTIC = ("random", "norm", "mean_pool")

# Keyword parameters that belong to the scorer; every other keyword is a schedule parameter.
_SCORER_PARAMS = ("decay", "use_dt", "normalize", "seed")


@dataclass(frozen=True, init=False)
class ReductionConfig:
    """A token-reduction setting: schedule shape, budget and scorer.

    Args:
        schedule: one of `SCHEDULES` (`none`, `low_to_high`, `uniform`, `high_to_low`, `one_shot`, `step`,
            `sigmoid`).
        keep: mean over all decoder blocks of the fraction of visual tokens entering each block, in (0, 1].
        scorer: one of `SCORERS`.
        min_tokens: never keep fewer visual tokens than this in any block.
        **params: schedule parameters (`p`, `r_min`, `k`, `stages`, `kappa`, ...) and scorer parameters
            (`decay`: keep the SSM decay in the Mamba score, `use_dt`: weight by dt (default True),
            `normalize`: `abs_sum` (default) or `softmax`, `seed`: for the `random` scorer).

    Raises:
        ValueError: naming every invalid field at once.
    """

    schedule: str
    keep: float
    scorer: str
    min_tokens: int
    schedule_params: dict[str, Any] = field(default_factory=dict)
    decay: bool = False
    use_dt: bool = True
    normalize: str = "abs_sum"
    seed: int = 0

    def __init__(
        self,
        schedule: str = "low_to_high",
        keep: float = 0.25,
        scorer: str = "unified",
        min_tokens: int = 1,
        **params: Any,
    ) -> None:
        scorer_params = {k: params.pop(k) for k in _SCORER_PARAMS if k in params}
        spec = SCORERS.get(scorer)
        values = dict(
            schedule=schedule,
            keep=keep,
            scorer=scorer,
            min_tokens=min_tokens,
            schedule_params=dict(params),
            decay=bool(scorer_params.get("decay", spec.decay if spec else False)),
            use_dt=bool(scorer_params.get("use_dt", True)),
            normalize=scorer_params.get("normalize", "abs_sum"),
            seed=int(scorer_params.get("seed", 0)),
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self._validate()

    def _validate(self) -> None:
        problems = []
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} is unknown; choose one of {list(SCHEDULES)}")
        if not isinstance(self.keep, int | float) or isinstance(self.keep, bool) or not 0 < self.keep <= 1:
            problems.append(f"keep={self.keep!r} must be a number in (0, 1] (the mean fraction of visual tokens kept)")
        elif isinstance(self.keep, float) and math.isnan(self.keep):
            problems.append("keep=nan must be a number in (0, 1]")
        if self.scorer not in SCORERS:
            problems.append(f"scorer={self.scorer!r} is unknown; choose one of {list(SCORERS)}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 1:
            problems.append(f"min_tokens={self.min_tokens!r} must be an integer >= 1")
        if self.normalize not in MAMBA_NORMALIZATIONS:
            problems.append(f"normalize={self.normalize!r} must be one of {list(MAMBA_NORMALIZATIONS)}")
        if not problems and self.schedule != "none":
            try:  # unknown schedule parameters and bad values are reported by the schedule itself
                make_schedule(self.schedule, self.keep, 1000, **self.schedule_params)
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise ValueError("invalid reduction config:\n  - " + "\n  - ".join(problems))

    @property
    def spec(self) -> ScorerSpec:
        """The scorer's meaning (which kinds cut, which score each uses)."""
        return SCORERS[self.scorer]

    @property
    def active(self) -> bool:
        """False when nothing is ever cut (`schedule=none` or `keep=1`)."""
        return self.schedule != "none" and self.keep < 1.0

    def cut_after(self, kinds: list[str]) -> list[bool]:
        """For each block kind, whether this scorer cuts right after such a block."""
        spec = self.spec
        return [
            (kind == "attention" and spec.attention is not None) or (kind == "mamba" and spec.mamba is not None)
            for kind in kinds
        ]

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready view (for `reduction.json`, W&B config and logs)."""
        return dict(
            schedule=self.schedule,
            keep=self.keep,
            scorer=self.scorer,
            min_tokens=self.min_tokens,
            decay=self.decay,
            use_dt=self.use_dt,
            normalize=self.normalize,
            seed=self.seed,
            **self.schedule_params,
        )
