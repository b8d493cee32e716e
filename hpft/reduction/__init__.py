"""Progressive, query-conditioned visual-token reduction inside every block of a hybrid decoder.

Public API (kept stable): `ReductionConfig`, `make_schedule`, `reduced_forward`.
"""

from hpft.reduction.config import SCORERS, ReductionConfig
from hpft.reduction.engine import ReducedOutput, decode_step, plan_counts, reduced_forward, reduced_generate
from hpft.reduction.schedule import SCHEDULES, make_schedule, schedule_counts
from hpft.reduction.vlm import reduced_vlm_forward

__all__ = [
    "SCHEDULES",
    "SCORERS",
    "ReducedOutput",
    "ReductionConfig",
    "decode_step",
    "make_schedule",
    "plan_counts",
    "reduced_forward",
    "reduced_generate",
    "reduced_vlm_forward",
    "schedule_counts",
]
