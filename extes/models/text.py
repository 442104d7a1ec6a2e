"""Text in and out of a model: the chat prompt (fitted to the window), the end-of-turn ids, and the part
of a reply people may see while it streams. No torch: the OpenAI backend shares the streaming rules."""

from __future__ import annotations

from extes.models.types import ContextTooLongError
from extes.taxonomy import (
    STRATEGY_TAG_RE,
    TAG_ANYWHERE_RE,
    TAG_HOLD_CHARS,
    split_strategy_tag,
    visible_text_after_tags,
)

# ----------------------------------------------------------------------------------------------------------
# Prompt building and truncation


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    if not tokenizer.chat_template:
        raise ValueError(f"tokenizer of {tokenizer.name_or_path!r} has no chat template; cannot format messages")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_messages(tokenizer, messages: list[dict[str, str]], budget: int) -> tuple[list[int], int]:
    """Token ids of the chat prompt that fit in `budget` tokens, and how many messages were dropped.

    The rule: keep every system message; drop the oldest other messages one at a time until the prompt
    fits; never start the kept history with an assistant message (its user turn was dropped). The last
    message is never dropped: if system prompt + last message alone do not fit, ContextTooLongError.
    """
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    ids = render_prompt(tokenizer, system + rest)
    if len(ids) <= budget:
        return ids, 0
    # Binary search the smallest number of dropped leading messages that fits (length is monotone).
    lo, hi = 1, len(rest) - 1
    best: tuple[list[int], int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        k = mid
        while k < len(rest) - 1 and rest[k]["role"] == "assistant":
            k += 1
        cand = render_prompt(tokenizer, system + rest[k:])
        if len(cand) <= budget:
            best = (cand, k)
            hi = mid - 1
        else:
            lo = mid + 1
    if best is None:
        raise ContextTooLongError(
            f"the prompt needs more than {budget} tokens even with only the system prompt and the last "
            f"message ({len(render_prompt(tokenizer, system + rest[-1:]))} tokens); shorten the message"
        )
    return best


def end_of_turn_ids(tokenizer, generation_eos: int | list[int] | None) -> frozenset[int]:
    """The ids that end a reply: the tokenizer's eos, the model's generation config's eos (an id or a
    list), and ChatML's <|im_end|> where the vocabulary has it."""
    eos: set[int] = set()
    for v in (tokenizer.eos_token_id, generation_eos):
        if isinstance(v, int):
            eos.add(v)
        elif isinstance(v, (list, tuple)):
            eos.update(int(x) for x in v)
    if "<|im_end|>" in tokenizer.get_vocab():
        eos.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return frozenset(eos)


# ----------------------------------------------------------------------------------------------------------
# Streaming text: hide the strategy tag, hold back partial characters and trailing spaces


def visible_text(raw: str, strategies: bool, final: bool) -> str:
    """The part of the decoded output that people may see so far (monotone as `raw` grows)."""
    text = raw.lstrip()
    if strategies and text.startswith("["):
        m = STRATEGY_TAG_RE.match(text)
        if m is None:
            pending = "]" not in text and "\n" not in text and len(text) <= 62
            if pending and not final:
                return ""
            # Not a tag after all (or a broken one at the very end): nothing sensible to strip.
            if final and pending:
                return ""
        else:
            text = text[m.end():]
    if final:
        return text.strip()
    return text.rstrip().rstrip("\ufffd").rstrip()


def split_reply(raw: str, strategies: bool) -> tuple[str | None, str]:
    if not strategies:
        return None, raw.strip()
    strategy, _ = split_strategy_tag(raw.strip(), "extes")
    return strategy, visible_text(raw, True, final=True)


def shows_nothing(emitted: str) -> bool:
    """True while a reply's streamed text shows a participant nothing: empty, or only strategy tags in any
    wrapping the study strips from every arm's replies ("[EV]", "(EV)", "<strategy>EV</strategy>", "EV:",
    "#EV", ...: `extes.taxonomy.visible_text_after_tags`). End-of-turn is held back until it shows text.
    The full grammar is consulted only while the text is shorter than TAG_HOLD_CHARS (the longest wrapped
    combination of labels), which keeps its cost off every decode step of a long reply."""
    if not TAG_ANYWHERE_RE.sub("", emitted).strip():
        return True
    return len(emitted) < TAG_HOLD_CHARS and not visible_text_after_tags(emitted).strip()
