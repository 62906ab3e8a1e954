"""Curation: what every example goes through before it can be trained on.

- :func:`scrub` replaces personal data and secrets by typed placeholders (``pii``);
- :func:`quality_rejection` rejects broken chats with a named reason (``quality``);
- :class:`Deduplicator` finds exact and near duplicates (``dedup``);
- :func:`curate` applies the three in that order (``pipeline``);
- :func:`cap_contributors` selects a training run in which no user or source has more than a set
  share (``caps``).

A leaf library: it imports nothing of selftune outside itself (pyproject's import-linter contract),
so that the store, the API and the worker can all use it.
"""

from __future__ import annotations

from selftune.curate.caps import CappedRun, cap_contributors
from selftune.curate.dedup import Deduplicator, DedupSettings, Duplicate, normalize
from selftune.curate.example import Example, chat_text
from selftune.curate.pii import KINDS, Scrubbed, scrub
from selftune.curate.pipeline import CurationPolicy, CurationResult, Curator, Decision, curate
from selftune.curate.quality import QualitySettings, Reason, Rejection, quality_rejection

__all__ = [
    "KINDS",
    "CappedRun",
    "CurationPolicy",
    "CurationResult",
    "Curator",
    "Decision",
    "DedupSettings",
    "Deduplicator",
    "Duplicate",
    "Example",
    "QualitySettings",
    "Reason",
    "Rejection",
    "Scrubbed",
    "cap_contributors",
    "chat_text",
    "curate",
    "normalize",
    "quality_rejection",
    "scrub",
]
