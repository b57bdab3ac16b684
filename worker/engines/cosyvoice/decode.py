"""The project's own speech-token decode loop for the CosyVoice v1 (300M) LLM: exact, and flat.

It drives the weights of the loaded upstream `TransformerLM` (its embeddings, text encoder,
layers and sampling function); only the per-step arithmetic is done differently:

- Upstream's relative-position attention applies each layer's `linear_pos` to all 2T-1
  relative positions at every step (~17 GFLOP a step at T=300, quadratic over an utterance),
  though the projection depends on the position alone. Here each layer's projection is a table
  computed once per process, extended as longer utterances need it; a step reads T rows.
- Upstream rebuilds the key/value cache by concatenation at every step; here it is allocated
  once per utterance and written in place.

Everything else follows upstream `TransformerLM.inference` step for step: the prefill over
[sos, speaker, text, task] (run by the upstream encoder itself), end-of-speech masked at the
first step, the min/max speech-token ratios, and the yaml's `ras_sampling` called with the same
arguments on the same global torch RNG, so that a seeded run emits upstream's tokens.

State is per utterance (`Row`): a scheduler steps the rows of many jobs together (`advance`),
each drawing from its own generator, so a job's tokens do not depend on its batch-mates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import ConfigError

# Rows of the position tables computed at a time: a few hundred rows cost ~50 ms of one
# process's CPU per growth at full size, and most utterances stay below 512 positions.
_TABLE_GROWTH = 256
# Speech positions a row's cache starts with; it doubles as the utterance grows.
_FIRST_RESERVE = 256


@dataclass(frozen=True)
class DecodeLimits:
    """Upstream `TransformerLM.inference` defaults, as `CosyVoiceModel.llm_job` uses them."""

    sampling: int = 25
    max_token_text_ratio: float = 20.0
    min_token_text_ratio: float = 2.0


class PositionTables:
    """Per layer, `linear_pos` applied to the relative-position encodings 0..capacity-1, as a
    (heads, capacity, d_k) tensor: row r is the projection of relative position r."""

    def __init__(self, encoder: Any, heads: int, d_k: int) -> None:
        pe = encoder.embed.pos_enc.pe  # (1, 2 * max_len - 1, d_model), relative +max..-max
        self._pe = pe[0]
        self._center = int(pe.size(1)) // 2  # index of relative position 0
        self._projections = [layer.self_attn.linear_pos for layer in encoder.encoders]
        self._heads, self._d_k = heads, d_k
        self.tables: list[torch.Tensor] = [
            torch.empty(heads, 0, d_k, dtype=pe.dtype) for _ in self._projections
        ]

    @property
    def capacity(self) -> int:
        return int(self.tables[0].size(1))

    @property
    def limit(self) -> int:
        """The longest sequence the upstream encoding covers (its `max_len`)."""
        return self._center + 1

    def ensure(self, length: int) -> None:
        """Make the tables cover relative positions 0..length-1."""
        old = self.capacity
        if length <= old:
            return
        if length > self.limit:
            raise ValueError(f"sequence of {length} positions exceeds the model's {self.limit}")
        new = min(self.limit, max(length, old + _TABLE_GROWTH))
        # pe[center - r] encodes relative position r: rows old..new-1, ascending.
        rows = self._pe[self._center - new + 1 : self._center - old + 1].flip(0)
        with torch.inference_mode():
            for i, projection in enumerate(self._projections):
                added = projection(rows).view(new - old, self._heads, self._d_k).transpose(0, 1)
                self.tables[i] = torch.cat([self.tables[i], added], dim=1)


class Row:
    """One utterance in flight: its key/value cache, how much of it is filled, what it decoded
    and the distribution of its next token. Rows of different jobs step together
    (`SpeechTokenDecoder.advance`) yet share nothing but the weights and the position tables."""

    def __init__(
        self, *, layers: int, heads: int, d_k: int, capacity: int, limit: int,
        min_len: int, max_len: int, generator: torch.Generator | None,
    ) -> None:  # fmt: skip
        self.limit = limit  # the most positions the row can ever hold
        self.keys = torch.empty(layers, 1, heads, 0, d_k)  # (layers, 1, heads, capacity, d_k)
        self.values = torch.empty(layers, 1, heads, 0, d_k)
        self.length = 0
        self.min_len, self.max_len = min_len, max_len
        # None: the global torch RNG (upstream's own behaviour, for the batch-1 parity checks).
        self.generator = generator
        self.decoded: list[int] = []
        self.log_probs = torch.empty(0)  # (1, vocabulary): where the next token is drawn from
        self.reserve(capacity)

    @property
    def capacity(self) -> int:
        return int(self.keys.size(3))

    def reserve(self, positions: int) -> None:
        """Make room for `positions` cache entries: doubled when short, never past `limit`."""
        old = self.capacity
        if positions <= old:
            return
        new = min(self.limit, max(positions, 2 * old))
        layers, _, heads, _, d_k = self.keys.shape
        keys, values = (torch.empty(layers, 1, heads, new, d_k) for _ in range(2))
        keys[:, :, :, :old] = self.keys
        values[:, :, :, :old] = self.values
        self.keys, self.values = keys, values

    def outstanding_bytes(self) -> int:
        """What the cache may still grow by, in bytes, before the row must end."""
        layers, _, heads, _, d_k = self.keys.shape
        return cache_bytes(layers, heads, d_k, max(0, self.limit - self.capacity))


class SpeechTokenDecoder:
    """Speech tokens from text tokens with the loaded upstream v1 `TransformerLM` (`llm`).

    One per engine, used by one thread at a time. `generate` decodes one utterance; `start`,
    `next_token` and `advance` let a scheduler step many utterances together."""

    def __init__(self, llm: Any, limits: DecodeLimits | None = None) -> None:
        _check_supported(llm)
        self.llm = llm
        self.limits = limits or DecodeLimits()
        encoder = llm.llm
        self._encoder = encoder
        self._layers = list(encoder.encoders)
        attention = self._layers[0].self_attn
        self.heads, self.d_k = attention.h, attention.d_k
        self._scale = math.sqrt(self.d_k)
        self.eos = llm.speech_token_size
        self.positions = PositionTables(encoder, self.heads, self.d_k)

    # --- one utterance ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        text: torch.Tensor,
        text_len: torch.Tensor,
        embedding: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        """Yield speech tokens as upstream `TransformerLM.inference` does for SFT (no prompt):
        `text` (1, L) int tokens, `text_len` (1,), `embedding` (1, 192) or (0, 192)."""
        row = self.start(text, text_len, embedding, generator=generator)
        while (token := self.next_token(row)) is not None:
            yield token
            self.advance([row], [token])

    @torch.inference_mode()
    def teacher_forced(
        self,
        text: torch.Tensor,
        text_len: torch.Tensor,
        embedding: torch.Tensor,
        tokens: list[int],
    ) -> torch.Tensor:
        """Log-probabilities (len(tokens) + 1, vocabulary) of each step when fed `tokens`: row i
        is the distribution the i-th token was drawn from (row 0 after the prefill), without
        the first step's end-of-speech mask."""
        return self.teacher_forced_together([(text, text_len, embedding, tokens)])[0]

    @torch.inference_mode()
    def teacher_forced_together(
        self, requests: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]]
    ) -> list[torch.Tensor]:
        """`teacher_forced` for several utterances stepped as one batch (each leaves the batch
        when its tokens run out): the batching determinism checks compare it with alone."""
        rows = [
            self.start(text, text_len, embedding, extra=len(tokens) + 1)
            for text, text_len, embedding, tokens in requests
        ]
        out: list[list[torch.Tensor]] = [[row.log_probs] for row in rows]
        for step in range(max((len(r[3]) for r in requests), default=0)):
            active = [i for i, r in enumerate(requests) if step < len(r[3])]
            self.advance([rows[i] for i in active], [requests[i][3][step] for i in active])
            for i in active:
                out[i].append(rows[i].log_probs)
        return [torch.cat(parts, dim=0) for parts in out]

    # --- many utterances, one step at a time -----------------------------------------------

    @torch.inference_mode()
    def start(
        self,
        text: torch.Tensor,
        text_len: torch.Tensor,
        embedding: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        extra: int | None = None,
    ) -> Row:
        """A new row: the prefix through the prefill, ready for its first `next_token`.
        `extra` caps the speech positions the row may need (default: the max-length rule)."""
        prefix, text_tokens = self._prefix(text, text_len, embedding)
        min_len = int(text_tokens * self.limits.min_token_text_ratio)
        max_len = int(text_tokens * self.limits.max_token_text_ratio)
        limit = prefix.size(1) + (max_len if extra is None else extra)
        self.positions.ensure(limit)
        row = Row(
            layers=len(self._layers), heads=self.heads, d_k=self.d_k, limit=limit,
            capacity=min(limit, prefix.size(1) + _FIRST_RESERVE), min_len=min_len,
            max_len=max_len, generator=generator,
        )  # fmt: skip
        row.log_probs = self._prefill(row, prefix)
        return row

    def row_bytes(self, text_tokens: int, prefix: int) -> int:
        """The most cache memory a row of `text_tokens` text tokens can take."""
        positions = prefix + int(text_tokens * self.limits.max_token_text_ratio)
        return cache_bytes(len(self._layers), self.heads, self.d_k, positions)

    def next_token(self, row: Row) -> int | None:
        """Draw the row's next speech token with upstream's sampling and stop rules (from the
        row's own generator); None when the utterance has ended."""
        step = len(row.decoded)
        if step >= row.max_len:
            return None
        log_probs = row.log_probs
        if step == 0:
            log_probs = log_probs.clone()
            log_probs[:, self.eos] = -float("inf")  # upstream: never stop before one token
        with drawing_from(row.generator):
            token = int(
                self.llm.sampling_ids(
                    log_probs.squeeze(dim=0),
                    row.decoded,
                    self.limits.sampling,
                    ignore_eos=step < row.min_len,
                ).item()
            )
        if token == self.eos:
            return None
        row.decoded.append(token)
        return token

    @torch.inference_mode()
    def advance(self, rows: list[Row], tokens: list[int]) -> None:
        """Feed each row its token, all rows in one pass: the linear maps see a batch of
        len(rows) (one read of the weights for all), attention runs per row over that row's
        own cache and positions. Sets each row's `log_probs`."""
        n = len(rows)
        for row in rows:
            row.reserve(row.length + 1)
        encoder = self._encoder
        x = self.llm.speech_embedding.weight[torch.tensor(tokens)].unsqueeze(1)  # (n, 1, D)
        x = encoder.embed.out(x) * encoder.embed.pos_enc.xscale
        span = max(row.length for row in rows) + 1  # the longest row's keys, this step
        for i, layer in enumerate(self._layers):
            attention = layer.self_attn
            h = layer.norm1(x)
            q = attention.linear_q(h).view(n, self.heads, self.d_k)
            k = attention.linear_k(h).view(n, self.heads, self.d_k)
            v = attention.linear_v(h).view(n, self.heads, self.d_k)
            # (heads, n, d_k), pre-scaled: the scores need no division afterwards.
            q_u = ((q + attention.pos_bias_u) / self._scale).transpose(0, 1)
            q_v = ((q + attention.pos_bias_v) / self._scale).transpose(0, 1)
            # Every row's position scores in one product, over relative positions span-1..0:
            # row b (at position t) reads the last t + 1 columns, key j at relative t - j.
            table = self.positions.tables[i][:, :span]
            position = torch.matmul(q_v, table.transpose(-2, -1)).flip(-1)  # (heads, n, span)
            contexts = []
            for b, row in enumerate(rows):
                t = row.length
                row.keys[i, 0, :, t] = k[b]
                row.values[i, 0, :, t] = v[b]
                keys = row.keys[i, 0, :, : t + 1]  # (heads, t + 1, d_k)
                relative = position[:, b : b + 1, span - 1 - t :]
                scores = torch.baddbmm(relative, q_u[:, b : b + 1], keys.transpose(-2, -1))
                weights = torch.softmax(scores, dim=-1)
                contexts.append(torch.matmul(weights, row.values[i, 0, :, : t + 1]))
            context = torch.cat(contexts, dim=1).transpose(0, 1).reshape(n, 1, -1)
            x = x + attention.linear_out(context)
            x = x + layer.feed_forward(layer.norm2(x))
        for row in rows:
            row.length += 1
        log_probs = self._log_probs(encoder.after_norm(x))
        for b, row in enumerate(rows):
            row.log_probs = log_probs[b : b + 1]

    # --- the arithmetic ---------------------------------------------------------------------

    def _prefix(
        self, text: torch.Tensor, text_len: torch.Tensor, embedding: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """[sos, speaker, encoded text, task] as upstream assembles it, and the text length."""
        llm = self.llm
        encoded, encoded_len = llm.encode(llm.text_embedding(text), text_len.clone())
        if embedding.shape[0] != 0:
            speaker = llm.spk_embed_affine_layer(torch.nn.functional.normalize(embedding, dim=1))
            speaker = speaker.unsqueeze(dim=1)
        else:
            speaker = torch.zeros(1, 0, llm.llm_input_size, dtype=encoded.dtype)
        sos = llm.llm_embedding.weight[llm.sos_eos].reshape(1, 1, -1)
        task = llm.llm_embedding.weight[llm.task_id].reshape(1, 1, -1)
        prefix = torch.concat([sos, speaker, encoded, task], dim=1)
        return prefix, int(encoded_len.reshape(-1)[0])

    def _prefill(self, row: Row, prefix: torch.Tensor) -> torch.Tensor:
        """The prefix through upstream's own `forward_chunk` (once per utterance), its cache
        copied into the row's; the first step's log-probabilities."""
        length = prefix.size(1)
        mask = torch.tril(torch.ones((1, length, length))).to(torch.bool)
        empty = torch.zeros((0, 0, 0, 0))
        hidden, cache, _ = self._encoder.forward_chunk(
            prefix, offset=0, required_cache_size=-1, att_cache=empty, cnn_cache=empty,
            att_mask=mask,
        )  # fmt: skip
        # cache: (layers, heads, length, 2 * d_k), keys then values.
        row.keys[:, 0, :, :length] = cache[..., : self.d_k]
        row.values[:, 0, :, :length] = cache[..., self.d_k :]
        row.length = length
        return self._log_probs(hidden)

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.llm_decoder(hidden[:, -1]).log_softmax(dim=-1)  # type: ignore[no-any-return]


def cache_bytes(layers: int, heads: int, d_k: int, positions: int) -> int:
    """Bytes of a float32 key/value cache of `positions` positions (keys and values)."""
    return 2 * 4 * layers * heads * d_k * positions


@contextmanager
def drawing_from(generator: torch.Generator | None) -> Iterator[None]:
    """Run upstream code that draws from the global torch RNG on `generator`'s stream instead
    (its state is swapped in and back out): each job keeps its own sequence of draws whatever
    else the process decodes. The engine's compute runs on one thread, so nothing else draws
    in between. None leaves the global RNG in place."""
    if generator is None:
        yield
        return
    saved = torch.get_rng_state()
    torch.set_rng_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(torch.get_rng_state())
        torch.set_rng_state(saved)


def _check_supported(llm: Any) -> None:
    """The loop reproduces one architecture: the v1 TransformerLM with a pre-norm transformer
    of relative-position self-attention layers. Anything else must use the upstream preset."""
    from cosyvoice.llm.llm import TransformerLM
    from cosyvoice.transformer.attention import RelPositionMultiHeadedAttention
    from cosyvoice.transformer.embedding import EspnetRelPositionalEncoding
    from cosyvoice.transformer.encoder_layer import TransformerEncoderLayer

    encoder: Any = getattr(llm, "llm", None)
    reasons = []
    if type(llm) is not TransformerLM:
        reasons.append(f"LLM is {type(llm).__name__}, not the v1 TransformerLM")
    elif not getattr(encoder, "normalize_before", False) or encoder.global_cmvn is not None:
        reasons.append("LLM encoder is not a pre-norm encoder without CMVN")
    elif type(getattr(encoder.embed, "pos_enc", None)) is not EspnetRelPositionalEncoding:
        reasons.append("LLM position encoding is not rel_pos_espnet")
    else:
        for layer in encoder.encoders:
            if type(layer) is not TransformerEncoderLayer or not layer.normalize_before:
                reasons.append("LLM layers are not pre-norm TransformerEncoderLayer")
                break
            if type(layer.self_attn) is not RelPositionMultiHeadedAttention:
                reasons.append("LLM attention is not rel_selfattn")
                break
    if reasons:
        raise ConfigError(
            f"the exact decode loop does not support this model ({reasons[0]}): "
            "set TTS_COSYVOICE_PRESET=upstream"
        )
