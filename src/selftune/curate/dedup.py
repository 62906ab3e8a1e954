"""Exact and near-duplicate detection, one example at a time.

Training on the same chat many times over-weights it (a model memorises what it sees repeatedly),
and a contributor can flood a run with small variations of one chat. Exact duplicates are found by
a hash of the normalized text; near duplicates (a few words changed, added or removed, a clause
moved, case and punctuation changed) by MinHash signatures over word shingles, indexed with
locality-sensitive hashing (datasketch's :class:`MinHashLSH`) so that each new example is compared
with a few candidates rather than all earlier ones. A candidate counts only when the signatures'
estimated Jaccard similarity reaches the threshold, since LSH's banding also lets some less
similar pairs through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata

from datasketch import MinHash, MinHashLSH

__all__ = ["DedupSettings", "Deduplicator", "Duplicate", "normalize", "shingles"]

_NOT_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """``text`` with the differences that do not change what it says removed: Unicode
    compatibility forms folded (NFKC), case folded, punctuation and runs of whitespace made one
    space. Placeholders such as ``[EMAIL]`` survive as words."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub(" ", folded).strip()


def shingles(normalized: str, size: int) -> set[bytes]:
    """The word ``size``-grams of a normalized text (the whole text when it is shorter)."""
    words = normalized.split()
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


@dataclasses.dataclass(frozen=True)
class DedupSettings:
    """How near counts as a duplicate. The defaults were chosen with bench/curation.py on a
    tuning seed (see docs/curation.md): word pairs keep a one-word edit from breaking more than
    two shingles in a chat of a few dozen words, and 0.5 separates edited copies from chats that
    only share phrasing."""

    shingle_size: int = 2  # words per shingle
    num_perm: int = 128  # MinHash permutations: more is a finer estimate, slower
    threshold: float = 0.5  # estimated Jaccard similarity from which a chat is a near duplicate

    def __post_init__(self) -> None:
        if self.shingle_size < 1:
            raise ValueError(f"shingle_size must be at least 1, not {self.shingle_size}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], not {self.threshold}")
        if self.num_perm < 16:
            raise ValueError(f"num_perm must be at least 16 for a usable estimate: {self.num_perm}")


@dataclasses.dataclass(frozen=True)
class Duplicate:
    """A later text that repeats an earlier one: ``of`` is the earlier one's key."""

    of: str
    exact: bool
    similarity: float  # 1.0 for exact duplicates, else the estimated Jaccard similarity


class Deduplicator:
    """Fed texts one at a time; keeps the first of each group and says which earlier text each
    later one duplicates. Only kept texts are indexed, so a chain of small edits is measured
    against the first text, not drift away from it step by step."""

    def __init__(self, settings: DedupSettings | None = None) -> None:
        self.settings = settings or DedupSettings()
        self._exact: dict[bytes, str] = {}
        self._signatures: dict[str, MinHash] = {}
        self._lsh = MinHashLSH(threshold=self.settings.threshold, num_perm=self.settings.num_perm)
        # Drawing the permutations is a third of a signature's cost: copies of one empty
        # signature share them.
        self._empty = MinHash(num_perm=self.settings.num_perm)

    def __len__(self) -> int:
        return len(self._exact)

    def check(self, key: str, text: str) -> Duplicate | None:
        """The duplicate ``text`` (known as ``key``) is of an earlier kept text; or None, and then
        it is kept and indexed. ``key`` must be unique among kept texts."""
        normalized = normalize(text)
        digest = hashlib.blake2b(normalized.encode(), digest_size=16).digest()
        if digest in self._exact:
            return Duplicate(self._exact[digest], exact=True, similarity=1.0)
        signature = self._empty.copy()
        signature.update_batch(list(shingles(normalized, self.settings.shingle_size)))
        best: Duplicate | None = None
        for candidate in self._lsh.query(signature):
            similarity = signature.jaccard(self._signatures[candidate])
            if similarity >= self.settings.threshold and (
                best is None or similarity > best.similarity
            ):
                best = Duplicate(candidate, exact=False, similarity=similarity)
        if best is not None:
            return best
        self._exact[digest] = key
        self._signatures[key] = signature
        self._lsh.insert(key, signature)
        return None
