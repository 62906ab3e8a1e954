"""Personal data and secrets, found and replaced by typed placeholders before anything is stored
for training.

A model trained on a chat can repeat what was in it, so an email address, phone number, card
number, IBAN, IP address or credential must never reach a training run. Each kind is found by a
cheap pattern and then *validated* (Luhn for cards, the mod-97 check for IBANs, libphonenumber's
numbering plans for phones, :mod:`ipaddress` for IPs), which keeps ordinary numbers, years,
versions, prices and dates out of the placeholders. The kinds are scrubbed in a fixed order,
most specific first, so that a card number is not half-eaten as a phone number.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import phonenumbers
from stdnum import iban, luhn

__all__ = ["DEFAULT_PHONE_REGIONS", "KINDS", "Scrubbed", "scrub"]

KINDS = ("secret", "email", "iban", "card", "ip", "phone")
"""Every kind, in the order they are scrubbed; a placeholder is ``[KIND]`` in capitals."""

DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR")
"""Regions whose *national* formats count as phone numbers (``020 7946 0958`` is British,
``(415) 555-0132`` American). International ``+CC ...`` numbers are found whatever the regions.
Each region added finds more numbers written the local way and risks more order numbers that
happen to fit its plan; bench/curation.py measures both."""


@dataclasses.dataclass(frozen=True)
class Scrubbed:
    """A text with its personal data replaced, and how many items of each kind were."""

    text: str
    found: dict[str, int]

    @property
    def clean(self) -> bool:
        """True when nothing was replaced."""
        return not self.found


Finder = Callable[[str], Iterator[tuple[int, int]]]

# --- secrets -----------------------------------------------------------------------------------

# Credential shapes with a fixed prefix: the prefix alone makes a match near-certain.
_SECRET_SHAPES = re.compile(
    r"""
    -----BEGIN[ A-Z]*PRIVATE\ KEY-----[\s\S]*?-----END[ A-Z]*PRIVATE\ KEY-----
    | \bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}                 # OpenAI, Anthropic
    | \b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}                 # Stripe
    | \bgh[pousr]_[A-Za-z0-9]{30,}                           # GitHub tokens
    | \bgithub_pat_[A-Za-z0-9_]{22,}
    | \bglpat-[A-Za-z0-9_-]{20,}                             # GitLab
    | \b(?:AKIA|ASIA)[0-9A-Z]{16}\b                          # AWS access key ids
    | \bxox[abprs]-[A-Za-z0-9-]{10,}                         # Slack
    | \bAIza[0-9A-Za-z_-]{35}                                # Google API keys
    | \bhf_[A-Za-z0-9]{30,}                                  # Hugging Face
    | \beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}   # JWTs
    """,
    re.VERBOSE,
)
# ``password = hunter22``, ``"api_key": "..."``, ``Authorization: Bearer ...``: the value after a
# credential's name. Passwords are secret whatever they look like; other values only when they
# look random (a "token" of ``none`` or ``see below`` is prose).
_SECRET_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<name>\b(?:password|passwd|pwd|pass|passphrase|secret|client[_-]?secret|api[_-]?key
      |apikey|access[_-]?key|secret[_-]?key|private[_-]?key|auth[_-]?token|access[_-]?token
      |token|bearer)\b["']?)
    (?P<sep>\s*(?:[:=]|\s)\s*["']?)
    (?P<value>[^\s"'`,;]{6,})
    """
)
_PASSWORD_NAMES = re.compile(r"(?i)pass|pwd")


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character: about 4+ for random tokens, under 3.5 for words."""
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _looks_random(value: str) -> bool:
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    mixed_case = value.lower() != value != value.upper()
    return len(value) >= 16 and has_alpha and (has_digit or mixed_case) and _entropy(value) >= 3.5


def _secrets(text: str) -> Iterator[tuple[int, int]]:
    for match in _SECRET_SHAPES.finditer(text):
        yield match.span()
    for match in _SECRET_ASSIGNMENT.finditer(text):
        value = match.group("value")
        is_password = bool(_PASSWORD_NAMES.search(match.group("name")))
        separated = match.group("sep").strip() != ""
        # "password is" and "token was" are prose: a bare space only counts before a random value.
        if (is_password and separated and not value.startswith("[")) or _looks_random(value):
            yield match.span("value")


# --- emails ------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}\b"
)


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for match in _EMAIL.finditer(text):
        yield match.span()


# --- IBANs -------------------------------------------------------------------------------------

# Country code, check digits, then the account in groups of four (spaced or not) and a shorter
# last group. Fixed-size groups keep a long alphanumeric word from backtracking for long.
_IBAN = re.compile(r"(?i)\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?\b")


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for match in _IBAN.finditer(text):
        candidate = match.group()
        # The pattern may run on into the next word ("DE89 ... 00 FOR"): try shorter endings.
        ends = sorted({m.end() for m in re.finditer(r"[A-Z0-9]+", candidate, re.I)}, reverse=True)
        for end in ends:
            if end >= 15 and iban.is_valid(candidate[:end].upper()):
                yield match.start(), match.start() + end
                break


# --- payment cards -----------------------------------------------------------------------------

# 13 to 19 digits, optionally in groups split by single spaces or dashes.
_CARD = re.compile(r"(?<![\w.,+-])\d(?:[ -]?\d){12,18}(?![\w.,]\d|\w)")


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        # A real card number starts 2-6 (Mastercard, Visa, Amex, Discover, ...); a run of a
        # single digit is test filler, not a card.
        if digits[0] in "23456" and len(set(digits)) > 1 and luhn.is_valid(digits):
            yield match.span()


# --- IP addresses ------------------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_VERSION_CUE = re.compile(r"(?i)(?:\bversion|\bver\.?|\brelease|\bv)\s*$")


def _public_address(candidate: str) -> bool:
    """A valid address other than loopback and unspecified, which name no one (``127.0.0.1``
    and ``::1`` are common in technical chats and worth keeping)."""
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for match in _IPV6.finditer(text):
        candidate = match.group()
        # Times (12:30:45) and ratios are not addresses: an IPv6 address has "::" or 7 colons.
        if ("::" in candidate or candidate.count(":") == 7) and _public_address(candidate):
            yield match.span()
    for match in _IPV4.finditer(text):
        # "version 1.2.3.4" and "v10.0.0.1" are releases, not hosts.
        before = text[max(0, match.start() - 10) : match.start()]
        if _public_address(match.group()) and not _VERSION_CUE.search(before):
            yield match.span()


# --- phone numbers -----------------------------------------------------------------------------

# Where a phone number may be: an optional +, then digits with the separators people use.
_PHONE_CANDIDATE = re.compile(r"(?<![\w+(])[+(]{0,2}\d[\d ().\-/]{5,22}\d(?!\w)")
# A bare run of digits (4155550132) is as often an order or ticket number as a phone: it counts
# only after a word that says it is a phone ("number" does not: order and ticket numbers have it).
_PHONE_CUE = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|text|ring|whatsapp|sms|fax|dial|reach|contact)\b"
)

_MORE_DIGITS_BEFORE = re.compile(r"\d[ -]?$")
_MORE_DIGITS_AFTER = re.compile(r"[ -]?\d")


def _country_code_without_plus(raw: str, region: str) -> bool:
    """Whether libphonenumber took the first digits of ``raw`` as a country code although no
    + or international prefix introduced them."""
    number = phonenumbers.parse(raw, region, keep_raw_input=True)
    source = phonenumbers.CountryCodeSource.FROM_NUMBER_WITHOUT_PLUS_SIGN
    return number.country_code_source == source


def _plausible_phone(text: str, start: int, end: int, raw: str, region: str) -> bool:
    """Whether a number libphonenumber found in ``text[start:end]`` is written like a phone
    number rather than like the other numbers that happen to fit a numbering plan."""
    before = text[max(0, start - 40) : start]
    if raw.isdigit() and not _PHONE_CUE.search(before):
        return False
    # "4963 0522 ..." read as +49 63 0522 ...: a country code needs a + or 00 before it.
    if _country_code_without_plus(raw, region):
        return False
    # "version 0.20.19.13" is a release; a number inside a longer run of digit groups is an
    # account or tracking number.
    return not (
        _VERSION_CUE.search(before[-10:])
        or _MORE_DIGITS_BEFORE.search(before[-2:])
        or _MORE_DIGITS_AFTER.match(text, end)
    )


def _phones_with(regions: tuple[str, ...]) -> Finder:
    def find(text: str) -> Iterator[tuple[int, int]]:
        for candidate in _PHONE_CANDIDATE.finditer(text):
            span = candidate.group()
            if sum(c.isdigit() for c in span) < 7:
                continue
            # The first region under which the candidate holds phone numbers wins.
            for region in regions:
                leniency = phonenumbers.Leniency.VALID
                found = [
                    (candidate.start() + match.start, candidate.start() + match.end)
                    for match in phonenumbers.PhoneNumberMatcher(span, region, leniency=leniency)
                    if _plausible_phone(
                        text,
                        candidate.start() + match.start,
                        candidate.start() + match.end,
                        match.raw_string,
                        region,
                    )
                ]
                if found:
                    yield from found
                    break

    return find


# --- the scrubber ------------------------------------------------------------------------------


def _replace(text: str, spans: Iterable[tuple[int, int]], placeholder: str) -> tuple[str, int]:
    """``text`` with each span (overlaps merged) replaced by ``placeholder``; and how many."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in reversed(merged):
        text = text[:start] + placeholder + text[end:]
    return text, len(merged)


def scrub(text: str, *, phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS) -> Scrubbed:
    """``text`` with every email, phone number, payment card, IBAN, IP address and credential
    replaced by ``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[IP]`` or ``[SECRET]``.

    Kinds go in :data:`KINDS` order: credentials first (they hold digits and ``@``), phones last
    (libphonenumber accepts many digit runs that are really cards or IBANs)."""
    finders: dict[str, Finder] = {
        "secret": _secrets,
        "email": _emails,
        "iban": _ibans,
        "card": _cards,
        "ip": _ips,
        "phone": _phones_with(phone_regions),
    }
    found: dict[str, int] = {}
    for kind in KINDS:
        spans = list(finders[kind](text))
        if spans:
            text, count = _replace(text, spans, f"[{kind.upper()}]")
            found[kind] = count
    return Scrubbed(text, found)
