"""Which arms a conversation shows, in which panes: a balanced design over k arms in 2 or 3 panes.

The design's selections are the ordered tuples `itertools.permutations(range(k), panes)`: selection i puts
arm `selections[i][p]` in pane p. With k = 3 arms in 3 panes these are the six orders of the paper's design
(`extes.study.assignment.ORDERS`, the same indices). A conversation's selection index is stored with it
(`order_index`), so the store's per-index counts are all the state the design needs.

- **balanced** (the default): the least-used selection first, as the paper's design does for its six
  orders. Where several are least used and the design is incomplete (fewer panes than arms), the tie is
  broken towards the selection whose arms, unordered pairs and (arm, pane) places have been used least,
  then at random. Every full round of selections uses every arm, pair and place equally; between rounds
  the tie-break keeps them close (a test checks every count within one of equal after 300 conversations).
  A complete design (panes == arms) keeps today's rule exactly: uniform among the least-used orders.
- **adaptive**: the pair of arms whose Bradley-Terry interval is widest so far is shown next (Chatbot
  Arena samples pairs this way, to spend votes where the ranking is least certain); among the selections
  holding that pair (and, with 3 panes, the third arm that best widens the set), the least-used order
  first, so panes stay balanced. With no votes yet it is the balanced design.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

ASSIGNMENTS: tuple[str, ...] = ("balanced", "adaptive")
PANE_COUNTS: tuple[int, ...] = (2, 3)
PANE_LETTERS: tuple[str, ...] = ("A", "B", "C")

Pair = tuple[int, int]  # two arm indices, smaller first


def pair(i: int, j: int) -> Pair:
    return (i, j) if i < j else (j, i)


def pane_names(panes: int) -> tuple[str, ...]:
    """The panes' letters of a design with `panes` panes: ("A", "B") or ("A", "B", "C")."""
    if panes not in PANE_COUNTS:
        raise ValueError(f"panes must be one of {', '.join(map(str, PANE_COUNTS))}, got {panes!r}")
    return PANE_LETTERS[:panes]


def pane_pairs(panes: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Every pair of panes on screen, left before right: (A, B), (A, C), (B, C) for three panes."""
    return tuple(itertools.combinations(panes, 2))


@dataclass(frozen=True)
class Usage:
    """How often each arm, unordered pair of arms and (arm, pane position) was used so far."""

    arms: Counter = field(default_factory=Counter)
    pairs: Counter = field(default_factory=Counter)
    places: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Design:
    """k arms shown `panes` at a time; `selections[i]` holds the arm indices of panes A, B (, C)."""

    k: int
    panes: int = 3

    def __post_init__(self) -> None:
        pane_names(self.panes)
        if self.k < self.panes:
            raise ValueError(f"{self.panes} panes need at least {self.panes} arms, got {self.k}")

    @property
    def selections(self) -> tuple[tuple[int, ...], ...]:
        return _selections(self.k, self.panes)

    @property
    def size(self) -> int:
        return len(self.selections)

    @property
    def complete(self) -> bool:
        """Every conversation shows every arm (the paper's design: 3 arms in 3 panes)."""
        return self.k == self.panes

    def arms(self, names: Sequence[str], index: int) -> list[str]:
        """Arm names in pane order for selection `index`."""
        if len(names) != self.k:
            raise ValueError(f"this design has {self.k} arms, got {len(names)} names")
        return [names[i] for i in self.selections[index]]

    def usage(self, counts: Sequence[int]) -> Usage:
        """Arm, pair and place counts implied by per-selection counts."""
        self._check(counts)
        use = Usage()
        for sel, n in zip(self.selections, counts):
            if not n:
                continue
            for pos, a in enumerate(sel):
                use.arms[a] += n
                use.places[(a, pos)] += n
            for a, b in itertools.combinations(sel, 2):
                use.pairs[pair(a, b)] += n
        return use

    def _check(self, counts: Sequence[int]) -> None:
        if len(counts) != self.size:
            raise ValueError(f"expected {self.size} selection counts (k={self.k}, panes={self.panes}), got {len(counts)}")

    def least_used(self, counts: Sequence[int], candidates: Sequence[int] | None = None) -> list[int]:
        """The selections a balanced design may take next (among `candidates`, default all): the least-used
        ones; for an incomplete design, of the arm sets used least (then those whose pairs and arms were
        used least), the least-used orders, preferring one that completes a started rotation of its set
        (a rotation puts each of its arms once in each pane), then the one whose (arm, pane) places were
        used least."""
        self._check(counts)
        pool = list(range(self.size)) if candidates is None else list(candidates)
        if self.complete:
            low = min(counts[i] for i in pool)
            return [i for i in pool if counts[i] == low]
        use = self.usage(counts)
        set_use: Counter = Counter()
        for sel, n in zip(self.selections, counts):
            set_use[frozenset(sel)] += n
        low = min(set_use[frozenset(self.selections[i])] for i in pool)
        pool = [i for i in pool if set_use[frozenset(self.selections[i])] == low]

        def set_score(i: int) -> tuple[int, int]:
            sel = self.selections[i]
            return (sum(use.pairs[pair(a, b)] for a, b in itertools.combinations(sel, 2)),
                    sum(use.arms[a] for a in sel))

        best_set = min(map(set_score, pool))
        pool = [i for i in pool if set_score(i) == best_set]
        low = min(counts[i] for i in pool)
        pool = [i for i in pool if counts[i] == low]

        def order_score(i: int) -> tuple[int, int]:
            rotation = [counts[j] for j in self.rotation(i)]
            started = max(rotation) > min(rotation)
            return (0 if started else 1, sum(use.places[(a, pos)] for pos, a in enumerate(self.selections[i])))

        best = min(map(order_score, pool))
        return [i for i in pool if order_score(i) == best]

    def rotation(self, index: int) -> list[int]:
        """The selections that rotate selection `index` ((a, b, c), (b, c, a), (c, a, b)): together they
        put each of its arms once in each pane."""
        sel = self.selections[index]
        n = len(sel)
        return [_index(self.k, self.panes)[tuple(sel[(i + r) % n] for i in range(n))] for r in range(n)]

    def choose_balanced(self, counts: Sequence[int], rng: random.Random) -> int:
        return rng.choice(self.least_used(counts))

    def choose_adaptive(self, counts: Sequence[int], widths: Mapping[Pair, float], rng: random.Random) -> int:
        """The selection showing the pair with the widest interval (`widths`, by arm-index pair; a pair
        missing from it has never been compared: infinitely wide). No widths: balanced."""
        self._check(counts)
        if not widths:
            return self.choose_balanced(counts, rng)

        def width(a: int, b: int) -> float:
            return widths.get(pair(a, b), math.inf)

        def key(sel: tuple[int, ...]) -> tuple[float, float]:  # its widest pair, then all its pairs
            ws = [width(a, b) for a, b in itertools.combinations(sel, 2)]
            return max(ws), sum(ws)

        best = max(key(sel) for sel in self.selections)
        sets = {frozenset(sel) for sel in self.selections if key(sel) == best}
        chosen = rng.choice(sorted(sorted(s) for s in sets))
        candidates = [i for i, sel in enumerate(self.selections) if set(sel) == set(chosen)]
        return rng.choice(self.least_used(counts, candidates))


_CACHE: dict[tuple[int, int], tuple[tuple[int, ...], ...]] = {}
_INDEX: dict[tuple[int, int], dict[tuple[int, ...], int]] = {}


def _index(k: int, panes: int) -> dict[tuple[int, ...], int]:
    if (k, panes) not in _INDEX:
        _INDEX[(k, panes)] = {sel: i for i, sel in enumerate(_selections(k, panes))}
    return _INDEX[(k, panes)]


def _selections(k: int, panes: int) -> tuple[tuple[int, ...], ...]:
    if (k, panes) not in _CACHE:
        _CACHE[(k, panes)] = tuple(itertools.permutations(range(k), panes))
    return _CACHE[(k, panes)]


Chooser = Callable[[list[int]], tuple[int, list[str]]]


def chooser(design: Design, arm_names: Sequence[str], rng: random.Random | None = None,
            widths: Mapping[Pair, float] | None = None) -> Chooser:
    """A `choose_order(counts)` callback for `Store.create_conversation`: balanced, or adaptive when
    `widths` (Bradley-Terry interval widths by pair, from the votes so far) is given."""
    names = list(arm_names)
    rng = rng or random.SystemRandom()

    def choose(counts: list[int]) -> tuple[int, list[str]]:
        idx = design.choose_adaptive(counts, widths, rng) if widths else design.choose_balanced(counts, rng)
        return idx, design.arms(names, idx)
    return choose
