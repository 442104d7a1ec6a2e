"""Incremental detokenisation: only new tokens are decoded, partial UTF-8 is held back."""

from __future__ import annotations

import pytest

from extes.models.detok import IncrementalDecoder
from extes.testing.tiny import make_tokenizer

TEXTS = [
    "I feel so alone 😢 since the breakup.",
    "Ça va? Überall Grüße — naïve café, 日本語のテキスト, 🙂🙃 ok",
    "plain ascii text with  double  spaces\nand a newline",
]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_add_up_to_the_full_decode_and_never_show_half_a_character(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters are split over several tokens
    dec = IncrementalDecoder(tok)
    pieces = [dec.add(t) for t in ids]
    assert "".join(pieces) == tok.decode(ids) == text
    assert dec.text == text
    assert not any("\ufffd" in p for p in pieces)
    # an emoji is several byte tokens: the tokens before its last byte emit nothing
    if "😢" in text:
        assert any(p == "" for p in pieces)


def test_special_tokens_are_skipped(tok):
    ids = tok("hello", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    dec = IncrementalDecoder(tok)
    assert "".join(dec.add(t) for t in ids) == "hello"

