"""Batched sampling: each row its own settings and generator; top-p exact without a full sort."""

from __future__ import annotations

import math
from collections import Counter

import torch

from extes.models.arms import GenerationSettings
from extes.models.sampling import sample_rows


def _logits(probs):
    return torch.tensor([math.log(p) for p in probs])


def test_top_p_keeps_exactly_the_nucleus_and_its_proportions():
    probs = [0.5, 0.3, 0.15, 0.05]
    st = GenerationSettings(temperature=1.0, top_p=0.7, repetition_penalty=1.0)
    g = torch.Generator().manual_seed(0)
    counts = Counter(sample_rows(_logits(probs)[None], [st], [None], [g])[0] for _ in range(3000))
    assert set(counts) == {0, 1}  # 0.5 + 0.3 reaches 0.7; token 2 starts after 0.8 > 0.7
    assert abs(counts[0] / 3000 - 0.5 / 0.8) < 0.04


def test_a_nucleus_larger_than_the_top_k_shortcut_is_still_exact():
    vocab = 2000
    st = GenerationSettings(temperature=1.0, top_p=0.5, repetition_penalty=1.0)
    logits = torch.zeros(vocab)
    logits[:1000] = 1.0  # 1000 equally likely tokens hold e/(e+1) = 73% of the mass
    g = torch.Generator().manual_seed(1)
    seen = {sample_rows(logits[None], [st], [None], [g])[0] for _ in range(2000)}
    assert len(seen) > 256 and max(seen) < 1000


def test_rows_keep_their_own_settings_and_generators_in_one_batch():
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(2)) * 3
    greedy = GenerationSettings(temperature=0.0, repetition_penalty=1.0)
    hot = GenerationSettings(temperature=1.0, top_p=0.95, repetition_penalty=1.0)
    pen = GenerationSettings(temperature=0.0, repetition_penalty=1e6)
    top = int(logits[2].argmax())

    def run():
        gens = [torch.Generator().manual_seed(s) for s in (0, 7, 0)]
        return [sample_rows(logits, [greedy, hot, pen], [None, None, torch.tensor([top])], gens) for _ in range(20)]

    a, b = run(), run()
    assert a == b  # seeded: reproducible
    assert all(row[0] == int(logits[0].argmax()) for row in a)
    assert len({row[1] for row in a}) > 1  # the sampled row varies across draws
    assert all(row[2] != top for row in a)  # the repetition penalty pushed the seen token down
    # one row alone gives the same token as in the batch (same generator state)
    alone = sample_rows(logits[1:2], [hot], [None], [torch.Generator().manual_seed(7)])[0]
    assert alone == a[0][1]


def _reference(logits, st, seen, generator) -> int:
    """The textbook way, one row: penalty, temperature, softmax, full sort, nucleus, inverse-CDF draw."""
    x = logits.clone()
    if seen is not None and st.repetition_penalty != 1.0:
        picked = x[seen]
        x[seen] = torch.where(picked < 0, picked * st.repetition_penalty, picked / st.repetition_penalty)
    p, order = torch.softmax(x / st.temperature, -1).sort(descending=True)
    kept = p.masked_fill((p.cumsum(0) - p) > st.top_p, 0.0)
    cum = kept.cumsum(0)
    u = torch.rand(1, generator=generator) * cum[-1]
    return int(order[int(torch.searchsorted(cum, u).clamp(max=cum.numel() - 1))])


def test_batched_levels_draw_what_a_full_sort_draws_row_by_row():
    """Rows whose nucleus ends within the top 64, within the top 1024 and beyond it, with and without a
    repetition penalty, in one batch: each row's token is the one the one-row full-sort reference draws from
    the same generator state, and `logits` is left unchanged."""
    vocab, rows = 5000, 12
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(rows, vocab, generator=g)
    for r in range(rows):  # peaked (small nucleus), middling and flat rows
        logits[r, : 5 + 40 * r] += [8.0, 3.0, 0.3][r % 3]
    before = logits.clone()
    settings = [GenerationSettings(temperature=[0.7, 1.0, 1.3][r % 3], top_p=[0.9, 0.5, 0.95][r % 4 % 3],
                                   repetition_penalty=[1.0, 1.1][r % 2]) for r in range(rows)]
    seen = [torch.randint(0, vocab, (50,), generator=g).unique() for _ in range(rows)]
    for trial in range(30):
        gens = [torch.Generator().manual_seed(100 * trial + r) for r in range(rows)]
        refs = [torch.Generator().manual_seed(100 * trial + r) for r in range(rows)]
        got = sample_rows(logits, settings, seen, gens)
        want = [_reference(logits[r], settings[r], seen[r], refs[r]) for r in range(rows)]
        assert got == want
    assert torch.equal(logits, before)
    sizes = []
    for r in range(rows):
        p = torch.softmax(logits[r] / settings[r].temperature, -1).sort(descending=True)[0]
        sizes.append(int(((p.cumsum(0) - p) <= settings[r].top_p).sum()))
    assert min(sizes) <= 64 and any(64 < s <= 1024 for s in sizes) and max(sizes) > 1024


def test_nucleus_draw_takes_rows_whose_nucleus_fits_in_the_top_k_and_leaves_the_others():
    """The pure step of the batched sampler: a peaked row's nucleus lies in its top 2 tokens and is drawn
    from them; a flat row's does not, so it is left for a larger k (its token None)."""
    from extes.models.sampling import nucleus_draw

    probs = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.25, 0.25, 0.25, 0.25]])
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    tokens, left = nucleus_draw(probs, torch.tensor([0.5, 0.5]), 2, gens)
    assert tokens == [0, None] and left == [1]
    tokens, left = nucleus_draw(probs[1:], torch.tensor([0.5]), 4, gens[1:])
    assert tokens[0] in (0, 1, 2, 3) and left == []
