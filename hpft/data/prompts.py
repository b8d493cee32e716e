"""The video-QA prompt layout and its masks: token ids, visual/query masks and answer-only labels (pure).

Layout (one line here, no newlines in the ids)::

    <s>Video:<video>...<video> Question: {question} Options: A. {o1} B. {o2} C. {o3} D. {o4} Answer: {answer}</s>
    |-prefix-|---- visual ----|-------------------------- query ---------------------------|--- answer ---|

* `visual_mask`: the `num_visual` placeholder positions (the VLM replaces them with video features).
* `query_mask`: every token after the last visual token and before the answer, "Question: ... Answer:". The
  options belong to the query: a question-conditioned score should see what is being asked about.
* `labels`: the answer's ids (option text, then `</s>`) at the answer positions, -100 elsewhere, unshifted (the
  loss shifts them, in the original sequence, before any token is cut).

With `FrameLabels` (a model whose prompts label each tubelet, as the `nemotron_h_omni` processor does with its
"Frame 1 and frame 2: <img>…</img>" chunks), the visual part becomes
`" Frame 1:"<video>×n " Frame 3:"<video>×n …` (n = tokens per tubelet, the label names the tubelet's first frame;
the relative variant, `" Frame 1 at 00%:"<video>×n " Frame 3 at 12%:"<video>×n …`, also says where it starts):
the labels are neither visual nor query tokens, and the visual tokens are no longer contiguous. Labels give the
decoder, which has no positional encoding besides the Mamba order, a token that says *when*.

Each part is tokenised on its own and concatenated: every part boundary is a space or a special token, so with a
word-level or byte-level tokenizer the ids equal those of the whole string, and the answer tokens in
`encode_example` are exactly the tokens an option-scoring candidate appends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "LETTERS",
    "EncodedPrompt",
    "FrameLabels",
    "answer_text",
    "encode_example",
    "encode_option_candidates",
    "format_open_query",
    "format_query",
    "option_token_ids",
    "prefix_ids",
    "text_ids",
    "video_part",
]

LETTERS = ("A", "B", "C", "D")
PREFIX = "Video:"
IGNORE_INDEX = -100
FRAME_LABEL = " Frame {frame}:"
# The relative layout names each tubelet by where it starts in the video, in whole percent (00-99), as temporal
# grounding models quantise time relative to the video's length (Vid2Seq, VTimeLLM): "when in the video" then reads
# off one label, whatever the length, where an absolute frame number needs the total to mean anything.
RELATIVE_FRAME_LABEL = " Frame {frame} at {percent:02d}%:"


@dataclass(frozen=True)
class FrameLabels:
    """Label every tubelet of the video with its first frame's number (`FRAME_LABEL`).

    Attributes:
        tokens_per_tubelet: Placeholder tokens per tubelet (`hpft.models.processor.tokens_per_tubelet`).
        frames_per_tubelet: Frames packed in one tubelet (the model's `video_temporal_patch_size`).
        relative: Also say where the tubelet starts, in percent of the video (`RELATIVE_FRAME_LABEL`).
    """

    tokens_per_tubelet: int
    frames_per_tubelet: int = 2
    relative: bool = False

    def text(self, tubelet: int, num_tubelets: int) -> str:
        """The label of tubelet `tubelet` (0-based) of a video of `num_tubelets` tubelets."""
        frame = tubelet * self.frames_per_tubelet + 1
        if not self.relative:
            return FRAME_LABEL.format(frame=frame)
        return RELATIVE_FRAME_LABEL.format(frame=frame, percent=100 * tubelet // num_tubelets)


@dataclass(frozen=True)
class EncodedPrompt:
    """One tokenised example, all lists of length S.

    Attributes:
        input_ids: Token ids.
        visual_mask: True at video placeholder positions.
        query_mask: True at "Question: ... Answer:" positions.
        labels: Answer ids at answer positions, -100 elsewhere.
        answer_start: Index of the first answer token (= prompt length; `len(input_ids)` when there is no answer).
    """

    input_ids: list[int]
    visual_mask: list[bool]
    query_mask: list[bool]
    labels: list[int]
    answer_start: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def answer_positions(self) -> range:
        """Positions of the answer tokens (the scored positions of an option candidate)."""
        return range(self.answer_start, len(self.input_ids))

    @property
    def num_visual(self) -> int:
        """Number of video placeholder tokens."""
        return sum(self.visual_mask)


def format_query(question: str, options: Sequence[str]) -> str:
    """The query text that follows the video: `" Question: {q} Options: A. {o1} ... D. {o4} Answer:"`.

    Args:
        question: Question text.
        options: 4 plain option texts in A-D order.

    Returns:
        The text, with a leading space (it follows the last video token).
    """
    _check_options(options)
    listed = " ".join(f"{letter}. {text.strip()}" for letter, text in zip(LETTERS, options, strict=True))
    return f" Question: {question.strip()} Options: {listed} Answer:"


def format_open_query(question: str) -> str:
    """The query text of a question without options (dense pretraining): `" Question: {q} Answer:"`."""
    return f" Question: {question.strip()} Answer:"


def answer_text(answer: str) -> str:
    """The trained answer text that follows "Answer:": the option text after one space."""
    return " " + answer.strip()


def _check_options(options: Sequence[str]) -> None:
    if isinstance(options, str) or len(options) != len(LETTERS):
        raise ValueError(f"options must be {len(LETTERS)} option texts in A-D order, got {options!r}")
    if any(not isinstance(o, str) or not o.strip() for o in options):
        raise ValueError(f"every option must be a non-empty string, got {options!r}")


def text_ids(tokenizer, text: str) -> list[int]:
    """The token ids of `text` alone (no special tokens): every hpft prompt is built from such pieces."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _video_id(tokenizer, video_token_id: int | None) -> int:
    if video_token_id is not None:
        return int(video_token_id)
    found = getattr(tokenizer, "video_token_id", None)
    if found is None:
        raise ValueError("the tokenizer has no video_token_id; pass video_token_id= (the model's image_token_id)")
    return int(found)


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; the answer must end with one")
    return int(tokenizer.eos_token_id)


def prefix_ids(tokenizer) -> list[int]:
    """The ids before the video: `<s>` (when the tokenizer has one) and `"Video:"`."""
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    return bos + text_ids(tokenizer, PREFIX)


def video_part(
    tokenizer, num_visual: int, video_id: int, frame_labels: FrameLabels | None = None
) -> tuple[list[int], list[bool]]:
    """The ids of the prompt's video part and which of them are placeholders.

    Args:
        tokenizer: A transformers tokenizer.
        num_visual: Video placeholder tokens (`tubelets x tokens_per_tubelet`).
        video_id: The placeholder id.
        frame_labels: Label each tubelet (`num_visual` must then be a whole number of tubelets); None: the
            placeholders alone.

    Returns:
        `(ids, visual)`: the ids and, per id, whether it is a placeholder.
    """
    if num_visual < 1:
        raise ValueError(f"num_visual must be >= 1, got {num_visual}")
    if frame_labels is None:
        return [video_id] * num_visual, [True] * num_visual
    per_tubelet = frame_labels.tokens_per_tubelet
    if per_tubelet < 1 or num_visual % per_tubelet:
        raise ValueError(f"num_visual={num_visual} is not a whole number of {per_tubelet}-token tubelets")
    ids: list[int] = []
    visual: list[bool] = []
    num_tubelets = num_visual // per_tubelet
    for tubelet in range(num_tubelets):
        label = text_ids(tokenizer, frame_labels.text(tubelet, num_tubelets))
        if video_id in label:
            raise ValueError(f"the frame label contains the video placeholder (id {video_id})")
        ids += label + [video_id] * per_tubelet
        visual += [False] * len(label) + [True] * per_tubelet
    return ids, visual


def _encode(
    tokenizer,
    question: str,
    options: Sequence[str],
    num_visual: int,
    answer_ids: list[int] | None,
    video_id: int,
    frame_labels: FrameLabels | None = None,
) -> EncodedPrompt:
    prefix = prefix_ids(tokenizer)
    video, visual = video_part(tokenizer, num_visual, video_id, frame_labels)
    query = text_ids(tokenizer, format_query(question, options))
    answer = answer_ids or []
    if video_id in prefix or video_id in query or video_id in answer:
        # A stray placeholder in the text would make the model's placeholder count disagree with the video.
        raise ValueError(f"the question, options or answer contain the video placeholder (id {video_id})")
    v = len(prefix) + len(video)
    q = v + len(query)
    input_ids = prefix + video + query + answer
    length = len(input_ids)
    return EncodedPrompt(
        input_ids=input_ids,
        visual_mask=[False] * len(prefix) + visual + [False] * (length - v),
        query_mask=[v <= i < q for i in range(length)],
        labels=[IGNORE_INDEX] * q + answer,
        answer_start=q,
    )


def option_token_ids(tokenizer, options: Sequence[str], with_eos: bool = True) -> list[list[int]]:
    """The ids each option appends after "Answer:" when it is the answer.

    Args:
        tokenizer: A transformers tokenizer.
        options: 4 option texts in A-D order.
        with_eos: End each with `</s>` (so "red" is not scored as a prefix of a longer option).

    Returns:
        4 id lists, in option order.
    """
    _check_options(options)
    eos = [_eos(tokenizer)] if with_eos else []
    return [text_ids(tokenizer, answer_text(o)) + eos for o in options]


def encode_example(
    tokenizer,
    question: str,
    options: Sequence[str],
    num_visual: int,
    answer: str | None,
    video_token_id: int | None = None,
    frame_labels: FrameLabels | None = None,
) -> EncodedPrompt:
    """Tokenise one video question with its masks; with an answer, the trained target is `" {answer}</s>"`.

    Args:
        tokenizer: A transformers tokenizer (tiny-omni's, or any with an eos token).
        question: Question text.
        options: 4 plain option texts in A-D order (letters are added here).
        num_visual: Video placeholder tokens (`tubelets x tokens_per_tubelet`).
        answer: The answer text (normally one of `options`); None for a prompt to generate from.
        video_token_id: Placeholder id; default `tokenizer.video_token_id`. For `nemotron_h_omni` pass the model's
            `image_token_id` (videos reuse the image placeholder).
        frame_labels: Label each tubelet (the model's layout, `hpft.models.processor.frame_labels_for`); None: plain.

    Returns:
        The encoded example (lists of length S = prompt + answer tokens).

    Raises:
        ValueError: Bad options, `num_visual < 1`, or text that contains the placeholder token.
    """
    video_id = _video_id(tokenizer, video_token_id)
    answer_ids = None if answer is None else text_ids(tokenizer, answer_text(answer)) + [_eos(tokenizer)]
    return _encode(tokenizer, question, options, num_visual, answer_ids, video_id, frame_labels)


def encode_option_candidates(
    tokenizer,
    question: str,
    options: Sequence[str],
    num_visual: int,
    video_token_id: int | None = None,
    with_eos: bool = True,
    frame_labels: FrameLabels | None = None,
) -> list[EncodedPrompt]:
    """The 4 sequences "prompt + option k" for option-text scoring (lmms-eval's log-likelihood style).

    Each candidate's `labels` hold option k's ids (and `</s>` when `with_eos`) at `answer_positions`, -100
    elsewhere, so a per-sequence sum of label log-probabilities is option k's score. All 4 share the prompt.

    Args:
        tokenizer: A transformers tokenizer.
        question: Question text.
        options: 4 option texts in A-D order.
        num_visual: Video placeholder tokens.
        video_token_id: Placeholder id (see `encode_example`).
        with_eos: Score `</s>` after the option text too (the trained answer ends with it).
        frame_labels: Label each tubelet (see `encode_example`).

    Returns:
        4 encoded candidates in option order.
    """
    video_id = _video_id(tokenizer, video_token_id)
    return [
        _encode(tokenizer, question, options, num_visual, ids, video_id, frame_labels)
        for ids in option_token_ids(tokenizer, options, with_eos=with_eos)
    ]
