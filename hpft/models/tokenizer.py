"""Train the tiny-omni tokenizer: a closed word-level vocabulary over the synthetic needle task's text.

The synthetic task speaks a small, closed language (question templates, glyph, colour and quarter words, option
letters, the prompt's section words, digits, punctuation), so one token per word is both the simplest and the
easiest vocabulary for a tiny model to learn: every answer ("orange", "ring", "third") is a single token.

Pre-tokenization is byte-level (GPT-2 style): a word carries its leading space (`Ġorange`), so
`decode(encode(text)) == text` exactly for any text made of known words. Punctuation and digits are isolated
first, so "bars?" is `Ġbars` + `?` and "12" is `1` + `2`. Unknown words map to `<unk>` (benchmark text still
encodes, it just means nothing to the tiny model).

The vocabulary is built directly from the sorted set of pre-tokenized words (special tokens first), not with a
frequency-ordered trainer, so the same texts always give the same ids, whatever their order or counts.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hpft.data import synthetic

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "VIDEO",
    "synthetic_corpus",
    "train_tokenizer",
]

UNK, PAD, BOS, EOS, VIDEO = "<unk>", "<pad>", "<s>", "</s>", "<video>"
# Fixed order = fixed ids 0..4, so the placeholder and padding ids never move when the corpus grows.
SPECIAL_TOKENS = (UNK, PAD, BOS, EOS, VIDEO)

# Words of the prompt layout (`hpft.data.prompts`) and a few generic section words, so a later prompt variant
# (captions, letter answers) needs no new tokenizer. Kept here, not imported from prompts, because the
# vocabulary must not change when a prompt module is edited; a test checks the prompt only uses known words.
PROMPT_TEXT = (
    "Video: Question: Options: Answer: Caption: Frame frame sampled at seconds and the video",
    "A. B. C. D. A B C D (A) (B) (C) (D) A) B) C) D)",
    "0 1 2 3 4 5 6 7 8 9 . , ; : ? ! ' \" ( ) [ ] - / _ + = * # % & < > @ | ~",
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            # use_regex splits words from punctuation and keeps the leading space on each word (Ġword).
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def synthetic_corpus(seeds: Iterable[int] = range(8)) -> list[str]:
    """Every kind of text the synthetic needle task can produce, plus the prompt template words.

    Combines (a) the generator's own questions and captions for a few seeded scenes (so any template word of
    `make_questions` is covered, even one added later), (b) every glyph, colour, quarter and letter, and (c)
    `PROMPT_TEXT`; each text both as is and after a space. Pure and deterministic.

    Args:
        seeds: Scene seeds to draw questions from (each scene: 32 frames, 4 needles, all question kinds).

    Returns:
        Texts, in a fixed order.
    """
    texts: list[str] = []
    for seed in seeds:
        rng = np.random.default_rng([seed, 0x70C])
        scene = synthetic.make_scene(rng, 32, num_needles=4, num_distractors=8)
        letters = [synthetic.LETTERS[i % 4] for i in range(scene.num_needles)]
        for q in synthetic.make_questions(scene, rng, letters, synthetic.KINDS):
            texts.append(q["question"])
            texts.append(" ".join(q["options"]))
        texts.append(synthetic.caption(synthetic.scene_objects(scene)))
    for values in (synthetic.GLYPHS, synthetic.COLOURS, synthetic.QUARTERS, synthetic.LETTERS):
        texts.append(" ".join(values))
    texts.extend(PROMPT_TEXT)
    # Byte-level words carry their leading space, so each text also appears after a space: "What" opens a
    # question here but follows "Question:" in the prompt (as "ĠWhat").
    return texts + [" " + text for text in texts]


def train_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer whose vocabulary is every pre-tokenized word of `texts`.

    Ids: `<unk>`=0, `<pad>`=1, `<s>`=2, `</s>`=3, `<video>`=4, then the words in sorted order. No special token
    is added automatically (`add_special_tokens` adds nothing): `hpft.data.prompts` places `<s>`/`</s>` itself.
    The video placeholder is exposed as `tokenizer.video_token` / `tokenizer.video_token_id`.

    Args:
        texts: Training text (e.g. `synthetic_corpus()`); order and repetition do not matter.

    Returns:
        A transformers fast tokenizer (right padding), deterministic for a given set of words.
    """
    pre = _pre_tokenizer()
    words = {piece for text in texts for piece, _ in pre.pre_tokenize_str(text)}
    # A bare space piece appears before an isolated digit or punctuation mark (" 1", " ("): keep it encodable.
    words.add("Ġ")
    words -= set(SPECIAL_TOKENS)
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    # normalized=False: special tokens are matched verbatim in raw text, before pre-tokenization splits "<".
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={"video_token": VIDEO},
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
