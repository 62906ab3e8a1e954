"""Ranking: keyword and vector results fused by rank, and channels weighted by rarity.

Reciprocal rank fusion (Cormack et al., 2009) scores a record ``sum(1 / (k + rank))`` over the
lists it appears in: it needs no calibration between BM25 and cosine scores, and a record
both searches found rises above one only one of them found.

A record in a rare channel is lifted by ``tag_weight * rarity / (k + 1)``: ``rarity`` is its
rarest channel tag's inverse document frequency, ``log(N / n)``, over ``log(N)``, in [0, 1]. At
``tag_weight`` 1 a record in a channel of its own gains as much as a first place in one more
list, so many records of the most used channels do not bury it; at 0 ranking is plain fusion.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

__all__ = ["RankedHit", "fuse", "rarity"]

RRF_K = 60  # the constant of Cormack et al.; larger flattens the gap between ranks


@dataclasses.dataclass(frozen=True)
class RankedHit:
    """A fused result and where its score came from (the search API's ``explain``)."""

    record_id: int
    score: float
    keyword_rank: int | None  # 1-based; None: the keyword search did not find it
    keyword_score: float | None
    vector_rank: int | None
    vector_score: float | None  # cosine similarity
    rarity: float  # 0 (every record's channel, or none) .. 1 (a channel of its own)
    rarest_tag: str | None

    def explain(self, tag_weight: float) -> dict[str, object]:
        parts: dict[str, object] = {"rrf_k": RRF_K, "score": round(self.score, 6)}
        if self.keyword_rank is not None:
            parts["keyword"] = {
                "rank": self.keyword_rank,
                "score": self.keyword_score,
                "contributes": round(1 / (RRF_K + self.keyword_rank), 6),
            }
        if self.vector_rank is not None:
            parts["vector"] = {
                "rank": self.vector_rank,
                "similarity": self.vector_score,
                "contributes": round(1 / (RRF_K + self.vector_rank), 6),
            }
        parts["channel"] = {
            "tag": self.rarest_tag,
            "rarity": round(self.rarity, 4),
            "tag_weight": tag_weight,
            "contributes": round(tag_weight * self.rarity / (RRF_K + 1), 6),
        }
        return parts


def rarity(tag_sizes: Mapping[str, int], total: int) -> dict[str, float]:
    """Each tag's inverse document frequency over ``total`` records, scaled to [0, 1]."""
    if total <= 1:
        return dict.fromkeys(tag_sizes, 0.0)
    top = math.log(total)
    return {tag: max(0.0, math.log(total / max(n, 1))) / top for tag, n in tag_sizes.items()}


def fuse(
    keyword: Sequence[tuple[int, float]],
    vector: Sequence[tuple[int, float]],
    channels: Mapping[int, Sequence[str]],
    tag_rarity: Mapping[str, float],
    *,
    tag_weight: float,
) -> list[RankedHit]:
    """``keyword`` and ``vector`` results (id, score; best first) fused, best first.

    ``channels`` gives each record's channel tags (those users and API calls gave);
    ``tag_rarity`` their rarity (see :func:`rarity`).
    """
    keyword_at = {rid: (rank, score) for rank, (rid, score) in enumerate(keyword, 1)}
    vector_at = {rid: (rank, score) for rank, (rid, score) in enumerate(vector, 1)}
    hits = []
    for rid in dict.fromkeys([r for r, _ in keyword] + [r for r, _ in vector]):
        k_rank, k_score = keyword_at.get(rid, (None, None))
        v_rank, v_score = vector_at.get(rid, (None, None))
        score = sum(1 / (RRF_K + rank) for rank in (k_rank, v_rank) if rank is not None)
        rare_tag, rare = None, 0.0
        for tag in channels.get(rid, ()):
            if tag_rarity.get(tag, 0.0) > rare:
                rare_tag, rare = tag, tag_rarity[tag]
        score += tag_weight * rare / (RRF_K + 1)
        hits.append(RankedHit(rid, score, k_rank, k_score, v_rank, v_score, rare, rare_tag))
    hits.sort(key=lambda hit: (-hit.score, hit.record_id))
    return hits
