"""From a job's text to the engine's input: batch lexicon, global lexicon, number rules.

Order and why: the batch lexicon first (it overrides the global one), then the global lexicon
(TTS_LEXICON), then worker.text.announce on what no lexicon entry produced, so that an entry
overrides any number rule. `text_rules` names all three for the content key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from core.errors import ConfigError, InvalidJob, StorageError
from core.lexicon import REDIS_PREFIX, Lexicon, Segment, load_lexicon, parse_lexicon
from core.speakers import describe
from worker.text.announce import RULES_VERSION, announce

# Batch lexicons a worker process keeps parsed (they are content-addressed: never stale).
_CACHED_LEXICONS = 16


def rules_language(lang: str | None, speaker: str) -> str | None:
    """The language whose rules apply: the job's, else its speaker's."""
    if lang:
        return lang
    known = describe(speaker)
    return known.lang if known else None


# Engines that read Mandarin digits but not the number characters (worker.text.announce).
_ARABIC_ZH_ENGINES = frozenset({"espeak"})


def engine_text(
    text: str, *, lang: str | None, lexicons: Sequence[Lexicon], engine: str = ""
) -> str:
    """The engine's input: lexicons in order, then the number rules on what they left."""
    segments = [Segment(text)]
    for lexicon in lexicons:
        segments = lexicon.apply(segments, lang)
    numerals = "arabic" if engine in _ARABIC_ZH_ENGINES else "words"
    return "".join(
        s.text if s.fixed else announce(s.text, lang, numerals=numerals) for s in segments
    )


def text_rules(lexicons: Sequence[Lexicon]) -> str:
    """What the content key records of the text rules: the number rules' version and each
    lexicon's digest, in the order applied."""
    return ":".join([RULES_VERSION, *(lexicon.digest() for lexicon in lexicons)])


@dataclass
class LexiconSource:
    """The global lexicon (loaded once at start) and batch lexicons read from Redis by digest."""

    global_lexicon: Lexicon | None
    client: redis.Redis
    _cache: OrderedDict[str, Lexicon]

    @classmethod
    def from_path(cls, path: str, client: redis.Redis) -> LexiconSource:
        # A bad global lexicon stops the worker at start, naming the file, row and field.
        try:
            loaded = load_lexicon(path) if path else None
        except InvalidJob as exc:
            raise ConfigError(f"TTS_LEXICON: {exc}") from exc
        return cls(loaded, client, OrderedDict())

    def for_job(self, digest: str | None) -> list[Lexicon]:
        found = [self._batch(digest)] if digest else []
        return found + ([self.global_lexicon] if self.global_lexicon else [])

    def _batch(self, digest: str) -> Lexicon:
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest]
        try:
            stored = self.client.get(REDIS_PREFIX + digest)
        except redis.RedisError as exc:
            raise StorageError(f"reading lexicon {digest[:12]}: {exc}") from exc
        if stored is None:
            raise InvalidJob(
                f"lexicon {digest[:12]} is no longer stored (expired with its batch): submit "
                "the batch again with --lexicon",
                field="lexicon",
            )
        lexicon = parse_lexicon(stored, fmt="json")
        if lexicon.digest() != digest:
            raise InvalidJob(f"lexicon {digest[:12]} does not match its digest", field="lexicon")
        self._cache[digest] = lexicon
        while len(self._cache) > _CACHED_LEXICONS:
            self._cache.popitem(last=False)
        return lexicon
