"""Blinding in every tag format (issue 24, item 5): every strategy label of the ExTES and ESConv taxonomies
(name, abbreviation, known variant, in several cases) in every wrapping a model was seen or could be
expected to write, at the start, in the middle and at the end of a reply, is removed, and nothing of it
shows while the reply streams. Ordinary brackets, quotes and the words themselves in a sentence stay.

The cases are generated: labels from the taxonomy x wrappings x positions. Before this change only
"[label]" was caught (see the matrix in the issue's closing note): every other wrapping below fails on the
old `strip_tags`.
"""

from __future__ import annotations

import re

import pytest

from extes import taxonomy as tx
from extes.study.blinding import strip_tags, visible_so_far

FIRST, SECOND = "That sounds hard.", "You are not alone."
CLEAN = f"{FIRST} {SECOND}"


def _canonical(label: str) -> str:
    """The strategy a label stands for: ExTES first (the stripper's documented order), then ESConv."""
    for taxonomy in ("extes", "esconv"):
        if tx.is_strategy(label, taxonomy):
            return tx.normalize_strategy(label, taxonomy)
    raise AssertionError(label)


def _labels() -> list[tuple[str, bool]]:
    """(label as a model might write it, is it an abbreviation) for every name, abbreviation and variant."""
    out: list[tuple[str, bool]] = []
    for strategies in (tx.STRATEGIES, tx.ESCONV_STRATEGIES):
        for s in strategies:
            out += [(s.name, False), (s.name.lower(), False), (s.name.upper(), False), (s.abbr, True),
                    (s.abbr.upper(), True)]
    for variants in (tx._EXTES_VARIANTS, tx._ESCONV_VARIANTS):
        out += [(v.title(), False) for v in variants] + [(v, False) for v in variants]
    return list(dict.fromkeys(out))


LABELS = _labels()
NAMES = [lab for lab, abbr in LABELS if not abbr]
# Outside brackets an abbreviation counts only as written or in capitals: a line starting "So:" is prose.
LINE_ABBRS = {a for s in tx.STRATEGIES + tx.ESCONV_STRATEGIES for a in (s.abbr, s.abbr.upper())}


def _camel(label: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[\s\-]+", label))


# wrapping -> (how it wraps one label or a pair, positions it can take, abbreviations allowed)
# A "line" wrapping is a line prefix: it starts the reply or a line.
WRAPPINGS = {
    "square": (lambda x: f"[{x}]", "start middle end"),
    "parentheses": (lambda x: f"({x})", "start middle end"),
    "curly": (lambda x: f"{{{x}}}", "start middle end"),
    "angle": (lambda x: f"<{x}>", "start middle end"),
    "angle closing": (lambda x: f"</{x}>", "start middle end"),
    "full-width square": (lambda x: f"［{x}］", "start middle end"),
    "full-width parentheses": (lambda x: f"（{x}）", "start middle end"),
    "lenticular": (lambda x: f"【{x}】", "start middle end"),
    "xml strategy tag": (lambda x: f"<strategy>{x}</strategy>", "start middle end"),
    "xml label tag": (lambda x: f"<label>{x}</label>", "start middle end"),
    "strategy: x": (lambda x: f"Strategy: {x}.", "start middle end"),
    "bracketed strategy: x": (lambda x: f"[Strategy: {x}]", "start middle end"),
    "bold strategy: x": (lambda x: f"**Strategy:** {x}", "line"),
    "x: prefix": (lambda x: f"{x}:", "line"),
    "bold x: prefix": (lambda x: f"**{x}:**", "line"),
    "bold x prefix": (lambda x: f"**{x}** -", "line"),
    "x alone on a line": (lambda x: x, "own-line"),
    "hashtag": (lambda x: "#" + _camel(x), "start middle end"),
    "hashtag with underscores": (lambda x: "#" + re.sub(r"[\s\-]+", "_", x), "start middle end"),
    "quoted": (lambda x: f'"{x}"', "start middle end"),
    "curly quoted": (lambda x: f"“{x}”", "start middle end"),
    "line break inside": (lambda x: "[" + x.replace(" ", "\n", 1) + "]" if " " in x else f"[\n{x}\n]",
                          "start middle end"),
    "unclosed at the end": (lambda x: f"[{x}", "end"),
    "unclosed parenthesis at the end": (lambda x: f"({x}", "end"),
    "bold inside brackets": (lambda x: f"[**{x}**]", "start middle end"),
    "brackets inside bold": (lambda x: f"**[{x}]**", "start middle end"),
}
COMBINED = {
    "x and y": (lambda x, y: f"[{x} and {y}]", "start middle end"),
    "x & y": (lambda x, y: f"({x} & {y})", "start middle end"),
    "x / y": (lambda x, y: f"[{x} / {y}]", "start middle end"),
    "x, y": (lambda x, y: f"{{{x}, {y}}}", "start middle end"),
    "strategy: x, y": (lambda x, y: f"Strategy: {x}, {y}.", "start middle end"),
    "x + y prefix": (lambda x, y: f"{x} + {y}:", "line"),
}


def _place(tag: str, position: str) -> list[str]:
    """The tag at the reply's start, middle and end (inline forms) or at line starts (line forms)."""
    if position == "line":
        return [f"{tag} {FIRST}\n{SECOND}", f"{FIRST}\n{tag} {SECOND}"]
    if position == "own-line":
        return [f"{tag}\n{FIRST}\n{SECOND}", f"{FIRST}\n{tag}\n{SECOND}", f"{FIRST}\n{SECOND}\n{tag}"]
    return [{"start": f"{tag} {CLEAN}", "middle": f"{FIRST} {tag} {SECOND}", "end": f"{CLEAN} {tag}"}[p]
            for p in position.split()]


def _expected_clean(position: str) -> str:
    return f"{FIRST}\n{SECOND}" if position in ("line", "own-line") else CLEAN


def _check(text: str, position: str, labels: list[str]) -> None:
    clean, found = strip_tags(text)
    assert clean == _expected_clean(position), (text, clean)
    assert found == [_canonical(lab) for lab in labels], (text, found)


def _check_streaming(text: str) -> None:
    """Every prefix shows only a prefix of the final clean text: no piece of a tag flashes."""
    final = strip_tags(text)[0]
    for n in range(1, len(text) + 1):
        shown = visible_so_far(text[:n])
        assert final.startswith(shown), (text[:n], shown, final)


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
def test_every_label_in_every_wrapping_at_every_position_is_removed(wrapping):
    wrap, position = WRAPPINGS[wrapping]
    for label, abbr in LABELS:
        if position in ("line", "own-line") and abbr and label not in LINE_ABBRS:
            continue
        for text in _place(wrap(label), position):
            _check(text, position, [label])


@pytest.mark.parametrize("combined", list(COMBINED))
def test_combined_labels_are_removed_with_both_strategies_recorded(combined):
    join, position = COMBINED[combined]
    pairs = list(zip(NAMES, NAMES[1:] + NAMES[:1])) + [("EV", "OH"), ("Aff", "SO"), ("Qu", "RF")]
    for x, y in pairs:
        if position == "line" and ("and" in (x + y).lower().split() or "+" in x + y):
            continue  # "A and B +" reads as labels joined by both: checked with names without 'and'
        for text in _place(join(x, y), position):
            _check(text, position, [x, y])


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
def test_no_part_of_a_tag_flashes_while_streaming(wrapping):
    wrap, position = WRAPPINGS[wrapping]
    for label in ("Emotional Validation", "EV", "Affirmation and Reassurance", "Promote Self-Care Practices",
                  "Question", "oth"):
        if position in ("line", "own-line") and label == "oth":
            continue
        for text in _place(wrap(label), position):
            _check_streaming(text)


@pytest.mark.parametrize("text", [
    "That is (and it always was) okay.",
    "(I know.) It is a lot.",
    "A note [sic] and [1] stay.",
    "Reflection helps, and so does validation from people who care.",
    "Affirmation from others is nice, but your own matters too.",
    "I have a question for you: what helps?",
    "So: here is one idea.",
    "Oh: I see.",
    "Offer hope to yourself where you can.",
    "Take a moment for self-care, and some information may help.",
    "You called it \"validation\" and that fits.",
    "Is it the box(es) or the option(s)?",
    "My #1 wish is that you rest. C# is hard, and so is E#.",
    "It hurts :( but you are here <3",
    "(EV charging) costs [about 3] euros.",
    "Strategy matters: take it slow.",
    "Other people feel this too.",
    "Others: that's how some feel.",  # a line starting with a label and a colon IS removed (next test)
])
def test_ordinary_brackets_quotes_and_words_survive(text):
    if text.startswith("Others:"):
        assert strip_tags(text)[0] == "that's how some feel."
        return
    assert strip_tags(text) == (text, [])
    _check_streaming(text)


@pytest.mark.parametrize("leftover", ["[ ]", "()", "(#)", "[]", "{ }", "<strategy></strategy>", "(:)", "【】",
                                      "** **", "<strategy>", "Strategy:"])
def test_leftovers_that_only_a_stripped_tag_leaves_are_removed(leftover):
    for position in ("start middle end" if leftover != "Strategy:" else "end").split():
        text = _place(leftover, position)[0]
        assert strip_tags(text) == (CLEAN, []), text


def test_a_tag_that_uncovers_another_is_removed_too():
    assert strip_tags("[EV] **Affirmation:** You did it.") == ("You did it.", ["Emotional Validation", "Affirmation"])
    assert strip_tags("Hi.\n([Offer Hope]) More.") == ("Hi.\nMore.", ["Offer Hope"])


def test_the_engine_can_ask_what_remains_visible():
    """The engine holds its end-of-turn token while a reply shows nothing: `visible_text_after_tags`
    answers that for every wrapping, and `tag_hold_start` says where a streamed end may still be a tag."""
    assert tx.visible_text_after_tags("**Affirmation:**\n(EV) ") == ""
    assert tx.visible_text_after_tags("(EV) Hi") == "Hi"
    assert tx.tag_hold_start("Hi. <strat") == 4
    assert tx.tag_hold_start("Hi. (I know") == len("Hi. (I know")


def _old_strip(text: str) -> tuple[str, list[str]]:
    """The stripper before issue 24 (extes/study/blinding.py at 31c74aa), for the matrix below."""
    found: list[str] = []

    def repl(m: re.Match) -> str:
        for taxonomy in ("extes", "esconv"):
            if tx.is_strategy(m.group(1), taxonomy):
                found.append(tx.normalize_strategy(m.group(1), taxonomy))
                return " "
        return m.group(0)

    clean = re.sub(r"[ \t]*\[([^\[\]\n]{1,60})\][ \t]*", repl, text or "")
    if found:
        clean = re.sub(r"[ \t]+\n", "\n", re.sub(r"[ \t]{2,}", " ", clean))
    return clean.strip(), found


def tag_matrix() -> list[tuple[str, str, int, int, int]]:
    """(wrapping, example, cases, caught by the old stripper, caught now): a case is caught when the
    cleaned reply is exactly the reply without the tag."""
    rows = []
    for name, (wrap, position) in WRAPPINGS.items():
        cases = [t for label, abbr in LABELS if not (position in ("line", "own-line") and abbr
                                                     and label not in LINE_ABBRS)
                 for t in _place(wrap(label), position)]
        rows.append((name, wrap("EV"), position, cases))
    pairs = list(zip(NAMES, NAMES[1:] + NAMES[:1]))
    for name, (join, position) in COMBINED.items():
        rows.append((name, join("EV", "Offer Hope"), position,
                     [t for x, y in pairs for t in _place(join(x, y), position)]))
    expected = _expected_clean
    return [(name, example, len(cases), sum(_old_strip(t)[0] == expected(p) for t in cases),
             sum(strip_tags(t)[0] == expected(p) for t in cases)) for name, example, p, cases in rows]


if __name__ == "__main__":  # python tests/test_study_tags.py: the matrix in the closing note
    print("| wrapping | example | cases | caught before | caught after |\n|---|---|---:|---:|---:|")
    for name, example, n, old, new in tag_matrix():
        shown = example.replace("\n", "⏎").replace("|", "\\|")
        print(f"| {name} | `{shown}` | {n} | {old} ({100 * old / n:.0f}%) | {new} ({100 * new / n:.0f}%) |")
