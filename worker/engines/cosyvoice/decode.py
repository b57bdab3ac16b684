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

State is per utterance (`_Utterance`): the batching issue adds a batch dimension over it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import ConfigError

# Rows of the position tables computed at a time: a few hundred rows cost ~50 ms of one
# process's CPU per growth at full size, and most utterances stay below 512 positions.
_TABLE_GROWTH = 256


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


@dataclass
class _Utterance:
    """One utterance's decoding state: its key/value cache and how much of it is filled."""

    keys: torch.Tensor  # (layers, 1, heads, capacity, d_k)
    values: torch.Tensor
    length: int = 0


class SpeechTokenDecoder:
    """Speech tokens from text tokens with the loaded upstream v1 `TransformerLM` (`llm`).

    One per engine; not thread-safe (one utterance at a time per process)."""

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

    # --- the loop ---------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self, text: torch.Tensor, text_len: torch.Tensor, embedding: torch.Tensor
    ) -> Iterator[int]:
        """Yield speech tokens as upstream `TransformerLM.inference` does for SFT (no prompt):
        `text` (1, L) int tokens, `text_len` (1,), `embedding` (1, 192) or (0, 192)."""
        prefix, text_tokens = self._prefix(text, text_len, embedding)
        min_len = int(text_tokens * self.limits.min_token_text_ratio)
        max_len = int(text_tokens * self.limits.max_token_text_ratio)
        state = self._start(prefix.size(1) + max_len)
        logp = self._prefill(state, prefix)
        decoded: list[int] = []
        for i in range(max_len):
            if i == 0:
                logp[:, self.eos] = -float("inf")  # upstream: never stop before one token
            token = int(
                self.llm.sampling_ids(
                    logp.squeeze(dim=0), decoded, self.limits.sampling, ignore_eos=i < min_len
                ).item()
            )
            if token == self.eos:
                return
            yield token
            decoded.append(token)
            logp = self._step(state, token)

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
        prefix, _ = self._prefix(text, text_len, embedding)
        state = self._start(prefix.size(1) + len(tokens) + 1)
        rows = [self._prefill(state, prefix)]
        rows.extend(self._step(state, token) for token in tokens)
        return torch.cat(rows, dim=0)

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

    def _start(self, capacity: int) -> _Utterance:
        self.positions.ensure(capacity)
        shape = (len(self._layers), 1, self.heads, capacity, self.d_k)
        return _Utterance(keys=torch.empty(shape), values=torch.empty(shape))

    def _prefill(self, state: _Utterance, prefix: torch.Tensor) -> torch.Tensor:
        """The prefix through upstream's own `forward_chunk` (once per utterance), its cache
        copied into the preallocated one; the first step's log-probabilities."""
        length = prefix.size(1)
        mask = torch.tril(torch.ones((1, length, length))).to(torch.bool)
        empty = torch.zeros((0, 0, 0, 0))
        hidden, cache, _ = self._encoder.forward_chunk(
            prefix, offset=0, required_cache_size=-1, att_cache=empty, cnn_cache=empty,
            att_mask=mask,
        )  # fmt: skip
        # cache: (layers, heads, length, 2 * d_k), keys then values.
        state.keys[:, 0, :, :length] = cache[..., : self.d_k]
        state.values[:, 0, :, :length] = cache[..., self.d_k :]
        state.length = length
        return self._log_probs(hidden)

    def _step(self, state: _Utterance, token: int) -> torch.Tensor:
        """One speech token through every layer; the next step's log-probabilities."""
        encoder = self._encoder
        x = self.llm.speech_embedding.weight[token].reshape(1, 1, -1)
        x = encoder.embed.out(x) * encoder.embed.pos_enc.xscale
        t = state.length
        length = t + 1
        for i, layer in enumerate(self._layers):
            attention = layer.self_attn
            h = layer.norm1(x)
            q = attention.linear_q(h).view(1, 1, self.heads, self.d_k)
            state.keys[i, :, :, t] = attention.linear_k(h).view(1, self.heads, self.d_k)
            state.values[i, :, :, t] = attention.linear_v(h).view(1, self.heads, self.d_k)
            keys = state.keys[i, :, :, :length]
            values = state.values[i, :, :, :length]
            q_u = (q + attention.pos_bias_u).transpose(1, 2)  # (1, heads, 1, d_k)
            q_v = (q + attention.pos_bias_v).transpose(1, 2)
            content = torch.matmul(q_u, keys.transpose(-2, -1))
            # Key j sits at relative position t - j: the table's rows t..0.
            table = self.positions.tables[i][:, :length]
            position = torch.matmul(q_v, table.transpose(-2, -1)).flip(-1)
            weights = torch.softmax((content + position) / self._scale, dim=-1)
            context = torch.matmul(weights, values).transpose(1, 2).reshape(1, 1, -1)
            x = x + attention.linear_out(context)
            x = x + layer.feed_forward(layer.norm2(x))
        state.length = length
        return self._log_probs(encoder.after_norm(x))

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llm.llm_decoder(hidden[:, -1]).log_softmax(dim=-1)  # type: ignore[no-any-return]


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
