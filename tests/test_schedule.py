"""Tests for the progressive reduction schedules: shape rules, budgets, whole-token counts and errors."""

import math

import pytest

from hpft.reduction.schedule import (
    SCHEDULES,
    ScheduleCounts,
    counts_from_ratios,
    make_schedule,
    schedule_counts,
)

REDUCING = [name for name in SCHEDULES if name != "none"]

# Block patterns in the transformers NemotronH notation: M = Mamba-2, * = attention, - = MLP, E = MoE.
# Cuts may only follow token-mixing blocks (M and *).
PATTERN_6 = "M*-M*-"
PATTERN_12 = "M-M*-M-M*-M-"
PATTERN_24 = "MEMEM*EMEMEM*EMEMEM*EME-"


def _cuts(pattern: str, mixers: str = "M*") -> list[bool]:
    return [kind in mixers for kind in pattern]


def _smooth_floor(name: str, num_blocks: int, r_min: float) -> float:
    """Smallest mean of r each family can reach, derived by hand (an oracle independent of the solver)."""
    if name in ("low_to_high", "uniform", "high_to_low"):
        return (1 + (num_blocks - 1) * r_min) / num_blocks  # r(0) = 1, every later block at r_min
    if name == "one_shot":
        return (2 + (num_blocks - 2) * r_min) / num_blocks  # default k = 2 blocks at 1
    if name == "step":
        first_stage = math.ceil(num_blocks / 4)  # default 4 stages; stage 0 is b < L/4
        return (first_stage + (num_blocks - first_stage) * r_min) / num_blocks
    if name == "sigmoid":
        # tau -> -inf: sig(kappa(tau - x)) / sig(kappa tau) -> exp(-kappa x), default kappa = 20.
        return sum(r_min + (1 - r_min) * math.exp(-20 * b / num_blocks) for b in range(num_blocks)) / num_blocks
    raise AssertionError(name)


def _pattern_floor(name: str, cut_after: list[bool], num_visual: int) -> float:
    """Smallest realised keep of one_shot/step/power families on a pattern: the blocks each family forces
    to full tokens, extended to the first block that a cut can reach, then one token everywhere after."""
    num_blocks = len(cut_after)
    forced = {"one_shot": 2, "step": math.ceil(num_blocks / 4)}.get(name, 1)
    first_cut = next((b for b in range(forced, num_blocks) if cut_after[b - 1]), num_blocks)
    return (first_cut * num_visual + (num_blocks - first_cut)) / (num_blocks * num_visual)


def _assert_schedule_rules(r: list[float], num_blocks: int, r_min: float) -> None:
    assert len(r) == num_blocks
    assert r[0] == 1.0
    assert all(a >= b for a, b in zip(r, r[1:])), "schedule must be non-increasing"
    assert min(r) >= r_min


# ---------------------------------------------------------------------------------------- make_schedule


@pytest.mark.parametrize("num_blocks", [12, 24, 52])
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("r_min", [0.0, 0.05])
def test_make_schedule_rules_and_budget(name, keep, num_blocks, r_min):
    if name != "none" and keep < _smooth_floor(name, num_blocks, r_min) - 1e-3:
        with pytest.raises(ValueError, match="minimum reachable keep"):
            make_schedule(name, keep, num_blocks, r_min=r_min)
        return
    r = make_schedule(name, keep, num_blocks, r_min=r_min)
    _assert_schedule_rules(r, num_blocks, r_min)
    if name == "none" or keep == 1.0:
        assert r == [1.0] * num_blocks
    else:
        assert abs(sum(r) / num_blocks - keep) <= 1e-3


@pytest.mark.parametrize("name", SCHEDULES)
def test_default_cases_that_must_be_reachable(name):
    # Guards the test above against silently skipping everything via the floor oracle.
    for num_blocks in (24, 52):
        r = make_schedule(name, 0.25, num_blocks)
        expected = 1.0 if name == "none" else 0.25
        assert sum(r) / num_blocks == pytest.approx(expected, abs=1e-6)


def test_low_to_high_cuts_late_and_high_to_low_cuts_early():
    num_blocks = 24
    lth = make_schedule("low_to_high", 0.5, num_blocks)
    uni = make_schedule("uniform", 0.5, num_blocks)
    htl = make_schedule("high_to_low", 0.5, num_blocks)
    quarter = num_blocks // 4
    assert lth[quarter] > uni[quarter] > htl[quarter]
    assert lth[-1] < uni[-1] < htl[-1]


def test_uniform_is_geometric():
    r = make_schedule("uniform", 0.3, 12)
    ratios = [b / a for a, b in zip(r, r[1:])]
    assert max(ratios) - min(ratios) < 1e-12


def test_one_shot_and_step_shapes():
    r = make_schedule("one_shot", 0.5, 12, k=3)
    assert r[:3] == [1.0, 1.0, 1.0]
    assert len(set(r[3:])) == 1 and r[3] == pytest.approx((0.5 * 12 - 3) / 9)
    s = make_schedule("step", 0.5, 12, stages=3)
    assert len(set(s[0:4])) == len(set(s[4:8])) == len(set(s[8:12])) == 1
    assert s[4] ** 2 == pytest.approx(s[8])


def test_sigmoid_respects_r_min_and_kappa():
    r = make_schedule("sigmoid", 0.4, 24, r_min=0.1, kappa=5.0)
    _assert_schedule_rules(r, 24, 0.1)
    assert sum(r) / 24 == pytest.approx(0.4, abs=1e-6)


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
@pytest.mark.parametrize("name", ["none", "low_to_high", "step"])
def test_bad_keep_is_rejected(name, keep):
    with pytest.raises(ValueError, match=r"keep=.*\(0, 1\]"):
        make_schedule(name, keep, 12)
    with pytest.raises(ValueError, match=r"keep=.*\(0, 1\]"):
        schedule_counts(name, keep, _cuts(PATTERN_12), 64)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: none, low_to_high, uniform") as info:
        make_schedule("pyramid", 0.5, 12)
    assert "'pyramid'" in str(info.value)


@pytest.mark.parametrize("num_blocks", [0, -3, 2.5])
def test_bad_num_blocks(num_blocks):
    with pytest.raises(ValueError, match="num_blocks=.* >= 1"):
        make_schedule("uniform", 0.5, num_blocks)


def test_unreachable_budget_names_the_minimum():
    with pytest.raises(ValueError, match=r"minimum reachable keep is 0\.0833") as info:
        make_schedule("low_to_high", 0.05, 12)
    assert "more blocks" in str(info.value)
    with pytest.raises(ValueError, match=r"minimum reachable keep is 0\.1292"):  # (1 + 11 * 0.05) / 12
        make_schedule("uniform", 0.1, 12, r_min=0.05)
    with pytest.raises(ValueError, match=r"minimum reachable keep is 0\.1027"):  # sum exp(-20 b/12) / 12
        make_schedule("sigmoid", 0.1, 12)
    with pytest.raises(ValueError, match=r"minimum reachable keep is 0\.2500.*more stages"):
        make_schedule("step", 0.2, 52)


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("uniform", {"p": 2.0}, "accepted: r_min"),
        ("low_to_high", {"lam": 1.0}, "accepted: p, r_min"),
        ("none", {"k": 2}, "accepted: r_min"),
        ("low_to_high", {"p": 1.0}, "'uniform'"),
        ("low_to_high", {"p": 0.5}, "'high_to_low'"),
        ("high_to_low", {"p": 1.5}, r"\(0, 1\)"),
        ("one_shot", {"k": 0}, r"\[1, 12\)"),
        ("one_shot", {"k": 12}, r"\[1, 12\)"),
        ("one_shot", {"k": 2.5}, "integer"),
        ("step", {"stages": 0}, r"\[1, 12\]"),
        ("step", {"stages": 13}, r"\[1, 12\]"),
        ("sigmoid", {"kappa": -1.0}, "> 0"),
        ("sigmoid", {"r_min": 1.0}, r"\[0, 1\)"),
        ("low_to_high", {"r_min": -0.1}, r"\[0, 1\)"),
    ],
)
def test_bad_params_are_rejected(name, params, fragment):
    with pytest.raises(ValueError, match=fragment):
        make_schedule(name, 0.5, 12, **params)


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as info:
        make_schedule("low_to_high", 2.0, 12, p=0.5, r_min=1.5, foo=1)
    message = str(info.value)
    for fragment in ("keep=2.0", "p=0.5", "r_min=1.5", "foo"):
        assert fragment in message


# ----------------------------------------------------------------------------------- counts_from_ratios


def test_counts_from_ratios_hand_computed():
    cut_after = _cuts("M*-M*-")  # [T, T, F, T, T, F]
    assert cut_after == [True, True, False, True, True, False]
    ratios = [1.0, 0.8, 0.6, 0.5, 0.3, 0.2]
    out = counts_from_ratios(ratios, cut_after, num_visual=10)
    # Block 3 follows the MLP block 2, so it keeps block 2's 6 tokens although r(3) asks for 5.
    assert out == ScheduleCounts(counts=[10, 8, 6, 6, 3, 2], realised_keep=35 / 60)


def test_counts_from_ratios_min_tokens_and_clamp():
    cut_after = [True, True, False, True, True, False]
    ratios = [1.0, 0.8, 0.6, 0.5, 0.3, 0.2]
    assert counts_from_ratios(ratios, cut_after, 10, min_tokens=4).counts == [10, 8, 6, 6, 4, 4]
    # min_tokens above num_visual clamps to num_visual: nothing can be cut.
    assert counts_from_ratios(ratios, cut_after, 10, min_tokens=50).counts == [10] * 6
    # r(0) is ignored and a ratio of 0 still leaves min_tokens.
    assert counts_from_ratios([0.0, 0.0], [True, True], 7).counts == [7, 1]


def test_counts_from_ratios_never_increase():
    out = counts_from_ratios([1.0, 0.3, 0.9, 0.9], [True, True, True, True], 10)
    assert out.counts == [10, 3, 3, 3]
    assert out.realised_keep == pytest.approx(19 / 40)


@pytest.mark.parametrize(
    ("ratios", "cut_after", "num_visual", "min_tokens", "fragment"),
    [
        ([1.0, 0.5], [True], 10, 1, "same length"),
        ([], [], 10, 1, "same length"),
        ([1.0, 0.5], [True, True], 0, 1, "num_visual=0"),
        ([1.0, 0.5], [True, True], 10, 0, "min_tokens=0"),
        ([1.0, 1.5], [True, True], 10, 1, r"blocks \[1\]"),
    ],
)
def test_counts_from_ratios_validation(ratios, cut_after, num_visual, min_tokens, fragment):
    with pytest.raises(ValueError, match=fragment):
        counts_from_ratios(ratios, cut_after, num_visual, min_tokens)


# -------------------------------------------------------------------------------------- schedule_counts


@pytest.mark.parametrize("pattern", [PATTERN_6, PATTERN_12, PATTERN_24])
@pytest.mark.parametrize("num_visual", [64, 256, 4096])
@pytest.mark.parametrize("keep", [0.25, 0.5])
@pytest.mark.parametrize("name", REDUCING)
def test_schedule_counts_realise_keep(name, keep, num_visual, pattern):
    cut_after = _cuts(pattern)
    floor = _pattern_floor(name, cut_after, num_visual)
    if keep < floor - 0.01:
        # e.g. one_shot/step on 6 blocks: the first 2 blocks always see every token, so keep >= 1/3.
        with pytest.raises(ValueError, match=f"minimum realised keep is {floor:.4f}"):
            schedule_counts(name, keep, cut_after, num_visual)
        return
    out = schedule_counts(name, keep, cut_after, num_visual)
    assert len(out.counts) == len(pattern)
    assert out.counts[0] == num_visual
    assert all(a >= b >= 1 for a, b in zip(out.counts, out.counts[1:]))
    for b in range(1, len(pattern)):
        if not cut_after[b - 1]:
            assert out.counts[b] == out.counts[b - 1], "counts must be held through non-mixing blocks"
    assert out.realised_keep == pytest.approx(sum(out.counts) / (len(pattern) * num_visual))
    assert abs(out.realised_keep - keep) <= 0.01


def test_schedule_counts_reachable_cases_are_exercised():
    # The 24-block pattern reaches keep 0.25 for every family; guards the floor oracle above.
    for name in REDUCING:
        out = schedule_counts(name, 0.25, _cuts(PATTERN_24), 4096)
        assert abs(out.realised_keep - 0.25) <= 0.01


def test_schedule_counts_beats_rounding_the_smooth_schedule():
    # Holding counts through MLP blocks pushes the realised keep of the smooth curve above the budget;
    # solving against the counts brings it back.
    cut_after = _cuts(PATTERN_12)
    smooth = counts_from_ratios(make_schedule("low_to_high", 0.25, 12), cut_after, 256)
    solved = schedule_counts("low_to_high", 0.25, cut_after, 256)
    assert abs(smooth.realised_keep - 0.25) > abs(solved.realised_keep - 0.25)


@pytest.mark.parametrize("keep", [0.1, 0.5, 1.0])
def test_schedule_counts_none_and_full_keep(keep):
    out = schedule_counts("none", keep, _cuts(PATTERN_12), 64)
    assert out.counts == [64] * 12 and out.realised_keep == 1.0
    full = schedule_counts("low_to_high", 1.0, _cuts(PATTERN_12), 64)
    assert full.counts == [64] * 12


def test_attention_only_pattern_cannot_reach_small_keep():
    cut_after = _cuts(PATTERN_12, mixers="*")  # cuts only after the attention blocks 3 and 8
    # The 4 blocks before the first cut see all 256 tokens, the other 8 at least one: (4*256 + 8) / 3072.
    with pytest.raises(ValueError, match=r"keep=0\.1 .*minimum realised keep is 0\.3359") as info:
        schedule_counts("low_to_high", 0.1, cut_after, 256)
    assert "allow cuts after earlier blocks" in str(info.value)
    with pytest.raises(ValueError, match="minimum realised keep is 1.0000"):
        schedule_counts("uniform", 0.5, [False] * 12, 256)


def test_schedule_counts_validates_its_own_arguments():
    with pytest.raises(ValueError, match="num_blocks=0"):
        schedule_counts("uniform", 0.5, [], 64)
    with pytest.raises(ValueError, match="num_visual=0"):
        schedule_counts("uniform", 0.5, _cuts(PATTERN_12), 0)
    with pytest.raises(ValueError, match="accepted: r_min"):
        schedule_counts("uniform", 0.5, _cuts(PATTERN_12), 64, p=2.0)
