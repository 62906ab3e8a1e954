"""``curate``: every example, before it can be trained on, scrubbed of personal data, checked
for quality and deduplicated, in that order, with the reason for each rejection.

Scrubbing comes first so that nothing unscrubbed is kept past this point (and so that two chats
that differ only in an email address are duplicates); quality before deduplication so that a
rejected chat does not become the "original" a later good copy is measured against.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

from selftune.curate.dedup import Deduplicator, DedupSettings, normalize
from selftune.curate.example import Example, chat_text
from selftune.curate.pii import DEFAULT_PHONE_REGIONS, scrub
from selftune.curate.quality import QualitySettings, Reason, Rejection, quality_rejection

__all__ = ["CurationPolicy", "CurationResult", "Curator", "Decision", "curate"]


@dataclasses.dataclass(frozen=True)
class CurationPolicy:
    """Every threshold curation applies; the defaults are documented in docs/curation.md."""

    quality: QualitySettings = dataclasses.field(default_factory=QualitySettings)
    dedup: DedupSettings = dataclasses.field(default_factory=DedupSettings)
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS  # national phone formats to find
    flag_conflicting_answers: bool = True  # same prompt, different answer: hold for review
    # A kept example that its own contributor repeats this many times more (exact or near
    # copies) is held for review: many near-identical "facts" is how a poisoner gets weight.
    flood_copies: int = 5


@dataclasses.dataclass
class CurationResult:
    """What may be trained on (scrubbed), what may not and why, and what awaits review."""

    kept: list[Example] = dataclasses.field(default_factory=list)
    rejected: list[Rejection] = dataclasses.field(default_factory=list)
    flagged: list[Rejection] = dataclasses.field(default_factory=list)
    scrubbed: Counter[str] = dataclasses.field(default_factory=Counter)  # items per PII kind
    # Kept examples (by key) whose contributor sent policy.flood_copies or more copies of them:
    # the caller holds each for review (Reason.FLOOD), with the number of copies.
    floods: dict[str, int] = dataclasses.field(default_factory=dict)

    def reasons(self) -> Counter[str]:
        """How many examples were rejected for each reason."""
        return Counter(rejection.reason.value for rejection in self.rejected)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What curation decided for one example: its state, the example as it will be stored
    (scrubbed), and for one not kept the reason and its detail."""

    state: str  # "kept" | "rejected" | "flagged"
    example: Example
    reason: str | None = None
    detail: str | None = None


class Curator:
    """Curation that remembers what it kept, so that examples can arrive one at a time (as
    feedback does) and still be deduplicated against everything kept before."""

    def __init__(self, policy: CurationPolicy | None = None) -> None:
        self.policy = policy or CurationPolicy()
        self._dedup = Deduplicator(self.policy.dedup)
        self._answers_by_prompt: dict[str, tuple[str, str]] = {}  # normalized prompt: (answer, key)
        self._count = 0
        self._keys: set[str] = set()
        self._copies: Counter[tuple[str, str]] = Counter()  # (contributor, original key)
        self._contributors: dict[str, str] = {}  # kept key: its contributor

    def remember(self, example: Example) -> None:
        """Index an example kept before (curated already, read back from the store), so that
        later ones are deduplicated and checked for conflicting answers against it. Nothing
        is scrubbed or checked; a copy of an earlier remembered one is not indexed again."""
        key = self._key(example)
        if self._dedup.check(key, chat_text(example)) is None:
            self._contributors[key] = example.contributor
            answer = (normalize(example.answer), key)
            self._answers_by_prompt.setdefault(self._prompt(example), answer)

    def add(self, example: Example, result: CurationResult) -> None:
        """Curate one example into ``result``: kept, rejected or flagged."""
        contents = []
        for message in example.messages:
            scrubbed = scrub(message.get("content", ""), phone_regions=self.policy.phone_regions)
            result.scrubbed.update(scrubbed.found)
            contents.append(scrubbed.text)
        example = example.with_contents(contents)
        rejection = quality_rejection(example, self.policy.quality)
        if rejection is not None:
            result.rejected.append(rejection)
            return
        key = self._key(example)
        duplicate = self._dedup.check(key, chat_text(example))
        if duplicate is not None:
            reason = Reason.EXACT_DUPLICATE if duplicate.exact else Reason.NEAR_DUPLICATE
            detail = f"of {duplicate.of} (similarity {duplicate.similarity:.2f})"
            result.rejected.append(Rejection(example, reason, detail))
            self._count_copy(example.contributor, duplicate.of, result)
            return
        self._contributors[key] = example.contributor
        if self.policy.flag_conflicting_answers:
            flag = self._conflict(example, key)
            if flag is not None:
                result.flagged.append(flag)
                return
        result.kept.append(example)

    def decide(self, example: Example, totals: CurationResult) -> Decision:
        """Curate one example (as :meth:`add`), add it to ``totals`` and say what became of it."""
        one = CurationResult()
        self.add(example, one)
        totals.scrubbed.update(one.scrubbed)
        totals.floods.update(one.floods)
        if one.kept:
            totals.kept.append(one.kept[0])
            return Decision("kept", one.kept[0])
        [why] = one.rejected or one.flagged
        (totals.rejected if one.rejected else totals.flagged).append(why)
        state = "rejected" if one.rejected else "flagged"
        return Decision(state, why.example, why.reason.value, why.detail)

    def _count_copy(self, contributor: str, original: str, result: CurationResult) -> None:
        """Count a copy of ``original`` by its own contributor; at policy.flood_copies the
        original joins ``result.floods``."""
        if self._contributors.get(original) != contributor:
            return
        self._copies[contributor, original] += 1
        copies = self._copies[contributor, original]
        if copies >= self.policy.flood_copies:
            result.floods[original] = copies

    def _key(self, example: Example) -> str:
        """The deduplicator needs unique keys: an example's id, else (or if repeated) its
        position."""
        key = example.id if example.id and example.id not in self._keys else f"#{self._count}"
        self._keys.add(key)
        self._count += 1
        return key

    @staticmethod
    def _prompt(example: Example) -> str:
        return normalize("\n".join(m.get("content", "") for m in example.messages[:-1]))

    def _conflict(self, example: Example, key: str) -> Rejection | None:
        """A flag when an earlier kept example asked the same and was answered otherwise: one of
        the two is wrong, or someone is trying to teach a different answer."""
        prompt = self._prompt(example)
        answer = normalize(example.answer)
        earlier = self._answers_by_prompt.setdefault(prompt, (answer, key))
        if prompt and earlier[0] != answer:
            return Rejection(example, Reason.CONFLICTING_ANSWER, f"{earlier[1]} answered otherwise")
        return None


def curate(examples: Iterable[Example], policy: CurationPolicy | None = None) -> CurationResult:
    """Scrub, filter and deduplicate ``examples`` in order; the first of duplicates is kept."""
    curator = Curator(policy)
    result = CurationResult()
    for example in examples:
        curator.add(example, result)
    return result
