"""Perplexity of the gold replies under a model: exp(mean negative log-likelihood per scored token).

Each test dialogue is encoded exactly as training encodes it (extes.train.formatting.encode_dialogue:
the model's chat template, the arm's system prompt, windows for long dialogues in which every reply is
scored exactly once). Scored tokens are the assistant replies' tokens and the end-of-turn token closing
each reply; system prompt and user turns are context only. The mean is over all scored tokens of the
test set (not a mean of per-dialogue perplexities).

Strategy-trained arms: the gold reply is encoded with its gold strategy tag (`[Name] text`), as the arm
was trained. By default (`tag="context"`) the tag tokens are teacher-forced context and not scored, so
the PPL measures the reply text given the gold strategy and stays comparable with arms without tags;
`tag="scored"` scores the tag tokens too (the arm's full training loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from extes.dialogue import DEFAULT_SYSTEM_PROMPT, Dialogue
from extes.train.formatting import encode_dialogue

IGNORE = -100


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll_sum: float
    n_tokens: int
    n_windows: int


def mask_tags(tokenizer, input_ids: list[int], labels: list[int]) -> list[int]:
    """Labels with the leading `[Strategy] ` tag tokens of every scored span set to IGNORE."""
    out = list(labels)
    i = 0
    n = len(labels)
    while i < n:
        if out[i] == IGNORE:
            i += 1
            continue
        j = i
        while j < n and labels[j] != IGNORE:
            j += 1
        span = input_ids[i:j]
        if tokenizer.decode(span[:1]).lstrip().startswith("["):
            for k in range(1, len(span) + 1):
                if "]" in tokenizer.decode(span[:k]):
                    for m in range(i, i + k):
                        out[m] = IGNORE
                    break
        i = j
    return out


def encode_for_ppl(tokenizer, dialogues: Sequence[Dialogue], strategies: bool, tag: str = "context",
                   system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, with_scene: bool = False,
                   max_length: int = 1024):
    if tag not in {"context", "scored"}:
        raise ValueError(f"tag must be 'context' or 'scored', got {tag!r}")
    examples = []
    for d in dialogues:
        for enc in encode_dialogue(tokenizer, d, strategies=strategies, with_scene=with_scene,
                                   system_prompt=system_prompt, max_length=max_length):
            labels = mask_tags(tokenizer, enc.input_ids, enc.labels) if strategies and tag == "context" else enc.labels
            if any(x != IGNORE for x in labels):
                examples.append((enc.input_ids, labels))
    return examples


def perplexity(model, tokenizer, dialogues: Sequence[Dialogue], strategies: bool = False, tag: str = "context",
               system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, with_scene: bool = False,
               max_length: int = 1024, batch_size: int = 4) -> PerplexityResult:
    """Gold-reply perplexity of `model` on `dialogues` (see module doc)."""
    import torch

    examples = encode_for_ppl(tokenizer, dialogues, strategies, tag, system_prompt, with_scene, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda k: len(examples[k][0]))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [examples[k] for k in order[start:start + batch_size]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (x, y) in enumerate(batch):
                ids[r, :len(x)] = torch.tensor(x)
                labels[r, :len(y)] = torch.tensor(y)
                mask[r, :len(x)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            # token t is predicted from positions < t
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(device)
            loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE,
                                                     reduction="sum")
            nll += float(loss)
            count += int((shift_labels != IGNORE).sum())
    ppl = math.exp(nll / count) if count else float("nan")
    return PerplexityResult(ppl=ppl, nll_sum=nll, n_tokens=count, n_windows=len(examples))
