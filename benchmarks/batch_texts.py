"""Job texts for the batch benchmark, picked by their text-token count.

With random weights the CosyVoice LLM rarely samples end-of-speech, so a chunk runs to the cap
of 20 speech tokens per text token, 50 speech tokens a second: 0.4 s of audio per text token.
A job of N seconds is therefore a text of N / 0.4 tokens. Every text is a fresh random run of
short English words (one sentence, one chunk, well under the 500-character limit at 75 tokens),
so no two jobs share a content key and none is served from the cache.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# Speech tokens per text token (the LLM's cap) over speech tokens per second of audio.
SECONDS_PER_TEXT_TOKEN = 20 / 50
# Short, common words: most are one token of the multilingual Whisper tokenizer with their
# leading space; the counter checks each text anyway.
_WORD_LIST = (
    "the next train to city leaves from gate two in five min please mind gap doors close now "
    "bus stop north south east west line all exit left right side floor store shop open today "
    "late early day night red blue green stand wait here there thank you for your help car park "
    "rain sun cold warm food tea hot new old main road bay dock ramp lift hall room desk"
)
WORDS = tuple(_WORD_LIST.split())

# Counts a text's tokens. Word count is the fallback when the tokenizer is not installed.
TokenCounter = Callable[[str], int]


def count_words(text: str) -> int:
    """One token per word, one for the final full stop: the fake and espeak engines' count."""
    return len(text.split()) + text.count(".")


def whisper_counter() -> TokenCounter:
    """The CosyVoice frontend's tokenizer (multilingual Whisper), or the word count if the
    CosyVoice runtime is not installed."""
    try:
        from whisper.tokenizer import get_tokenizer
    except ImportError:
        return count_words
    tokenizer = get_tokenizer(multilingual=True, num_languages=100, language="en")
    return lambda text: len(tokenizer.encode(text))


def tokens_for(seconds: float) -> int:
    """Text tokens that the random model turns into about `seconds` of audio (at least 2)."""
    return max(2, round(seconds / SECONDS_PER_TEXT_TOKEN))


def text_of_tokens(tokens: int, *, rng: random.Random, count: TokenCounter) -> str:
    """A random sentence of exactly `tokens` tokens by `count` (close to it if a word of more
    than one token makes the exact count unreachable)."""
    words: list[str] = []
    for _ in range(4 * tokens + 20):
        text = _sentence(words)
        have = count(text)
        if have == tokens:
            return text
        if have < tokens:
            words.append(rng.choice(WORDS))
        else:
            words.pop(rng.randrange(len(words)))
    return _sentence(words)


def _sentence(words: list[str]) -> str:
    body = " ".join(words) or "hello"
    return body[0].upper() + body[1:] + "."
