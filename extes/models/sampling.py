"""Sampling: the next token of each row from its logits, with the row's own settings and generator.

Small pure functions over tensors (the generators are the only state, and each row has its own), apart
from the scheduler that calls them once per step:
- `penalise_rows_`: repetition penalty over prompt and output, one gather and one scatter per batch;
- `nucleus_draw`: top-p draws for the rows whose nucleus lies within the top k tokens;
- `greedy_rows_`: the most likely token after the penalty;
- `draw`: one inverse-CDF draw from a row's (sorted, truncated) probabilities;
- `sample_rows`: all of it for a batch; `sample_one` for one row.
Each row draws one uniform number from its own generator, so a row gives the same token alone as in
any batch.
"""

from __future__ import annotations

import torch

from extes.models.arms import GenerationSettings

NUCLEUS_LEVELS = (64, 1024)  # top-k sizes tried for the nucleus before a full sort


def penalise_rows_(scores: torch.Tensor, settings: list[GenerationSettings], seen: list) -> None:
    """Apply each row's repetition penalty to fp32 `scores` (B, vocab) in place, for the whole batch with
    one gather and one scatter (the rows' seen ids offset into the flattened scores). The penalty commutes
    with a positive temperature (it multiplies or divides by a positive factor), so it may be applied to
    scores already divided by the temperature."""
    index, factor = [], []
    vocab = scores.shape[-1]
    for i, st in enumerate(settings):
        ids = seen[i]
        if st.repetition_penalty != 1.0 and ids is not None and ids.numel():
            index.append(ids.reshape(-1) + i * vocab)
            factor.append(torch.full((ids.numel(),), float(st.repetition_penalty), dtype=scores.dtype))
    if not index:
        return
    flat = scores.view(-1)
    index_t, factor_t = torch.cat(index), torch.cat(factor)
    picked = flat[index_t]
    flat[index_t] = torch.where(picked < 0, picked * factor_t, picked / factor_t)


def draw(probs: torch.Tensor, order: torch.Tensor | None, generator: torch.Generator) -> int:
    """Inverse-CDF draw from unnormalised `probs` (1-D) with the row's own generator; `order` maps back."""
    cum = probs.cumsum(0)
    u = torch.rand(1, generator=generator, dtype=cum.dtype) * cum[-1]
    j = int(torch.searchsorted(cum, u).clamp(max=cum.numel() - 1))
    while float(probs[j]) == 0.0 and j > 0:  # never land on a zeroed (dropped) entry
        j -= 1
    return int(order[j]) if order is not None else j


def greedy_rows_(scores: torch.Tensor, settings: list[GenerationSettings], seen: list) -> list[int]:
    """The most likely token of each row of fp32 `scores` (B, vocab) after its repetition penalty, which
    is applied to `scores` in place."""
    penalise_rows_(scores, settings, seen)
    return [int(t) for t in scores.argmax(-1).tolist()]


def nucleus_draw(probs: torch.Tensor, top_p: torch.Tensor, k: int,
                 generators: list[torch.Generator]) -> tuple[list[int | None], list[int]]:
    """Top-p draws for the rows of `probs` (R, vocab) whose nucleus lies within their top `k` tokens.

    Returns (tokens, left): a token per row (None where the nucleus is larger than k), and the indices of
    those rows. The nucleus is complete within the top k when the mass before the k-th token exceeds
    top_p; one inverse-CDF draw for all complete rows."""
    vocab = probs.shape[-1]
    k = min(k, vocab)
    top, order = probs.topk(k, dim=-1)
    cum = top.cumsum(-1)
    tp = top_p[:, None]
    done = ((cum[:, -1:] - top[:, -1:]) > tp).squeeze(1) if k < vocab else torch.ones(len(probs), dtype=torch.bool)
    out: list[int | None] = [None] * len(probs)
    at = done.nonzero().flatten()
    if at.numel():
        p, c = top[at], cum[at]
        kept = p.masked_fill((c - p) > tp[at], 0.0)  # a prefix of each row (p descending, c - p increasing)
        kc = kept.cumsum(-1)
        rows = at.tolist()
        u = torch.cat([torch.rand(1, generator=generators[r], dtype=kc.dtype) for r in rows])
        j = torch.searchsorted(kc, (u * kc[:, -1])[:, None]).squeeze(1)
        j = torch.minimum(j, ((kept > 0).sum(-1) - 1).clamp(min=0))  # never a dropped entry (as `draw`)
        for r, t in zip(rows, order[at].gather(1, j[:, None]).squeeze(1).tolist()):
            out[r] = int(t)
    return out, (~done).nonzero().flatten().tolist()


def sample_rows(logits: torch.Tensor, settings: list[GenerationSettings], seen: list,
                generators: list[torch.Generator]) -> list[int]:
    """One token per row of `logits` (B, vocab): repetition penalty (over prompt + output), temperature,
    top-p, each row with its own settings and generator. Batched: one penalty scatter, one argmax, one
    softmax for all rows, then the nucleus from the top 64 tokens (a real reply's nucleus at top-p 0.9
    had a median of 3 tokens, and more than 64 in about 1 row in 100), the rows whose nucleus is larger
    from the top 1024, and a full sort only beyond that. On the 2-core machine, 24 rows took about 17 ms
    with a top 256 and a draw row by row, and take about 7 ms now (`bench/generation.py` prints it)."""
    out: list[int | None] = [None] * len(settings)
    greedy = [i for i, st in enumerate(settings) if st.temperature == 0]
    if greedy:
        scores = logits[greedy].float()  # a copy (indexing), so the penalty leaves `logits` as it was
        tokens = greedy_rows_(scores, [settings[i] for i in greedy], [seen[i] for i in greedy])
        for i, t in zip(greedy, tokens):
            out[i] = t
    sampled = [i for i, st in enumerate(settings) if st.temperature != 0]
    if not sampled:
        return [int(t) for t in out]
    temps = torch.tensor([settings[i].temperature for i in sampled], dtype=torch.float32)[:, None]
    scores = (logits if len(sampled) == len(settings) else logits[sampled]).float() / temps  # a new tensor
    penalise_rows_(scores, [settings[i] for i in sampled], [seen[i] for i in sampled])
    probs = torch.softmax(scores, dim=-1)
    top_p = torch.tensor([settings[i].top_p for i in sampled], dtype=torch.float32)
    left = [r for r, i in enumerate(sampled) if settings[i].top_p < 1.0]  # rows of `probs` with a nucleus
    for k in NUCLEUS_LEVELS:
        if not left:
            break
        part = probs if len(left) == len(sampled) else probs[torch.tensor(left)]
        tokens, rest = nucleus_draw(part, top_p[torch.tensor(left)], k, [generators[sampled[r]] for r in left])
        for r, t in zip(left, tokens):
            if t is not None:
                out[sampled[r]] = t
        left = [left[x] for x in rest]
    for r, i in enumerate(sampled):
        if out[i] is None:
            out[i] = _full_sort_draw(probs[r], settings[i].top_p, generators[i])
    return [int(t) for t in out]


def _full_sort_draw(probs: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    """A draw from a whole row: no nucleus (top-p 1), or one larger than the top 1024 (a full sort)."""
    if top_p >= 1.0:
        return draw(probs, None, generator)
    p_sorted, o_sorted = probs.sort(descending=True)
    c_sorted = p_sorted.cumsum(0)
    return draw(p_sorted.masked_fill((c_sorted - p_sorted) > top_p, 0.0), o_sorted, generator)


def sample_one(logits: torch.Tensor, settings: GenerationSettings, seen, generator: torch.Generator) -> int:
    """One token from 1-D logits (see sample_rows)."""
    return sample_rows(logits[None], [settings], [seen], [generator])[0]
