"""Tags: the knowledge channels a memory record belongs to, and where they come from.

A tag is given by the user or the API call, by the importer (``site:``, ``file:``, ``folder:``)
or found in the text (its keywords). Tags are compared without case: they are stored lower-cased,
stripped, with inner runs of spaces made one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import PurePosixPath
from urllib.parse import urlsplit

__all__ = [
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "STOPWORDS",
    "TagError",
    "import_tags",
    "keyword_tags",
    "normalize_tag",
    "normalize_tags",
]

MAX_TAGS, MAX_TAG_CHARS = 32, 64

_WORD = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]{2,}", re.UNICODE)
# Words too common to name a channel: English function words and chat filler.
_STOPWORD_TEXT = """
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it
its itself just like me more most my myself no nor not now of off on once only or other our
ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
yes please thanks thank hello hi okay ok sure well one two get got make made use used using
know think want need tell said say says way thing things much many may might must shall
let lets it's i'm don't can't won't isn't aren't what's that's there's here's
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


class TagError(ValueError):
    """Tags that cannot be stored; the message says which limit was passed."""


def normalize_tag(tag: str) -> str:
    """``tag`` lower-cased and stripped, with inner whitespace made single spaces."""
    return " ".join(tag.lower().split())


def normalize_tags(tags: Iterable[str]) -> list[str]:
    """Normalized tags without empty or repeated ones, in their first order; too many or too
    long ones raise :class:`TagError`."""
    kept = list(dict.fromkeys(t for t in (normalize_tag(tag) for tag in tags) if t))
    if len(kept) > MAX_TAGS or any(len(t) > MAX_TAG_CHARS for t in kept):
        raise TagError(f"at most {MAX_TAGS} tags of at most {MAX_TAG_CHARS} characters each")
    return kept


def keyword_tags(text: str, count: int) -> list[str]:
    """The ``count`` most frequent content words of ``text`` (4 letters or more, not stop
    words), ties broken by first appearance: a cheap, deterministic topic label."""
    if count <= 0:
        return []
    words = [w.lower() for w in _WORD.findall(text)]
    counts = Counter(w for w in words if len(w) >= 4 and w not in STOPWORDS)
    first = {w: i for i, w in reversed(list(enumerate(words)))}
    ranked = sorted(counts, key=lambda w: (-counts[w], first[w]))
    return [w[:MAX_TAG_CHARS] for w in ranked[:count]]


def import_tags(source: str, kind: str) -> list[str]:
    """The importer's tags for a source: ``site:<host>`` for a URL; ``file:<name>`` and
    ``folder:<parent>`` for a file (its parent folder, when the name carries one)."""
    if kind == "url":
        host = urlsplit(source).hostname
        return [f"site:{host.removeprefix('www.')}"[:MAX_TAG_CHARS]] if host else []
    if kind == "file":
        path = PurePosixPath(source.replace("\\", "/"))
        tags = [f"file:{path.name}"[:MAX_TAG_CHARS].lower()] if path.name else []
        if path.parent.name:
            tags.append(f"folder:{path.parent.name}"[:MAX_TAG_CHARS].lower())
        return tags
    return []
