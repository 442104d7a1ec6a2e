"""Crisis wording through obfuscation (issue 24, item 6).

The default risk patterns (eval_protocol/default.yaml) and the checker's normalisation are measured on
labelled messages we wrote (tests/data/crisis_dev.jsonl, 227 messages, 119 risky: direct statements,
euphemisms, plans without trigger words, self-harm, abuse, danger to others, obfuscated forms; and hard
negatives: "this exam is killing me", "I'd die for a coffee", talk about someone else's past). The held-out
set (tests/data/crisis_holdout.jsonl, 76 messages) was written and committed before the patterns were
changed and was not tuned on afterwards. Recall and false-positive rate must stay above/below floors;
docs/study.md ("Crisis detection") reports the numbers.

Before: recall 0.24 (dev) / 0.17 (held out), false positives 0.074 / 0.059: every floor test fails on the
old patterns and checker, and so does every generated obfuscation test (the old checker matched raw text).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from extes.study.safety import RiskChecker, fold, join_spaced, text_forms, unleet

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _default_checker(protocol: str = "default.yaml") -> RiskChecker:
    return RiskChecker(yaml.safe_load((ROOT / "eval_protocol" / protocol).read_text())["crisis"]["patterns"])


CHECKER = _default_checker()


def rates(checker: RiskChecker, rows: list[dict]) -> tuple[float, float, list[str], list[str]]:
    """(recall, false-positive rate, missed texts, false alarms)."""
    missed = [r["text"] for r in rows if r["risky"] and not checker.check(r["text"])]
    false = [r["text"] for r in rows if not r["risky"] and checker.check(r["text"])]
    risky = sum(r["risky"] for r in rows)
    return 1 - len(missed) / risky, len(false) / (len(rows) - risky), missed, false


def test_the_labelled_sets_are_what_the_docs_say():
    dev, held = _rows("crisis_dev.jsonl"), _rows("crisis_holdout.jsonl")
    assert len(dev) >= 200 and 0.45 <= sum(r["risky"] for r in dev) / len(dev) <= 0.55
    assert len({r["text"] for r in dev + held}) == len(dev) + len(held)  # no duplicates, no overlap
    kinds = {r["kind"] for r in dev}
    assert {"direct", "euphemism", "plan", "self_harm", "abuse", "others", "obfuscated", "hard_negative",
            "third_party", "everyday"} <= kinds


@pytest.mark.parametrize("name, min_recall, max_fpr", [
    ("crisis_dev.jsonl", 0.95, 0.05),
    ("crisis_holdout.jsonl", 0.90, 0.06),
])
def test_recall_and_false_positive_rate_on_labelled_messages(name, min_recall, max_fpr):
    recall, fpr, missed, false = rates(CHECKER, _rows(name))
    assert recall >= min_recall, (recall, missed)
    assert fpr <= max_fpr, (fpr, false)


def test_both_shipped_protocols_carry_the_same_patterns():
    assert _default_checker("extes_paper.yaml")._compiled == CHECKER._compiled


# ------------------------------------------------------------------------------------ generated obfuscation
_CYRILLIC = str.maketrans("aceopxyiAEOPCHKMTX", "асеорхуіАЕОРСНКМТХ")


def _zero_width(t: str) -> str:
    return "\u200b".join(t)


def _soft_hyphen(t: str) -> str:
    return " ".join("\u00ad".join(w) for w in t.split(" "))


def _between_letters(sep: str, t: str) -> str:
    return re.sub(r"(?<=[^\W_])(?=[^\W_])", sep, t)


def _spaced(t: str) -> str:
    return _between_letters(" ", t.replace(" ", "  "))


def _dotted(t: str) -> str:
    return _between_letters(".", t)


def _leet(t: str) -> str:
    return t.translate(str.maketrans("aeio", "4310"))


def _full_width(t: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in t)


def _accents(t: str) -> str:
    return unicodedata.normalize("NFC", "".join(c + "\u0301" if c in "aeiou" else c for c in t))


OBFUSCATIONS = {"zero-width": _zero_width, "soft hyphen": _soft_hyphen, "cyrillic look-alikes":
                lambda t: t.translate(_CYRILLIC), "spaced letters": _spaced, "dotted letters": _dotted,
                "leetspeak": _leet, "full-width": _full_width, "accents": _accents,
                "cyrillic + zero-width": lambda t: _zero_width(t.translate(_CYRILLIC))}


def _plain_risky() -> list[str]:
    return [r["text"] for r in _rows("crisis_dev.jsonl") + _rows("crisis_holdout.jsonl")
            if r["risky"] and r["kind"] != "obfuscated"]


@pytest.mark.parametrize("how", list(OBFUSCATIONS))
def test_obfuscating_a_risky_message_never_hides_it(how):
    """Every plain risky message the checker catches is still caught, in the same categories, when
    written with invisible characters, look-alike letters, spaced or dotted letters, digits, full-width or
    accented letters (each message x each obfuscation, generated)."""
    obfuscate = OBFUSCATIONS[how]
    lost = []
    for text in _plain_risky():
        plain = {m.category for m in CHECKER.check(text)}
        if plain and not plain <= {m.category for m in CHECKER.check(obfuscate(text))}:
            lost.append(obfuscate(text))
    assert not lost, lost


@pytest.mark.parametrize("how", ["zero-width", "cyrillic look-alikes", "full-width", "accents"])
def test_obfuscating_a_harmless_message_does_not_raise_an_alarm(how):
    obfuscate = OBFUSCATIONS[how]
    harmless = [r["text"] for r in _rows("crisis_dev.jsonl") if not r["risky"] and not CHECKER.check(r["text"])]
    assert not [t for t in harmless if CHECKER.check(obfuscate(t))]


def test_normalisation_steps():
    assert fold("k\u200bi\u00adl\u2060l m\u0443s\u0435lf") == "kill myself"
    assert fold("ｉ\u3000ｗａｎｔ") == "i want" and fold("sûïcidé") == "suicide"
    assert unleet("su1c1d3 4nd k1ll, 300 kms, 2 die, 4 train") == "suicide and kill, 300 kms, to die, a train"
    assert unleet("ki11", one="l") == "kill"
    assert join_spaced("k i l l  m y s e l f") == "kill  myself"
    assert join_spaced("i w-a-n-t t-o d.i.e") == "i want to die"
    assert text_forms("plain text") == ["plain text"]


def test_researchers_own_patterns_see_the_raw_text_and_the_normalised_forms():
    checker = RiskChecker({"custom": [r"\bhopeless\b"], "digits": [r"\b988\b"], "exact": ["K1LL"]})
    assert [m.category for m in checker.check("I feel h\u200bopel\u0435ss")] == ["custom"]
    assert [m.category for m in checker.check("I called 988 yesterday")] == ["digits"]  # digits stay in raw text
    assert [m.category for m in checker.check("K1LL")] == ["exact"]  # a pattern for the raw spelling still works


def test_euphemisms_and_plans_without_trigger_words():
    for text in ("I want to unalive myself", "kms", "I just want to end it all", "I hope I don't wake up",
                 "I've saved up my pills and tonight's the night", "I have the rope and I know where",
                 "I've been stockpiling my meds"):
        assert CHECKER.check(text), text
    for text in ("this exam is killing me", "I'd die for a coffee", "we drove 300 kms today",
                 "I take my pills every night", "I bought a rope for the tent this weekend",
                 "I'm going to end it with him tonight", "my friend tried to kill herself years ago"):
        assert not CHECKER.check(text), text
