"""Incremental detokenisation: decode only the newest tokens, holding back incomplete UTF-8.

Decoding the whole reply at every step costs O(n) per token. Here each step decodes a short window: the
text of ids[prefix:] minus the text of ids[prefix:read] is what the new tokens add (the window starts a
few tokens back so tokenizers that make a leading space depend on the previous token agree). When the
new text ends in U+FFFD, the last token holds only part of a multi-byte character: nothing is emitted
until a later token completes it.
"""

from __future__ import annotations


class IncrementalDecoder:
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        """Append one token id; return the text it completes ("" while a character is incomplete)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if after.endswith("\ufffd") or len(after) <= len(before) or not after.startswith(before):
            if not after.endswith("\ufffd") and not after.startswith(before):
                # the window re-segmented earlier text: fall back to a full decode (rare)
                full = self._decode(self.ids)
                new = full[len(self.text):] if full.startswith(self.text) else ""
                self.text += new
                self._prefix, self._read = max(0, len(self.ids) - 1), len(self.ids)
                return new
            return ""
        new = after[len(before):]
        self.text += new
        self._prefix, self._read = self._read, len(self.ids)
        return new
