"""Progressive reduction schedules: how many of the original visual tokens enter each decoder block.

A schedule maps a block index ``b`` in ``[0, L)`` to ``r(b)``, the fraction of the *original* visual
tokens that enter block ``b``. Every schedule obeys ``r(0) = 1``, is non-increasing and never goes below
``r_min``. The budget ``keep`` is the mean of ``r(b)`` over all ``L`` blocks (MLP/MoE blocks included,
because they cost compute too).

Each family has exactly one free scale (a decay rate, a ratio or an offset). The mean of ``r`` is monotone
in that scale, so one shared bisection (:func:`_bisect`) solves it, in two settings:

* :func:`make_schedule` — the smooth curve whose mean equals ``keep`` (within ``KEEP_TOL``);
* :func:`schedule_counts` — the whole-token counts a model can really run. Cuts only happen right after
  token-mixing blocks, counts are rounded to whole tokens, and both make the realised keep a step function
  of the scale; the scale is solved again against :func:`counts_from_ratios` so that the *realised* keep
  matches ``keep`` (within ``REALISED_TOL`` where the token resolution allows).

Families (``x = b / L``):

=============== ================================================================ =====================
name            r(b)                                                             free scale
=============== ================================================================ =====================
``none``        ``1`` (baseline; ``keep`` is ignored)                            —
``low_to_high`` ``max(r_min, exp(-lam * x**p))``, ``p > 1`` (default 2)          ``lam >= 0``
``uniform``     same with ``p = 1`` (geometric decay)                            ``lam >= 0``
``high_to_low`` same with ``0 < p < 1`` (default 0.5)                            ``lam >= 0``
``one_shot``    ``1`` for ``b < k`` (default 2), then ``rho`` (FastV-like)       ``rho in [r_min, 1]``
``step``        ``max(r_min, rho**stage)``, ``stage = floor(b * S / L)``         ``rho in [0, 1]``
``sigmoid``     ``r_min + (1 - r_min) * sig(kappa*(tau - x)) / sig(kappa*tau)``  ``tau``
=============== ================================================================ =====================

Everything here is pure Python (``math`` only): values in, values out, no I/O, no torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

SCHEDULES: tuple[str, ...] = ("none", "low_to_high", "uniform", "high_to_low", "one_shot", "step", "sigmoid")

KEEP_TOL = 1e-3
"""Largest allowed ``|mean(r) - keep|`` for :func:`make_schedule` (bisection reaches ~1e-9 in practice)."""

REALISED_TOL = 0.01
"""Largest allowed ``|realised_keep - keep|`` for :func:`schedule_counts` where the tokens allow it."""

_BISECT_ITERS = 100
# A fixed number of halvings rather than a tolerance loop: it always terminates, and 100 halvings shrink
# any bracket used here (at most ~1e20 wide) far below float resolution of the mean.


@dataclass(frozen=True)
class ScheduleCounts:
    """Whole-token visual counts a model really runs under a schedule.

    Attributes:
        counts: ``[L]`` visual tokens entering each block ``b``; ``counts[0] == num_visual``, non-increasing.
        realised_keep: mean over blocks of ``counts[b] / num_visual``.
    """

    counts: list[int]
    realised_keep: float


Params = Mapping[str, float]
RatioFn = Callable[[float, int, Params], list[float]]


@dataclass(frozen=True)
class _Family:
    """One schedule family: its curve, where its free scale lives, and which parameters it takes.

    Attributes:
        ratios: ``(scale, L, params) -> [L]`` the curve ``r(b)`` for one value of the free scale.
        bracket: ``(L, params) -> (lo, hi)`` the interval the free scale is searched in.
        increasing: whether the mean of ``r`` grows with the scale (``False``: it shrinks).
        defaults: user-settable parameters and their defaults (``r_min`` is in every family).
        fixed: parameters the family pins and the user may not set (``uniform``'s ``p = 1``).
        check: ``(L, params) -> problems`` validates family-specific parameters.
        hint: how to reach a smaller keep with this family, used in error messages.
    """

    ratios: RatioFn
    bracket: Callable[[int, Params], tuple[float, float]]
    increasing: bool
    defaults: dict[str, float] = field(default_factory=dict)
    fixed: dict[str, float] = field(default_factory=dict)
    check: Callable[[int, Params], list[str]] = lambda num_blocks, params: []
    hint: str = ""


# ---------------------------------------------------------------------------------------------- curves


def _flat(scale: float, num_blocks: int, params: Params) -> list[float]:
    return [1.0] * num_blocks


def _power_decay(lam: float, num_blocks: int, params: Params) -> list[float]:
    p, r_min = params["p"], params["r_min"]
    # r(0) is written as 1.0 rather than computed so the rule r(0) = 1 holds bit-exactly.
    return [1.0] + [max(r_min, math.exp(-lam * (b / num_blocks) ** p)) for b in range(1, num_blocks)]


def _one_shot(rho: float, num_blocks: int, params: Params) -> list[float]:
    k, r_min = int(params["k"]), params["r_min"]
    return [1.0] * k + [max(r_min, rho)] * (num_blocks - k)


def _step(rho: float, num_blocks: int, params: Params) -> list[float]:
    stages, r_min = int(params["stages"]), params["r_min"]
    # 0.0 ** 0 == 1.0, so stage 0 keeps every token even at the bracket end rho = 0.
    return [max(r_min, rho ** (b * stages // num_blocks)) for b in range(num_blocks)]


def _log_sigmoid(z: float) -> float:
    # Split by sign so exp() never overflows: kappa * tau reaches +-1000 at the bracket ends.
    if z >= 0:
        return -math.log1p(math.exp(-z))
    return z - math.log1p(math.exp(z))


def _sigmoid(tau: float, num_blocks: int, params: Params) -> list[float]:
    kappa, r_min = params["kappa"], params["r_min"]
    # The ratio sig(a)/sig(c) is taken in log space: for tau -> -inf both terms underflow to 0 while
    # their ratio tends to exp(-kappa * x), the family's true limit.
    log_norm = _log_sigmoid(kappa * tau)
    return [1.0] + [
        r_min + (1.0 - r_min) * math.exp(_log_sigmoid(kappa * (tau - b / num_blocks)) - log_norm)
        for b in range(1, num_blocks)
    ]


# ------------------------------------------------------------------------------------ parameter checks


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_r_min(num_blocks: int, params: Params) -> list[str]:
    r_min = params["r_min"]
    if not _is_real(r_min) or not 0.0 <= r_min < 1.0:
        return [f"r_min={r_min!r} must be a real number in [0, 1)"]
    return []


def _check_low_to_high(num_blocks: int, params: Params) -> list[str]:
    p = params["p"]
    if not _is_real(p) or p <= 1.0:
        return [f"p={p!r} must be > 1 for 'low_to_high'; use 'uniform' for p = 1 or 'high_to_low' for p < 1"]
    return []


def _check_high_to_low(num_blocks: int, params: Params) -> list[str]:
    p = params["p"]
    if not _is_real(p) or not 0.0 < p < 1.0:
        return [f"p={p!r} must be in (0, 1) for 'high_to_low'; use 'uniform' for p = 1 or 'low_to_high' for p > 1"]
    return []


def _check_one_shot(num_blocks: int, params: Params) -> list[str]:
    k = params["k"]
    if not _is_int(k) or not 1 <= k < num_blocks:
        return [f"k={k!r} must be an integer in [1, {num_blocks}) (num_blocks={num_blocks})"]
    return []


def _check_step(num_blocks: int, params: Params) -> list[str]:
    stages = params["stages"]
    if not _is_int(stages) or not 1 <= stages <= num_blocks:
        return [f"stages={stages!r} must be an integer in [1, {num_blocks}] (num_blocks={num_blocks})"]
    return []


def _check_sigmoid(num_blocks: int, params: Params) -> list[str]:
    kappa = params["kappa"]
    if not _is_real(kappa) or kappa <= 0.0:
        return [f"kappa={kappa!r} must be a real number > 0"]
    return []


# ----------------------------------------------------------------------------------------------- table


def _lam_bracket(num_blocks: int, params: Params) -> tuple[float, float]:
    # At lam = 800 * L**p, exp(-lam * (1/L)**p) = exp(-800) underflows to 0: every block after the first is
    # at r_min, which is the family's infimum, so the bracket end is its true minimum keep.
    return 0.0, 800.0 * float(num_blocks) ** params["p"]


def _tau_bracket(num_blocks: int, params: Params) -> tuple[float, float]:
    # kappa * tau in [-1000, 1000] saturates the sigmoid for any kappa; with the default kappa = 20 this is
    # tau in [-50, 50].
    half = 1000.0 / params["kappa"]
    return -half, half


_FAMILIES: dict[str, _Family] = {
    "none": _Family(ratios=_flat, bracket=lambda n, q: (1.0, 1.0), increasing=True, defaults={"r_min": 0.0}),
    "low_to_high": _Family(
        ratios=_power_decay,
        bracket=_lam_bracket,
        increasing=False,
        defaults={"r_min": 0.0, "p": 2.0},
        check=_check_low_to_high,
        hint="a smaller p, 'uniform' or 'high_to_low'",
    ),
    "uniform": _Family(
        ratios=_power_decay,
        bracket=_lam_bracket,
        increasing=False,
        defaults={"r_min": 0.0},
        fixed={"p": 1.0},
        hint="'high_to_low'",
    ),
    "high_to_low": _Family(
        ratios=_power_decay,
        bracket=_lam_bracket,
        increasing=False,
        defaults={"r_min": 0.0, "p": 0.5},
        check=_check_high_to_low,
        hint="a smaller p",
    ),
    "one_shot": _Family(
        ratios=_one_shot,
        bracket=lambda n, q: (q["r_min"], 1.0),
        increasing=True,
        defaults={"r_min": 0.0, "k": 2},
        check=_check_one_shot,
        hint="a smaller k",
    ),
    "step": _Family(
        ratios=_step,
        bracket=lambda n, q: (0.0, 1.0),
        increasing=True,
        defaults={"r_min": 0.0, "stages": 4},
        check=_check_step,
        hint="more stages",
    ),
    "sigmoid": _Family(
        ratios=_sigmoid,
        bracket=_tau_bracket,
        increasing=True,
        defaults={"r_min": 0.0, "kappa": 20.0},
        check=_check_sigmoid,
        hint="a larger kappa or 'low_to_high'",
    ),
}
assert tuple(_FAMILIES) == SCHEDULES  # the public tuple and the table must never drift apart


# --------------------------------------------------------------------------------------------- helpers


def _check_keep(keep: object) -> list[str]:
    # bool is an int subclass: keep=True would silently mean 1.0, so it is rejected explicitly.
    if not _is_real(keep) or not 0.0 < keep <= 1.0:
        return [f"keep={keep!r} must be a real number in (0, 1] (the mean fraction of visual tokens kept)"]
    return []


def _resolve(name: str, keep: float, num_blocks: int, params: Mapping[str, object]) -> tuple[_Family, dict]:
    """Validates every argument, reports all problems at once, and returns the family and its full params."""
    problems = _check_keep(keep)
    if not _is_int(num_blocks) or num_blocks < 1:
        problems.append(f"num_blocks={num_blocks!r} must be an integer >= 1")
        num_blocks = 1  # lets the family checks below still run and report their own problems
    family = _FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        problems.append(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
        raise ValueError("invalid schedule: " + "; ".join(problems))
    unknown = sorted(set(params) - set(family.defaults))
    if unknown:
        problems.append(
            f"unknown parameter(s) {', '.join(unknown)} for schedule {name!r}; "
            f"accepted: {', '.join(sorted(family.defaults))}"
        )
    full = {**family.defaults, **{k: v for k, v in params.items() if k in family.defaults}, **family.fixed}
    problems += _check_r_min(num_blocks, full) + family.check(num_blocks, full)
    if problems:
        raise ValueError(f"invalid schedule {name!r}: " + "; ".join(problems))
    return family, full


def _bisect(value_of: Callable[[float], float], target: float, lo: float, hi: float, increasing: bool) -> float:
    """Finds the scale in ``[lo, hi]`` whose monotone value is closest to ``target``.

    Works for continuous values (the smooth mean) and for step functions (the realised keep of whole-token
    counts): the loop keeps ``target`` between the values at ``lo`` and ``hi``, and the end compares both
    sides of the final bracket, since on a step function either side may be the closer one.

    Args:
        value_of: monotone function of the scale.
        target: the value wanted.
        lo: lower end of the scale bracket.
        hi: upper end of the scale bracket.
        increasing: whether ``value_of`` grows with the scale.

    Returns:
        The scale (one of the final bracket ends) whose value is closest to ``target``.
    """
    for _ in range(_BISECT_ITERS):
        mid = 0.5 * (lo + hi)
        if (value_of(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda s: abs(value_of(s) - target))


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _fmt_params(params: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(params.items()))


# ---------------------------------------------------------------------------------------------- public


def make_schedule(name: str, keep: float, num_blocks: int, **params: float) -> list[float]:
    """Builds the smooth schedule ``r(b)`` of a family whose mean over the blocks equals ``keep``.

    ``none`` is the unreduced baseline: it returns all ones whatever ``keep`` is (its realised keep is
    1.0), though ``keep`` is still validated. ``keep == 1.0`` gives all ones for every family.

    Args:
        name: one of :data:`SCHEDULES`.
        keep: budget, the mean of ``r(b)`` over all blocks, in ``(0, 1]``.
        num_blocks: ``L``, the number of decoder blocks (all kinds), ``>= 1``.
        **params: family parameters: ``r_min`` (all, default 0, in ``[0, 1)``); ``p`` (``low_to_high``,
            default 2, ``> 1``; ``high_to_low``, default 0.5, in ``(0, 1)``); ``k`` (``one_shot``, default 2,
            in ``[1, L)``); ``stages`` (``step``, default 4, in ``[1, L]``); ``kappa`` (``sigmoid``,
            default 20, ``> 0``).

    Returns:
        ``[L]`` fractions ``r(b)``: ``r(0) == 1``, non-increasing, ``>= r_min``,
        ``|mean(r) - keep| <= KEEP_TOL``.

    Raises:
        ValueError: an invalid argument (every problem is listed), or a ``keep`` below the smallest mean
            this family can reach for this ``L`` and these parameters (the message gives that minimum).
    """
    family, full = _resolve(name, keep, num_blocks, params)
    if name == "none" or keep == 1.0:
        return [1.0] * num_blocks

    lo, hi = family.bracket(num_blocks, full)

    def mean_at(scale: float) -> float:
        return _mean(family.ratios(scale, num_blocks, full))

    least = mean_at(lo if family.increasing else hi)
    if keep < least - KEEP_TOL:
        raise ValueError(
            f"schedule {name!r} cannot reach keep={keep:g} with num_blocks={num_blocks} "
            f"({_fmt_params(full)}): the minimum reachable keep is {least:.4f}, because r(0) = 1 and "
            f"r(b) >= r_min. Use a keep >= {least:.4f}, more blocks, a lower r_min, or {family.hint}."
        )
    return family.ratios(_bisect(mean_at, keep, lo, hi, family.increasing), num_blocks, full)


def counts_from_ratios(
    ratios: Sequence[float], cut_after: Sequence[bool], num_visual: int, min_tokens: int = 1
) -> ScheduleCounts:
    """Turns a schedule into the whole-token visual counts a block pattern can really run.

    Only token-mixing blocks produce scores, so a cut can only happen right after them; any other block
    (MLP/MoE) keeps whatever its predecessor kept. For ``b >= 1``::

        counts[b] = min(counts[b-1], max(min_tokens, round(ratios[b] * num_visual)))  if cut_after[b-1]
        counts[b] = counts[b-1]                                                        otherwise

    ``round`` is Python's (ties to even). ``min_tokens`` is clamped to ``num_visual``.

    Args:
        ratios: ``[L]`` fractions ``r(b)`` of the original visual tokens, each in ``[0, 1]``;
            ``ratios[0]`` is ignored (all tokens enter block 0).
        cut_after: ``[L]`` whether a cut may happen after block ``b`` (sets the count entering ``b + 1``).
        num_visual: number of visual tokens entering block 0, ``>= 1``.
        min_tokens: fewest visual tokens any block may receive, ``>= 1``.

    Returns:
        The counts ``[L]`` (``counts[0] == num_visual``, non-increasing) and their realised keep.

    Raises:
        ValueError: lengths differ or are 0, ``num_visual < 1``, ``min_tokens < 1``, or a ratio outside
            ``[0, 1]``.
    """
    problems = []
    if len(ratios) != len(cut_after) or len(ratios) == 0:
        problems.append(
            f"ratios (len {len(ratios)}) and cut_after (len {len(cut_after)}) must have the same length >= 1 "
            "(one entry per decoder block)"
        )
    if not _is_int(num_visual) or num_visual < 1:
        problems.append(f"num_visual={num_visual!r} must be an integer >= 1")
    if not _is_int(min_tokens) or min_tokens < 1:
        problems.append(f"min_tokens={min_tokens!r} must be an integer >= 1")
    bad = [b for b, r in enumerate(ratios) if not (_is_real(r) and 0.0 <= r <= 1.0)]
    if bad:
        problems.append(f"ratios at blocks {bad} must be real numbers in [0, 1]")
    if problems:
        raise ValueError("invalid counts request: " + "; ".join(problems))

    counts = [num_visual]
    for b in range(1, len(ratios)):
        if cut_after[b - 1]:
            # The min with the previous count also clamps a min_tokens above num_visual to num_visual.
            counts.append(min(counts[-1], max(min_tokens, round(ratios[b] * num_visual))))
        else:
            counts.append(counts[-1])
    return ScheduleCounts(counts=counts, realised_keep=sum(counts) / (len(counts) * num_visual))


def schedule_counts(
    name: str,
    keep: float,
    cut_after: Sequence[bool],
    num_visual: int,
    min_tokens: int = 1,
    **params: float,
) -> ScheduleCounts:
    """Solves a family's free scale so that the whole-token counts of a block pattern realise ``keep``.

    Holding counts through non-mixing blocks and rounding to whole tokens shifts the realised keep away
    from the smooth mean, so the scale is solved directly against :func:`counts_from_ratios`. The realised
    keep is a monotone step function of the scale; the closest step to ``keep`` is returned. It is within
    ``REALISED_TOL`` of ``keep`` whenever the token resolution (``1 / (num_visual * L)`` per token and block)
    and the pattern allow. ``none`` (and ``keep == 1.0``) gives ``num_visual`` tokens in every block.

    Args:
        name: one of :data:`SCHEDULES`.
        keep: budget, the wanted realised keep, in ``(0, 1]``.
        cut_after: ``[L]`` whether a cut may happen after block ``b`` (True after token-mixing blocks).
        num_visual: visual tokens entering block 0, ``>= 1``.
        min_tokens: fewest visual tokens any block may receive, ``>= 1``.
        **params: family parameters, as for :func:`make_schedule`.

    Returns:
        Counts ``[L]`` with ``counts[0] == num_visual``, non-increasing, and their realised keep.

    Raises:
        ValueError: an invalid argument, or a ``keep`` more than ``REALISED_TOL`` below the smallest
            realised keep this family reaches on this pattern (the message gives that minimum).
    """
    num_blocks = len(cut_after)
    family, full = _resolve(name, keep, num_blocks, params)
    if name == "none" or keep == 1.0:
        return counts_from_ratios([1.0] * num_blocks, cut_after, num_visual, min_tokens)

    lo, hi = family.bracket(num_blocks, full)

    def realised_at(scale: float) -> float:
        ratios = family.ratios(scale, num_blocks, full)
        return counts_from_ratios(ratios, cut_after, num_visual, min_tokens).realised_keep

    aggressive = lo if family.increasing else hi
    least = realised_at(aggressive)
    if keep < least - REALISED_TOL:
        most = counts_from_ratios(family.ratios(aggressive, num_blocks, full), cut_after, num_visual, min_tokens)
        full_blocks = next((b for b, c in enumerate(most.counts) if c < num_visual), num_blocks)
        cuts = [b for b, c in enumerate(cut_after[:-1]) if c]
        raise ValueError(
            f"schedule {name!r} cannot reach keep={keep:g} on this block pattern (L={num_blocks}, "
            f"num_visual={num_visual}, min_tokens={min_tokens}, {_fmt_params(full)}): the minimum realised "
            f"keep is {least:.4f}. Even at its most aggressive setting the first {full_blocks} block(s) see "
            f"every visual token, because cuts may only follow token-mixing blocks (here after blocks {cuts}). "
            f"Use a keep >= {least:.4f}, allow cuts after earlier blocks (e.g. after Mamba blocks too), "
            f"a lower min_tokens or r_min, or {family.hint}."
        )
    scale = _bisect(realised_at, keep, lo, hi, family.increasing)
    return counts_from_ratios(family.ratios(scale, num_blocks, full), cut_after, num_visual, min_tokens)
