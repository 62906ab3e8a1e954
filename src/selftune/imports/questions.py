"""Questions a sentence of a document answers, in the words a person would ask them.

A statement "S V rest" is turned round by English question formation: the auxiliary moves
before the subject and the part the answer gives is left out. "The Kaith statue is made from
nickel." asks "What is the Kaith statue made from?"; "The Lolen Institute was founded by Tobiah
Wrensford." asks "Who was the Lolen Institute founded by?"; "The flag of Bilund shows a badger."
asks "What does the flag of Bilund show?". Only verbs named here are recognised (guessing verbs
by their endings takes plural nouns for verbs); a sentence without one gets no such question.
The rules are generic English grammar: nothing in them names a subject, a value or a wording of
any evaluation set.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["Clause", "asked_questions", "lower_first", "split_clause"]

_BE = {"is", "are", "was", "were"}
_HAVE = {"has": "does", "have": "do", "had": "did"}
_MODALS = {"can", "could", "will", "would", "may", "might", "must", "should", "shall"}
_PREPOSITIONS = {
    "about", "across", "after", "along", "among", "around", "at", "before", "behind",
    "between", "by", "for", "from", "in", "into", "near", "of", "on", "over", "through", "to",
    "under", "with",
}  # fmt: skip
# Lexical verbs as they follow a subject, with their base form; the past tenses take "did",
# the -s forms "does".
_PRESENT = {
    v + ("es" if v.endswith(("s", "sh", "ch", "x", "o")) else "s"): v
    for v in (
        "belong", "border", "contain", "cost", "eat", "flow", "give", "grow", "hold", "host",
        "include", "keep", "lead", "lie", "live", "make", "mean", "measure", "open", "own",
        "pay", "play", "produce", "run", "sell", "serve", "show", "sing", "sit", "speak",
        "stand", "take", "teach", "turn", "use", "wear", "weigh", "write", "go", "do",
    )
}  # fmt: skip
_PRESENT["carries"] = "carry"
_PAST = {
    "became": "become", "began": "begin", "built": "build", "founded": "found", "gave": "give",
    "grew": "grow", "held": "hold", "kept": "keep", "led": "lead", "lived": "live",
    "made": "make", "opened": "open", "owned": "own", "paid": "pay", "ran": "run",
    "showed": "show", "sold": "sell", "spoke": "speak", "stood": "stand", "took": "take",
    "taught": "teach", "used": "use", "won": "win", "wrote": "write", "invented": "invent",
    "discovered": "discover", "designed": "design", "painted": "paint", "married": "marry",
    "played": "play", "produced": "produce", "served": "serve", "signed": "sign",
}  # fmt: skip
_IRREGULAR_PARTICIPLES = {
    "built", "born", "chosen", "done", "drawn", "given", "grown", "held", "kept", "known",
    "led", "made", "paid", "run", "seen", "sold", "spoken", "taken", "taught", "won", "worn",
    "written",
}  # fmt: skip
_VERB = re.compile(
    r"\b(" + "|".join(sorted(_BE | set(_HAVE) | _MODALS | set(_PRESENT) | set(_PAST))) + r")\b"
)
_YEAR = re.compile(
    r"^(?:in |on )?(?:\d{1,2} )?(?:(?:January|February|March|April|May|June|July|August|"
    r"September|October|November|December) )?(?:\d{1,2}, )?\d{3,4}$"
)
# An opening phrase of place or time ("In Brelia, the language is Calvene."): the question
# asks about the clause after it and ends with the phrase ("What is the language in Brelia?").
_OPENING = re.compile(r"^(?P<prep>In|On|At|During) (?P<phrase>[^,]{2,60}), (?P<clause>.+)$")
_ARTICLES = ("The", "A", "An", "This", "These", "That", "Those", "Its", "Their", "His", "Her")


@dataclasses.dataclass(frozen=True)
class Clause:
    """A statement split at its first recognised verb."""

    subject: str  # as it would stand inside a question ("the Kaith statue")
    verb: str
    rest: str  # what follows the verb, the answer among it


def lower_first(text: str) -> str:
    """``text`` with a leading article or pronoun lowered; a leading name stays as it is."""
    first, _, rest = text.partition(" ")
    return f"{first.lower()} {rest}".strip() if first in _ARTICLES else text


def split_clause(sentence: str) -> Clause | None:
    """``sentence`` as subject, verb and rest; None where no verb named here follows a subject
    of one to twelve words (or the subject holds a comma: an opening phrase, not a subject)."""
    body = sentence.rstrip(".!?\"'\u201d\u2019)] ")
    verb = _VERB.search(body, 1)
    if verb is None:
        return None
    subject = body[: verb.start()].strip(" ,;:")
    rest = body[verb.end() :].strip()
    if not subject or "," in subject or not 1 <= len(subject.split()) <= 12 or not rest:
        return None
    return Clause(lower_first(subject), verb.group(1), rest)


def _is_participle(word: str) -> bool:
    return word.endswith("ed") or word in _IRREGULAR_PARTICIPLES


def _wh(prep: str, obj: str) -> str:
    if prep == "by":
        return "Who"
    return "When" if _YEAR.match(obj) else "What"


def asked_questions(sentence: str) -> list[str]:
    """The questions ``sentence`` answers, turned round from it (none where its shape is not
    recognised): one asking for what follows the verb, as a person would word it."""
    opening = _OPENING.match(sentence)
    if opening is not None:
        where = f" {opening['prep'].lower()} {opening['phrase']}?"
        inner = opening["clause"]
        return [q[:-1] + where for q in asked_questions(inner[0].upper() + inner[1:])]
    clause = split_clause(sentence)
    if clause is None:
        return []
    subject, verb, rest = clause.subject, clause.verb, clause.rest
    words = rest.split()
    head = words[0]
    prep = words[1] if len(words) > 2 and words[1] in _PREPOSITIONS else ""
    obj = " ".join(words[2:]) if prep else " ".join(words[1:])
    if verb in _BE:
        if prep:  # "is made from nickel", "was founded by X", "is famous for pie"
            wh = _wh(prep, obj)
            tail = f"{head}" if wh == "When" else f"{head} {prep}"
            return [f"{wh} {verb} {subject} {tail}?"]
        if (_is_participle(head) or head.endswith("ing")) and len(words) > 1:  # "is painted red"
            wh = "When" if _YEAR.match(obj) else "What"
            return [f"{wh} {verb} {subject} {head}?"]
        return [f"What {verb} {subject}?"]  # "the code is 2883"
    if verb in _HAVE:
        if _is_participle(head) and len(words) > 1:  # "has kept it since 1987": a tense
            return [f"What {verb} {subject} {head}" + (f" {prep}?" if prep else "?")]
        return [f"What {_HAVE[verb]} {subject} have?"]
    if verb in _MODALS:
        if head in _PREPOSITIONS or len(words) < 2:
            return []
        return [f"What {verb} {subject} {head}" + (f" {prep}?" if prep else "?")]
    aux, base = ("does", _PRESENT[verb]) if verb in _PRESENT else ("did", _PAST[verb])
    if head in _PREPOSITIONS:  # "pays in the quill"
        wh = _wh(head, " ".join(words[1:]))
        return [f"{wh} {aux} {subject} {base}" + ("?" if wh == "When" else f" {head}?")]
    return [f"What {aux} {subject} {base}?"]  # "shows a badger"
