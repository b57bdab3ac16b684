"""Text normalization and chunking for CosyVoice v1, without the package's French branch.

`cosyvoice2-fr-infer` routes any text with an accented Latin letter or two short words such as
"or", "car", "son", "si" through French normalization (so "The car is on the road, or so"
would be read with French number words). This module applies the upstream v1 rules itself,
through the frontend's own normalizers and the package's helper functions, and the engine
then calls the model with `text_frontend=False`.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

# Languages whose text goes through the Chinese normalizer whatever its script.
_ZH_LANGS = frozenset({"zh", "yue"})
# The frontend's chunk limits (text tokens): a chunk stays well under the LLM's context.
TOKEN_MAX = 80
TOKEN_MIN = 60
MERGE_LEN = 20


class TextSplitter:
    """Normalize text the way upstream CosyVoice v1 does and split it into chunks."""

    def __init__(self, frontend: Any) -> None:
        self._frontend = frontend
        self.frontend_name = "ttsfrd" if frontend.use_ttsfrd else "wetext"

    def split(self, text: str, *, lang: str | None) -> list[str]:
        """Chunks of normalized text, each at most about TOKEN_MAX text tokens; punctuation-only
        pieces dropped. `lang` "zh"/"yue" forces the Chinese rules, "en" the English ones;
        otherwise (None, "ja", "ko") the script decides, as upstream does."""
        from cosyvoice.utils import frontend_utils as fu

        fe = self._frontend
        text = text.strip()
        if not text:
            return []
        tokenize = partial(fe.tokenizer.encode, allowed_special=fe.allowed_special)
        limits = {"token_max_n": TOKEN_MAX, "token_min_n": TOKEN_MIN, "merge_len": MERGE_LEN}
        if fe.use_ttsfrd:
            sentences = json.loads(fe.frd.do_voicegen_frd(text))["sentences"]
            chunks = [s["text"] for s in sentences]
        elif lang in _ZH_LANGS or (lang != "en" and fu.contains_chinese(text)):
            text = fe.zh_tn_model.normalize(text)
            text = fu.replace_blank(text.replace("\n", ""))
            text = fu.replace_corner_mark(text)
            text = text.replace(".", "。").replace(" - ", "，")
            text = fu.remove_bracket(text)
            text = re.sub(r"[，,、]+$", "。", text)
            chunks = list(fu.split_paragraph(text, tokenize, "zh", comma_split=False, **limits))
        else:
            text = fe.en_tn_model.normalize(text)
            text = fu.spell_out_number(text, fe.inflect_parser)
            chunks = list(fu.split_paragraph(text, tokenize, "en", comma_split=False, **limits))
        return [c for c in chunks if c.strip() and not fu.is_only_punctuation(c)]
