"""Personal data and secrets are replaced by typed placeholders (selftune.curate.pii), in the
formats people write them, and ordinary numbers are left alone."""

from __future__ import annotations

import random
import string

import phonenumbers
import pytest
from stdnum import iban, luhn

from selftune.curate import scrub


def _luhn_complete(body: str) -> str:
    return body + luhn.calc_check_digit(body)


def _cards(rng: random.Random, count: int) -> list[str]:
    cards = []
    for index in range(count):
        prefix, length = [("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("4", 13)][index % 5]
        body = prefix + "".join(rng.choices(string.digits, k=length - len(prefix) - 1))
        digits = _luhn_complete(body)
        separator = ["", " ", "-"][index % 3]
        groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
        cards.append(separator.join(groups))
    return cards


@pytest.mark.parametrize(
    ("text", "kind", "item"),
    [
        *[
            (f"Write to {e} please.", "email", e)
            for e in (
                "ada.lovelace@example.com",
                "TOMAS_99@mail.example.org",
                "priya+orders@post.example.co.uk",
                "k@example.io",
            )
        ],
        *[(f"My card is {c}, it was declined.", "card", c) for c in _cards(random.Random(1), 6)],
        *[
            (f"Pay to {i} by Friday.", "iban", i)
            for i in (
                "DE89 3704 0044 0532 0130 00",
                "GB82WEST12345698765432",
                "FR14 2004 1010 0505 0001 3M02 606",
                "nl91abna0417164300",
            )
        ],
        *[
            (f"Call me on {p} after six.", "phone", p)
            for p in (
                "+44 20 7946 0958",
                "020 7946 0958",
                "(415) 555-0132",
                "415.555.0132",
                "+1 415 555 0132",
                "+49 30 901820",
                "030 901820",
                "+33 1 42 68 53 00",
                "+91 98765 43210",
                "4155550132",  # bare digits count after a word such as "call"
            )
        ],
        *[
            (f"The server at {a} times out.", "ip", a)
            for a in (
                "203.0.113.7",
                "192.168.1.20",
                "2001:db8:85a3::8a2e:370:7334",
                "2001:0db8:0000:0000:0000:ff00:0042:8329",
                "fe80::1ff:fe23:4567:890a",
                "::ffff:198.51.100.4",
            )
        ],
        *[
            (f"My config: {s}", "secret", s)
            for s in (
                "sk-proj-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY",
                "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
                "AKIAIOSFODNN7EXAMPLE",
                "xoxb-123456789012-aBcDeFgHiJkL",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAKCAQ\n-----END RSA PRIVATE KEY-----",
            )
        ],
    ],
)
def test_each_kind_is_found_and_replaced(text: str, kind: str, item: str) -> None:
    scrubbed = scrub(text)
    assert scrubbed.found == {kind: 1}, scrubbed
    assert item not in scrubbed.text
    assert f"[{kind.upper()}]" in scrubbed.text


@pytest.mark.parametrize(
    ("text", "kept", "replaced"),
    [
        ("password=hunter22 and go", "password=", "hunter22"),
        ('"api_key": "9f8e7d6c5b4a39281706f5e4"', '"api_key": "', "9f8e7d6c5b4a39281706f5e4"),
        ("Authorization: Bearer aXb2Cc3Dd4Ee5Ff6Gg7Hh8", "Authorization: Bearer ", "aXb2"),
    ],
)
def test_a_credential_after_its_name_is_replaced_and_the_name_kept(
    text: str, kept: str, replaced: str
) -> None:
    scrubbed = scrub(text)
    assert scrubbed.found == {"secret": 1}
    assert kept in scrubbed.text and replaced not in scrubbed.text


def test_valid_generated_phone_numbers_are_found_in_national_and_international_format() -> None:
    rng = random.Random(7)
    formats = (phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164)
    for region in ("US", "GB", "DE", "FR"):
        example = phonenumbers.example_number(region)
        assert example is not None
        found = 0
        for _ in range(10):
            digits = str(example.national_number)
            digits = digits[:-3] + "".join(rng.choices(string.digits, k=3))
            number = phonenumbers.parse(f"+{example.country_code}{digits}")
            if not phonenumbers.is_valid_number(number):
                continue
            for style in (*formats, phonenumbers.PhoneNumberFormat.NATIONAL):
                written = phonenumbers.format_number(number, style)
                scrubbed = scrub(f"You can reach me at {written} today.")
                assert scrubbed.found == {"phone": 1}, (region, written, scrubbed)
                found += 1
        assert found, f"no valid {region} number generated"


@pytest.mark.parametrize(
    "text",
    [
        "It was built in 1999 and renovated in 2024.",
        "The kettle costs $1,299.99 or 1250 EUR.",
        "Upgrade to 1.2.3 first; version 4.7.2.12 had a bug.",
        "My order number is 8393534914 and it shipped on 2011-11-06.",
        "The ferry leaves at 12:30:45 on 16/02/2023, reference 4155550132.",
        "The tracking code 4998 6410 8964 5503 did not work.",  # 16 digits, Luhn-invalid
        "Cards look like 4111 1111 1111 1112 but that one fails Luhn.",
        "About 45% of users saw it between 1990 and 2010, page 312.",
        "Run it on 127.0.0.1 or ::1, port 8080.",  # loopback names no one
        "Chapter 12, line 7: the ratio was 3:2.",
        "The password is written on the box.",  # prose, not a credential
        "Set token=none to turn it off.",
        "Write user@localhost for local mail.",
    ],
)
def test_ordinary_numbers_and_prose_are_left_alone(text: str) -> None:
    scrubbed = scrub(text)
    assert scrubbed.clean, scrubbed
    assert scrubbed.text == text


def test_luhn_invalid_card_numbers_are_left_alone() -> None:
    rng = random.Random(3)
    for _ in range(50):
        digits = "4" + "".join(rng.choices(string.digits, k=15))
        if luhn.is_valid(digits):
            continue
        assert scrub(f"Number {digits} here.").clean


def test_an_iban_with_a_wrong_check_is_left_alone() -> None:
    assert iban.is_valid("DE89370400440532013000")
    assert scrub("Pay DE88 3704 0044 0532 0130 00 now.").clean


def test_several_items_of_several_kinds_are_counted() -> None:
    scrubbed = scrub(
        "Mail a@example.com or b@example.org, card 4111 1111 1111 1111, host 203.0.113.9."
    )
    assert scrubbed.found == {"email": 2, "card": 1, "ip": 1}
    assert scrubbed.text == "Mail [EMAIL] or [EMAIL], card [CARD], host [IP]."
