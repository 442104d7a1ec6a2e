"""Dialogues -> token ids and loss labels, shared by every training method and by evaluation.

One example per dialogue, every assistant turn supervised. The text is exactly what the base model's
chat template renders, tokenized piece by piece so each token is known to belong to the context
(label -100) or to an assistant reply (label = token id): the reply's content, its strategy tag when
training with strategies, and the end-of-turn token that closes it (`<|im_end|>` for ChatML). Pieces are
cut at the template's own boundaries, so the context tokens equal what the engine feeds the model at
inference (`apply_chat_template(..., add_generation_prompt=True)`).

A dialogue longer than `max_length` is split into windows. Each window keeps the system prompt, starts
at a user turn, carries some earlier turns as unsupervised context (the oldest are dropped) and
supervises assistant turns not supervised in an earlier window, so every reply is learnt exactly once.

DialoGPT style is a chat template too (`DIALOGPT_TEMPLATE`: utterances joined by EOS), so the same code
encodes it and a model saved with that template generates the same way in the engine.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from extes.dialogue import DEFAULT_SYSTEM_PROMPT, Dialogue, to_chat_messages

IGNORE = -100

# DialoGPT was trained on whole conversations joined by EOS. A system message (our support prompt, or
# the scene) becomes leading context in the same form; add_generation_prompt adds nothing.
DIALOGPT_TEMPLATE = "{% for message in messages %}{{ message['content'] + eos_token }}{% endfor %}"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


class FormattingError(ValueError):
    """The tokenizer's chat template cannot be split into context and reply pieces."""


def ensure_chat_template(tokenizer, chat_format: str = "auto") -> str:
    """Give `tokenizer` the template training will use and return which: 'template' or 'dialogpt'.

    'auto' keeps the tokenizer's own template and falls back to DialoGPT style when it has none.
    """
    if chat_format not in {"auto", "template", "dialogpt"}:
        raise ValueError(f"unknown chat format {chat_format!r}; expected 'auto', 'template' or 'dialogpt'")
    if chat_format == "dialogpt" or (chat_format == "auto" and not getattr(tokenizer, "chat_template", None)):
        if tokenizer.eos_token is None:
            raise FormattingError("DialoGPT-style formatting needs a tokenizer with an EOS token")
        tokenizer.chat_template = DIALOGPT_TEMPLATE
        return "dialogpt"
    if not getattr(tokenizer, "chat_template", None):
        raise FormattingError("the tokenizer has no chat template; use chat_format 'dialogpt' or 'auto'")
    return "template"


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _end_marker_end(tokenizer, text: str) -> int | None:
    """End offset of the first end-of-turn marker (EOS or another special token) in `text`, or None."""
    markers = [m for m in dict.fromkeys([tokenizer.eos_token, *getattr(tokenizer, "all_special_tokens", [])]) if m]
    best: tuple[int, int] | None = None
    for m in markers:
        i = text.find(m)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(m))
    return None if best is None else best[1]


def _pieces(tokenizer, messages: list[dict]) -> list[tuple[str, bool, int]]:
    """Split the rendered conversation into (text, supervised, message index) pieces.

    Raises FormattingError when the template re-renders earlier messages differently as the
    conversation grows (no prefix property), naming the message.
    """
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    pieces: list[tuple[str, bool, int]] = []
    done = ""  # text rendered so far
    for i, m in enumerate(clean):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, clean[:i], generation_prompt=True)
        full = _render(tokenizer, clean[: i + 1], generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise FormattingError(
                f"message {i}: the chat template does not render the conversation as a growing prefix, "
                "so replies cannot be separated from context; use chat_format 'dialogpt'"
            )
        segment = full[len(prompt):]
        content = m["content"]
        at = segment.find(content) if content else 0
        if at < 0:
            content = content.strip()
            at = segment.find(content)
        if at < 0:
            raise FormattingError(f"message {i}: the chat template changed the assistant text; cannot mask it")
        head = prompt[len(done):] + segment[:at]
        rest = segment[at + len(content):]
        end = _end_marker_end(tokenizer, rest)
        if end is None:  # template without an end-of-turn marker: close the reply with EOS ourselves
            reply, tail = content + (tokenizer.eos_token or ""), rest
        else:
            reply, tail = content + rest[:end], rest[end:]
        if head:
            pieces.append((head, False, i))
        pieces.append((reply, True, i))
        if tail:
            pieces.append((tail, False, i))
        done = full
    return pieces


def _tok(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _encode_window(tokenizer, messages: list[dict], supervise: set[int]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for text, supervised, index in _pieces(tokenizer, messages):
        t = _tok(tokenizer, text)
        ids += t
        labels += t if supervised and index in supervise else [IGNORE] * len(t)
    return ids, labels


def encode_messages(tokenizer, messages: Sequence[dict], max_length: int = 1024) -> list[Encoded]:
    """Encode OpenAI-style messages (optional leading system message, then user/assistant turns) into
    one example, or into several windows when longer than `max_length` tokens (see module doc).

    Extra keys on a message (e.g. the engine's "strategy") are ignored: put tags in the content.
    """
    if max_length < 8:
        raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
    messages = list(messages)
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in {"system", "user", "assistant"} or not isinstance(
            m.get("content"), str
        ):
            raise ValueError(f"message {j}: expected {{'role': system|user|assistant, 'content': str}}, got {m!r}")
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    if any(m["role"] == "system" for m in turns):
        raise ValueError("only the first message may be a system message")
    targets = [i for i, m in enumerate(turns) if m["role"] == "assistant"]
    if not targets:
        return []

    def window(a: int, b: int, sup: Iterable[int]) -> tuple[list[int], list[int]]:
        # indices are positions in `turns`; shift by len(system) for the rendered list
        off = len(system)
        return _encode_window(tokenizer, system + turns[a:b], {i - a + off for i in sup})

    ids, labels = window(0, len(turns), targets)
    if len(ids) <= max_length:
        return [Encoded(ids, labels)]

    sys_len = len(_tok(tokenizer, _render(tokenizer, system, generation_prompt=False)))
    if sys_len >= max_length - 4:
        raise ValueError(f"the system prompt alone takes {sys_len} tokens, more than max_length={max_length} allows")

    def starts_before(t: int) -> list[int]:
        """Window starts for a first target t: user turns (or t itself), latest first."""
        cands = [a for a in range(t, -1, -1) if turns[a]["role"] == "user"]
        return cands or [t]

    out: list[Encoded] = []
    k = 0  # index into targets of the first reply not yet supervised
    while k < len(targets):
        t = targets[k]
        # Context: the earliest start whose window up to and including reply t uses at most half the budget.
        starts = starts_before(t)
        a = starts[0]
        for cand in starts:
            if len(window(cand, t + 1, [t])[0]) <= max_length // 2:
                a = cand
            else:
                break
        # Targets: as many further replies as still fit.
        kk = k + 1
        while kk < len(targets) and len(window(a, targets[kk] + 1, [])[0]) <= max_length:
            kk += 1
        sup = targets[k:kk]
        ids, labels = window(a, sup[-1] + 1, sup)
        if len(ids) > max_length:  # one exchange alone is too long: shorten its text, keep the template intact
            ids, labels = _shortened(tokenizer, system, turns[a:t + 1], max_length)
        out.append(Encoded(ids, labels))
        k = kk
    return out


def _fit(n: int, fits) -> int:
    """Largest m in [0, n] with fits(m) true (fits is monotone decreasing in m), or -1."""
    lo, hi, best = 0, n, -1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _shortened(tokenizer, system: list[dict], msgs: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """Encode [system, context..., reply] in `max_length` tokens: first keep less of the context (its
    oldest characters go first), then cut the reply's end (its end-of-turn token stays)."""
    reply = msgs[-1]
    context = "\n".join(m["content"] for m in msgs[:-1])
    role = msgs[0]["role"] if len(msgs) > 1 else "user"

    def build(ctx_chars: int | None, reply_chars: int) -> tuple[list[int], list[int]]:
        ctx = [{"role": role, "content": context[len(context) - ctx_chars:]}] if ctx_chars is not None else []
        r = {"role": "assistant", "content": reply["content"][:reply_chars]}
        return _encode_window(tokenizer, system + ctx + [r], {len(system) + len(ctx)})

    full_reply = len(reply["content"])
    keep = _fit(len(context), lambda c: len(build(c, full_reply)[0]) <= max_length) if len(msgs) > 1 else -1
    if keep >= 0:
        return build(keep, full_reply)
    keep_reply = _fit(full_reply, lambda r: len(build(None, r)[0]) <= max_length)
    if keep_reply < 1:
        raise ValueError(f"max_length={max_length} leaves no room for a reply after the system prompt")
    return build(None, keep_reply)


def encode_dialogue(
    tokenizer,
    dialogue: Dialogue,
    strategies: bool,
    with_scene: bool = False,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_length: int = 1024,
) -> list[Encoded]:
    """Encode one dialogue (see `encode_messages`); with `strategies`, each reply starts with its tag."""
    messages = to_chat_messages(dialogue, system_prompt=system_prompt, strategies=strategies, with_scene=with_scene)
    try:
        return encode_messages(tokenizer, messages, max_length=max_length)
    except ValueError as exc:
        raise type(exc)(f"dialogue {dialogue.id}: {exc}") from None


def encode_dialogues(tokenizer, dialogues: Iterable[Dialogue], strategies: bool, with_scene: bool = False,
                     system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, max_length: int = 1024) -> list[Encoded]:
    out: list[Encoded] = []
    for d in dialogues:
        out.extend(encode_dialogue(tokenizer, d, strategies, with_scene, system_prompt, max_length))
    return [e for e in out if e.n_supervised]


# ----------------------------------------------------------------------------------------------------------
# Batching


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                           group_factor: int = 16) -> list[list[int]]:
    """Batches of example indices with similar lengths, so little padding is needed.

    Shuffle, cut into groups of `batch_size * group_factor`, sort each group by length, slice into
    batches and shuffle the batch order: random enough for SGD, tight enough for padding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    group = max(batch_size, batch_size * group_factor)
    batches: list[list[int]] = []
    for g in range(0, len(order), group):
        chunk = sorted(order[g:g + group], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def padding_waste(lengths: Sequence[int], batches: Sequence[Sequence[int]], pad_to: int | None = None) -> float:
    """Share of padded positions: 1 - real tokens / (batch rows x padded length)."""
    real = total = 0
    for b in batches:
        width = pad_to or max(lengths[i] for i in b)
        real += sum(lengths[i] for i in b)
        total += width * len(b)
    return 0.0 if total == 0 else 1.0 - real / total


def collate(examples: Sequence[Encoded], pad_id: int, pad_to: int | None = None) -> dict:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = pad_to or max(len(e) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, e in enumerate(examples):
        L = min(len(e), width)
        input_ids[r, :L] = torch.tensor(e.input_ids[:L])
        labels[r, :L] = torch.tensor(e.labels[:L])
        mask[r, :L] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
