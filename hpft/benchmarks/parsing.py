"""Answer-letter parsers that reproduce lmms-eval 0.7.3, rule for rule (pure functions, no I/O, no RNG).

Scores are only comparable with published ones when the letter is read out of the model's text exactly as the
reference harness reads it, quirks included (see `reference/parsers.md`, whose golden tables the tests replay):

* `strip_reasoning`: what the lmms-eval 0.7.3 command line does to every output before any task sees it:
  cut each closed `<think>…</think>` / `<analysis>…</analysis>` block, then `str.strip()`. An unclosed tag
  (truncated reasoning) is left alone.
* `extract_mcq_answer`: `_task_utils/mcq_extract.extract_mcq_answer`, used by Video-MME and MLVU. Candidates are
  ranked by format (start-of-text letter > end-of-text letter > answer phrase > "(X)" > "X." > "X:" > "X)" >
  "X "), the later one wins among equals, and "any capital" is a fallback only when nothing else matched.
* `first_capital_letter`: LongVideoBench: delete a few answer prefixes, then the first capital A-E anywhere.
* `mmmu_earliest_candidate`: EgoSchema: MMMU-style candidates, but the one whose *last* occurrence comes
  *first* wins.

Where the reference draws a random letter (LongVideoBench, EgoSchema: nothing parseable), these return `""`;
`hpft.benchmarks.aggregate.score_records` then draws the seeded guess.

`videomme_legacy` and `mlvu_legacy` are the lmms-eval <= 0.6 parsers, kept only to show how much the
version changes a score (the tests replay the "0.3.5-0.5.0 pred" columns); no benchmark module uses them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_REASONING_TAGS",
    "LVB_PREFIXES",
    "extract_mcq_answer",
    "first_capital_letter",
    "mlvu_legacy",
    "mmmu_earliest_candidate",
    "strip_reasoning",
    "videomme_legacy",
]

# The lmms-eval 0.7.3 command line's default `--reasoning_tags`.
DEFAULT_REASONING_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<analysis>", "</analysis>"))

# Characters `extract_mcq_answer` trims from the ends, one `str.strip(c)` after another (so the order matters:
# '."' loses its quote but keeps its period).
_MCQ_TRIM = (",", ".", "!", "?", ";", ":", "'", '"')
# The MMMU-style parsers trim the same list without the double quote.
_MMMU_TRIM = (",", ".", "!", "?", ";", ":", "'")

# Answer phrases of `extract_mcq_answer`, in its order (matched lower-case, first occurrence of each).
_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)  # fmt: skip

# Format ranks of `extract_mcq_answer`: higher wins, then the later position.
_RANK = {"start": 10, "end": 9, "phrase": 7, "paren": 6, "period": 5, "colon": 4, "right_paren": 3, "space": 2}

# LongVideoBench deletes these (case-sensitive) before scanning for a capital.
LVB_PREFIXES = (
    "The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
    "The correct option is", "Best answer:", "Best option:",
)  # fmt: skip


def strip_reasoning(text: str, tag_pairs: Sequence[tuple[str, str]] | None = DEFAULT_REASONING_TAGS) -> str:
    """Remove closed reasoning blocks and surrounding whitespace, as the lmms-eval 0.7.3 CLI does.

    For each `(start, end)` pair, repeatedly cut from the first `start` to the first `end` after it; a `start`
    with no `end` after it stops that pair (an unclosed block is kept). Then `str.strip()`. With `tag_pairs`
    None (`--reasoning_tags none`) the text is returned untouched, not even stripped.

    Args:
        text: Raw model output.
        tag_pairs: `(start_tag, end_tag)` pairs, or None to disable.

    Returns:
        The text the reference's task parsers see.
    """
    if tag_pairs is None:
        return text
    for start_tag, end_tag in tag_pairs:
        while start_tag in text and end_tag in text:
            start = text.find(start_tag)
            end = text.find(end_tag, start)
            if end == -1:
                break
            text = text[:start] + text[end + len(end_tag) :]
    return text.strip()


def extract_mcq_answer(response: str, choices: Sequence[str] = tuple("ABCDEFGH")) -> str:
    """The option letter lmms-eval 0.7.3's `extract_mcq_answer` picks (Video-MME and MLVU use A-D).

    Case-sensitive: only the exact `choices` count. Ranking, highest first: the text starts with a standalone
    letter; it ends with one; a letter after an answer phrase ("the answer is", ... first occurrence of the
    phrase, then each letter's first position after it); "(X)"; "X."; "X:"; "X)"; "X ". Each format records
    the letter's last position (rfind), and among equal ranks the later position wins (the first candidate on
    a full tie). Only when nothing matched does any occurrence of a letter count (its last one).

    Args:
        response: Model output, after `strip_reasoning`.
        choices: Valid letters.

    Returns:
        A letter from `choices`, or `""` when none is found.
    """
    if not response or not response.strip():
        return ""
    text = response.strip()
    for ch in _MCQ_TRIM:
        text = text.strip(ch)
    text = f" {text} "  # padding makes "X " match a letter at the very end
    found: list[tuple[str, int, str]] = []  # (letter, position, format), in the reference's insertion order
    for fmt, pattern in (
        ("paren", "({})"),
        ("period", "{}."),
        ("colon", "{}:"),
        ("right_paren", "{})"),
        ("space", "{} "),
    ):
        for ch in choices:
            token = pattern.format(ch)
            if token in text:
                found.append((ch, text.rfind(token), fmt))
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        idx = lower.find(phrase)
        if idx != -1:
            for ch in choices:
                pos = text.find(ch, idx + len(phrase))
                if pos != -1:
                    found.append((ch, pos, "phrase"))
    core = text.strip()
    for ch in choices:
        if core.startswith(ch) and (len(core) == 1 or not core[1].isalpha()):
            found.append((ch, 0, "start"))
    for ch in choices:
        if core.endswith(ch) and (len(core) == 1 or not core[-2].isalpha()):
            found.append((ch, len(text) - 1, "end"))
    if not found:
        found = [(ch, text.rfind(ch), "fallback") for ch in choices if ch in text]
    if not found:
        return ""
    # max() keeps the first of equal keys, like the reference's stable sort(reverse=True)[0].
    return max(found, key=lambda c: (_RANK.get(c[2], 0), c[1]))[0]


def first_capital_letter(response: str, letters: str = "ABCDE", prefixes: Sequence[str] = LVB_PREFIXES) -> str:
    """LongVideoBench's parser in lmms-eval 0.7.3: delete answer prefixes, then the first capital letter anywhere.

    It scans inside words too ("Based on the video, A" gives "B", "Answer: C" gives "A"), and returns "E" even for
    a 4-option question.

    Args:
        response: Model output, after `strip_reasoning`.
        letters: Letters to look for.
        prefixes: Case-sensitive phrases deleted first, in order.

    Returns:
        The first letter found, or `""` (where the reference guesses at random).
    """
    for prefix in prefixes:
        response = response.replace(prefix, "")
    m = re.search(f"[{letters}]", response)
    return m.group(0) if m else ""


def mmmu_earliest_candidate(response: str, index2ans: Mapping[str, str]) -> str:
    """EgoSchema's MMMU-derived parser in lmms-eval 0.7.3.

    Trims `, . ! ? ; : '` from the ends, pads with spaces, then collects every "(X)", "X " and "X." token for
    the letters of `index2ans` together, and picks the one whose **last** occurrence is **earliest** (argmin of
    rfind; first in collection order on ties). With no token and more than 5 words, an option whose full text
    (including its "A. " label, as the reference stores it) occurs in the response counts instead.

    Args:
        response: Model output, after `strip_reasoning`.
        index2ans: Letter -> option text as the reference builds it (`doc["option"][i].strip()`).

    Returns:
        The letter, or `""` (where the reference guesses at random).
    """
    for ch in _MMMU_TRIM:
        response = response.strip(ch)
    response = f" {response} "
    tokens = [fmt.format(ch) for fmt in ("({})", "{} ", "{}.") for ch in index2ans if fmt.format(ch) in response]
    if tokens:
        # min() keeps the first of equal keys, like np.argmin.
        best = min(tokens, key=response.rfind)
        return best.replace("(", "").replace(")", "").replace(".", "").strip()
    if len(response.split()) > 5:
        lower = response.lower()
        # An empty option text would match everywhere; real options are never empty (the loaders check).
        hits = [letter for letter, ans in index2ans.items() if ans and ans.lower() in lower]
        if hits:
            return min(hits, key=lambda letter: lower.rfind(index2ans[letter].lower()))
    return ""


def videomme_legacy(response: str) -> str:
    """Video-MME's parser in lmms-eval <= 0.6 (`extract_characters_regex`), for version comparisons only.

    Strip, delete answer prefixes (two list entries are glued by a missing comma upstream, kept as such), return
    "" for more than 10 words without A-D, else the first A-D anywhere.

    Args:
        response: Raw model output (those releases had no reasoning strip).

    Returns:
        A letter A-D or `""`.
    """
    s = response.strip()
    for prefix in (
        "The best answer is", "The correct answer is", "The answer is", "The answer",
        "The best option isThe correct option is", "Best answer:Best option:",
    ):  # fmt: skip
        s = s.replace(prefix, "")
    # Upstream also returns "" for more than 10 words without A-D; the search below already does.
    m = re.search("[ABCD]", s)
    return m.group(0) if m else ""


def mlvu_legacy(response: str) -> str:
    """MLVU's parser in lmms-eval <= 0.6, for version comparisons only.

    The character before the first ")" if there is one, else the whole stripped output (so "C." never equals
    "C").

    Args:
        response: Raw model output.

    Returns:
        The "letter" the old parser compared with the gold letter.
    """
    s = response.strip()
    if ")" in s:
        i = s.index(")")
        return s[i - 1 : i]
    return s
