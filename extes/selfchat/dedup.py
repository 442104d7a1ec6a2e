"""Near- and exact-duplicate detection for generated dialogues.

Near duplicates: MinHash over word 3-shingles of a dialogue's text, indexed with datasketch's LSH;
the LSH candidates are confirmed with the exact shingle Jaccard (so the threshold means what it
says). Exact duplicates: a set of normalised turn texts (long enough to be meaningful; "Thank you."
in two dialogues is not a copy).
"""

from __future__ import annotations

import hashlib
import re

from datasketch import MinHash, MinHashLSH

from extes.dialogue import Dialogue

_WORD_RE = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def shingles(text: str, n: int = 3) -> set[str]:
    w = words(text)
    if len(w) < n:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def dialogue_text(d: Dialogue) -> str:
    return " ".join([d.description] + [t.text for t in d.turns])


def turn_key(text: str) -> str:
    return hashlib.sha1(" ".join(words(text)).encode()).hexdigest()


class NearDupIndex:
    """Everything accepted so far; `query` returns (key, jaccard) of the closest match at or above
    the threshold, or None."""

    def __init__(self, threshold: float = 0.5, num_perm: int = 128, ngram: int = 3):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        # a lower LSH threshold than the confirmed one, so true matches are rarely missed
        self._lsh = MinHashLSH(threshold=max(0.05, threshold * 0.7), num_perm=num_perm)
        self._shingles: dict[str, set[str]] = {}
        proto = MinHash(num_perm=num_perm)  # permutations computed once, shared by all
        self._perms, self._scheme = proto.permutations, proto.scheme
        self._last: tuple[str, set[str], MinHash] | None = None  # query(text) then add(key, text)

    def _minhash(self, sh: set[str]) -> MinHash:
        m = MinHash(num_perm=self.num_perm, permutations=self._perms, scheme=self._scheme)
        m.update_batch([s.encode() for s in sh])
        return m

    def _prepare(self, text: str) -> tuple[set[str], MinHash | None]:
        if self._last is not None and self._last[0] == text:
            return self._last[1], self._last[2]
        sh = shingles(text, self.ngram)
        mh = self._minhash(sh) if sh else None
        self._last = (text, sh, mh)
        return sh, mh

    def __len__(self) -> int:
        return len(self._shingles)

    def add(self, key: str, text: str) -> None:
        if key in self._shingles:
            return
        sh, mh = self._prepare(text)
        self._shingles[key] = sh
        if mh is not None:
            self._lsh.insert(key, mh)

    def query(self, text: str) -> tuple[str, float] | None:
        if not self._shingles:
            return None
        sh, mh = self._prepare(text)
        if mh is None:
            return None
        best: tuple[str, float] | None = None
        for key in self._lsh.query(mh):
            j = jaccard(sh, self._shingles[key])
            if j >= self.threshold and (best is None or j > best[1]):
                best = (key, j)
        return best


class TurnIndex:
    """Exact duplicate turns (normalised text with at least `min_words` words)."""

    def __init__(self, min_words: int = 6):
        self.min_words = min_words
        self._owner: dict[str, str] = {}

    def add(self, key: str, d: Dialogue) -> None:
        for t in d.turns:
            if len(words(t.text)) >= self.min_words:
                self._owner.setdefault(turn_key(t.text), key)

    def duplicates(self, d: Dialogue) -> list[tuple[int, str]]:
        """(turn index, owning dialogue key) for each turn already seen elsewhere."""
        out = []
        for i, t in enumerate(d.turns):
            if len(words(t.text)) >= self.min_words:
                owner = self._owner.get(turn_key(t.text))
                if owner is not None:
                    out.append((i, owner))
        return out
