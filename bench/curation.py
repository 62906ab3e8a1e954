"""Curation measured on a generated corpus: deduplication precision and recall, PII recall per
kind and precision, false positives on clean text, and throughput (selftune.curate).

The corpus is made from a seed: chats of sentences drawn from templates and word lists, with
planted exact duplicates (copies, and copies differing only in case, punctuation and spacing),
planted near duplicates (words replaced, inserted or deleted, sentences reordered), and planted
personal data of every kind in varied formats. Clean chats also carry numbers that are not
personal data (years, prices, versions, dates, times, order numbers, Luhn-invalid 16-digit
numbers) to measure false positives.

Run with ``make bench`` or ``python -m bench.curation [--seed N] [--chats N]``. The defaults of
selftune.curate were tuned on seed ``TUNING_SEED`` (``--sweep`` reprints that sweep); the reported
figures use ``REPORT_SEED``, which no setting was chosen on.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import string
import sys
import time
from collections import Counter

import phonenumbers
from stdnum import iban, luhn

from selftune.curate import (
    KINDS,
    CurationPolicy,
    Deduplicator,
    DedupSettings,
    Example,
    Reason,
    chat_text,
    curate,
)

TUNING_SEED = 1
REPORT_SEED = 20261207
TARGETS = {  # the acceptance targets (issue 30)
    "dedup precision": 0.95,
    "dedup recall": 0.95,
    "email recall": 0.99,
    "card recall": 0.99,
    "phone recall": 0.95,
}

# --- clean text --------------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NAMES = _words(
    "Ada Maria Tomas Priya Kenji Olga Rafael Amara Lars Sofia Mehmet Chloe Ivan Nadia Pedro "
    "Yuki Hassan Elena Bruno Fatima Jonas Leila Marco Ines Tariq Greta Samir Lucia Aiden "
    "Noor"
)
NOUNS = _words(
    "garden kettle bicycle invoice lantern spreadsheet violin harbour recipe compiler tent "
    "novel bridge printer orchard meeting battery kitchen telescope ledger canoe museum "
    "sweater router festival pillow backpack scanner greenhouse piano tractor library "
    "bakery ferry database notebook umbrella workshop vineyard cathedral"
)
ADJECTIVES = _words(
    "quiet rusty bright narrow ancient fragile heavy tidy crowded gentle bitter polished "
    "noisy hidden spare muddy elegant clumsy sturdy faded"
)
VERBS = _words(
    "repair paint borrow clean measure move label sell rebuild inspect photograph organise "
    "replace deliver test sketch wrap rent insure water"
)
PLACES = _words(
    "Lisbon Oslo Nairobi Kyoto Quito Tallinn Porto Austin Cork Hanoi Lyon Perth Tbilisi "
    "Bergen Seville Leeds Gdansk Accra Bruges Dundee"
)
TOPICS = _words(
    "budgeting gardening sourdough baking chess openings tax returns knitting patterns bird "
    "watching home networking marathon training watercolour painting beekeeping"
)

QUESTIONS = (
    "How do I {verb} a {adj} {noun} in {place}?",
    "What is the best way to {verb} my {noun} before winter?",
    "Can you explain how {name} should {verb} the {noun}?",
    "Why does my {adj} {noun} keep breaking after I {verb} it?",
    "Any tips on {topic} for someone living in {place}?",
    "Where can I {verb} an old {noun} near {place}?",
    "Is it worth it to {verb} a {noun} myself or ask {name}?",
    "What should I know about {topic} and a {adj} {noun}?",
)
SENTENCES = (
    "First, {verb} the {noun} carefully and keep the {adj} parts aside.",
    "{name} once told me that a {adj} {noun} lasts longer if you {verb} it every month.",
    "In {place} most people {verb} their {noun} in the spring.",
    "You will need a {adj} cloth, some patience and a spare {noun}.",
    "If the {noun} still looks {adj}, {verb} it again and wait a day.",
    "A local {noun} shop in {place} can {verb} it for a small fee.",
    "Do not {verb} the {noun} while it is wet, because it becomes {adj}.",
    "Many beginners in {topic} forget to {verb} the {noun} at all.",
    "Ask {name} to help you {verb} the heavy {noun} up the stairs.",
    "The {adj} {noun} from {place} is usually easier to {verb}.",
    "Keep a notebook of how often you {verb} the {noun}, it helps with {topic}.",
    "Once it is {adj} again, store the {noun} somewhere dry.",
    "Some guides on {topic} suggest you {verb} a {noun} twice a year.",
    "That is also how {name} learned to {verb} a {adj} {noun}.",
    "Check whether the {noun} is {adj} before you try to {verb} anything.",
    "People in {place} swear by a {adj} {noun} for {topic}.",
    "Finally, {verb} the edges and let the {noun} rest overnight.",
    "If you are unsure, {name} in {place} runs a class on {topic}.",
)
# Numbers that are not personal data, where a careless scrubber would see some.
TRICKY = (
    "It was built in {year} and renovated in {year2}.",
    "The {noun} costs ${price} or about {euros} EUR at the moment.",
    "Upgrade to {version} first; version {version4} had a bug.",
    "Install v{version4} or {version}, not {version}-rc1.",
    "My order number is {order} and it shipped on {date}.",
    "The {noun} arrives at {time} on {date}, reference {ticket}.",
    "The tracking code {luhn_invalid} did not work for me.",
    "About {percent}% of users saw it between {year} and {year2}.",
    "Chapter {small}, page {page}, line {small2} of the {noun} manual.",
    "Ticket {ticket} was closed after {small} days.",
    "Call me at {time} on {date} about order {order}.",
)


def _fill(template: str, rng: random.Random) -> str:
    slots = {
        "name": rng.choice(NAMES),
        "noun": rng.choice(NOUNS),
        "adj": rng.choice(ADJECTIVES),
        "verb": rng.choice(VERBS),
        "place": rng.choice(PLACES),
        "topic": " ".join(rng.sample(TOPICS, 2)),
        "year": str(rng.randint(1850, 2030)),
        "year2": str(rng.randint(1850, 2030)),
        "price": f"{rng.randint(1, 9999):,}.{rng.randint(0, 99):02d}",
        "euros": str(rng.randint(1, 900)),
        "version": ".".join(str(rng.randint(0, 20)) for _ in range(3)),
        "version4": ".".join(str(rng.randint(0, 20)) for _ in range(4)),
        "order": str(rng.randint(10**7, 10**10)),
        "date": rng.choice(("{y}-{m:02d}-{d:02d}", "{d:02d}/{m:02d}/{y}", "{m}/{d}/{y}")).format(
            y=rng.randint(1990, 2030), m=rng.randint(1, 12), d=rng.randint(1, 28)
        ),
        "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        "ticket": str(rng.randint(10**9, 10**10 - 1)),
        "luhn_invalid": _luhn_invalid(rng),
        "percent": str(rng.randint(1, 99)),
        "small": str(rng.randint(1, 40)),
        "small2": str(rng.randint(1, 40)),
        "page": str(rng.randint(1, 900)),
    }
    return template.format(**slots)


def _luhn_invalid(rng: random.Random) -> str:
    while True:
        digits = str(rng.choice("3456")) + "".join(rng.choices(string.digits, k=15))
        if not luhn.is_valid(digits):
            return (
                " ".join(digits[i : i + 4] for i in range(0, 16, 4))
                if rng.random() < 0.5
                else digits
            )


# --- personal data -----------------------------------------------------------------------------


def _email(rng: random.Random) -> str:
    first, last = rng.choice(NAMES).lower(), rng.choice(NAMES).lower()
    local = rng.choice(
        (
            f"{first}.{last}",
            f"{first}_{last}{rng.randint(1, 99)}",
            f"{first}+{rng.choice(NOUNS)}",
            f"{first[0]}{last}",
            f"{first}-{last}.{rng.randint(1970, 2009)}",
        )
    )
    domain = rng.choice(
        ("example.com", "mail.example.org", "post.example.co.uk", "example.io", "uni-example.de")
    )
    address = f"{local}@{domain}"
    return address.upper() if rng.random() < 0.1 else address


def _card(rng: random.Random) -> str:
    prefix, length, groups = rng.choice(
        (
            ("4", 16, (4, 4, 4, 4)),
            ("51", 16, (4, 4, 4, 4)),
            ("2221", 16, (4, 4, 4, 4)),
            ("37", 15, (4, 6, 5)),
            ("6011", 16, (4, 4, 4, 4)),
            ("4", 13, (4, 4, 5)),
        )
    )
    body = prefix + "".join(rng.choices(string.digits, k=length - len(prefix) - 1))
    digits = body + luhn.calc_check_digit(body)
    style = rng.choice((" ", "-", ""))
    parts, start = [], 0
    for size in groups:
        parts.append(digits[start : start + size])
        start += size
    return style.join(parts)


_IBAN_FORMATS = {  # country: BBAN as (letters, digits) runs
    "DE": ((0, 18),),
    "FR": ((0, 23),),
    "ES": ((0, 20),),
    "IT": ((1, 0), (0, 10), (0, 12)),
    "GB": ((4, 0), (0, 14)),
    "NL": ((4, 0), (0, 10)),
    "BE": ((0, 12),),
}


def _iban(rng: random.Random) -> str:
    while True:
        country = rng.choice(sorted(_IBAN_FORMATS))
        bban = "".join(
            "".join(rng.choices(string.ascii_uppercase, k=letters))
            + "".join(rng.choices(string.digits, k=digits))
            for letters, digits in _IBAN_FORMATS[country]
        )
        # ISO 13616: letters as 10-35, the country and "00" moved to the end, mod 97.
        check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
        number = f"{country}{check:02d}{bban}"
        if iban.is_valid(number):
            break
    return iban.format(number) if rng.random() < 0.6 else number


_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "ES", "AU", "BR")


def _phone(rng: random.Random) -> str:
    """A valid number of one of several regions, written in one of several formats."""
    region = rng.choice(_PHONE_REGIONS)
    kind = rng.choice(
        (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE)
    )
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    national = str(example.national_number)
    while True:
        keep = max(3, len(national) - 5)
        candidate = national[:keep] + "".join(rng.choices(string.digits, k=len(national) - keep))
        number = phonenumbers.parse(f"+{example.country_code}{candidate}")
        if phonenumbers.is_valid_number(number):
            break
    formats = [phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]
    if region in ("US", "GB", "DE", "FR"):  # national formats of the regions curation reads
        formats.append(phonenumbers.PhoneNumberFormat.NATIONAL)
    text = phonenumbers.format_number(number, rng.choice(formats))
    if region == "US" and rng.random() < 0.3:
        digits = str(number.national_number)
        text = rng.choice(
            (
                f"{digits[:3]}.{digits[3:6]}.{digits[6:]}",
                f"{digits[:3]}-{digits[3:6]}-{digits[6:]}",
                digits,
            )
        )
    return text


def _secret(rng: random.Random) -> str:
    def token(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(rng.choices(alphabet, k=n))

    return rng.choice(
        (
            f"sk-proj-{token(40)}",
            f"sk-{token(48)}",
            f"ghp_{token(36)}",
            f"AKIA{token(16, string.ascii_uppercase + string.digits)}",
            f"xoxb-{rng.randint(10**11, 10**12)}-{token(24)}",
            f"sk_live_{token(24)}",
            f"password={token(rng.randint(8, 14))}",
            f'api_key: "{token(32)}"',
            f"Authorization: Bearer {token(40)}",
            f"-----BEGIN RSA PRIVATE KEY-----\n{token(64)}\n{token(64)}\n"
            "-----END RSA PRIVATE KEY-----",
        )
    )


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.6:
        # Not 127.x.x.x: loopback addresses name no one and are deliberately kept.
        first = rng.choice([n for n in range(1, 224) if n != 127])
        return ".".join(str(n) for n in (first, *(rng.randint(0, 255) for _ in range(3))))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    style = rng.random()
    if style < 0.4:
        return ":".join(groups)
    if style < 0.8:
        return ":".join(groups[:3]) + "::" + ":".join(groups[6:])
    return f"2001:db8::{groups[7]}"


PII_MAKERS = {
    "email": _email,
    "card": _card,
    "iban": _iban,
    "phone": _phone,
    "secret": _secret,
    "ip": _ip,
}
PII_SENTENCES = {
    "email": ("Write to me at {x} if it fails.", "My address is {x}, thanks.", "{x}"),
    "card": ("My card is {x} and it was declined.", "Charge {x} please.", "card: {x}"),
    "iban": ("Send it to IBAN {x} by Friday.", "My account is {x}.", "{x} is the account."),
    "phone": ("Call me on {x} after six.", "You can reach me at {x}.", "My number: {x}"),
    "secret": ("Here is my config: {x}", "I used {x} in the script.", "{x}"),
    "ip": ("The server is at {x} now.", "Requests from {x} time out.", "ping {x}"),
}
PII_SHARE = 0.3

# --- the corpus --------------------------------------------------------------------------------


@dataclasses.dataclass
class Chat:
    """A generated chat and what was planted in it: the truth the measurements compare with."""

    example: Example
    duplicate: str | None = None  # "exact" or "near" for planted copies
    pii: tuple[str, str] | None = None  # (kind, the planted text)


def _chat(
    rng: random.Random, index: int, extra: str | None = None, tricky: bool = False
) -> Example:
    sentences = [_fill(rng.choice(SENTENCES), rng) for _ in range(rng.randint(3, 6))]
    if tricky:
        sentences.insert(rng.randrange(len(sentences) + 1), _fill(rng.choice(TRICKY), rng))
    question = _fill(rng.choice(QUESTIONS), rng)
    if extra is not None and rng.random() < 0.5:  # personal data in the question or the answer
        question = f"{extra} {question}"
    elif extra is not None:
        sentences.insert(rng.randrange(len(sentences) + 1), extra)
    messages = (
        {"role": "user", "content": question},
        {"role": "assistant", "content": " ".join(sentences)},
    )
    return Example(
        messages,
        contributor=f"user{rng.randint(1, 200)}",
        source="rating",
        created=index,
        id=f"c{index}",
    )


def _exact_copy(example: Example, rng: random.Random, index: int) -> Example:
    def restyle(text: str) -> str:
        if rng.random() < 0.5:
            text = text.lower() if rng.random() < 0.5 else text.upper()
        if rng.random() < 0.5:
            text = text.replace(",", "").replace(".", " .").replace("  ", " ")
        return text + rng.choice(("", "!", " ", "\n"))

    contents = [
        restyle(m["content"]) if rng.random() < 0.5 else m["content"] for m in example.messages
    ]
    return dataclasses.replace(
        example.with_contents(contents), id=f"c{index}", contributor=f"user{rng.randint(1, 200)}"
    )


def _near_copy(example: Example, rng: random.Random, index: int) -> Example:
    answer = example.messages[-1]["content"]
    words = answer.split()
    for _ in range(rng.randint(1, 4)):
        edit = rng.choice(("replace", "insert", "delete", "reorder"))
        position = rng.randrange(len(words))
        if edit == "replace":
            words[position] = rng.choice(NOUNS + ADJECTIVES)
        elif edit == "insert":
            words.insert(position, rng.choice(("really", "also", "just", "very", "then", "still")))
        elif edit == "delete" and len(words) > 5:
            del words[position]
        elif edit == "reorder":
            sentences = " ".join(words).split(". ")
            rng.shuffle(sentences)
            words = ". ".join(sentences).split()
    if rng.random() < 0.3:
        words = [w.lower() for w in words]
    contents = [m["content"] for m in example.messages[:-1]] + [" ".join(words)]
    return dataclasses.replace(
        example.with_contents(contents), id=f"c{index}", contributor=f"user{rng.randint(1, 200)}"
    )


def corpus(seed: int, chats: int) -> list[Chat]:
    """``chats`` chats, of which about ``PII_SHARE`` carry one planted item of personal data (of
    a kind drawn at random) and half of the rest a tricky non-personal number; then up to a
    tenth as many exact and as many near copies of the clean ones, each placed after its
    original. Copies of chats with personal data are skipped: they would count its items twice."""
    rng = random.Random(seed)
    originals: list[Chat] = []
    for index in range(chats):
        if rng.random() < PII_SHARE:
            kind = rng.choice(KINDS)
            planted = PII_MAKERS[kind](rng)
            sentence = rng.choice(PII_SENTENCES[kind]).format(x=planted)
            originals.append(Chat(_chat(rng, index, sentence), pii=(kind, planted)))
        else:
            originals.append(Chat(_chat(rng, index, tricky=rng.random() < 0.5)))
    placed: list[tuple[float, Chat]] = [(i, chat) for i, chat in enumerate(originals)]
    copies = chats // 10
    for n in range(2 * copies):
        position = rng.randrange(chats)
        original = originals[position]
        if original.pii is not None:
            continue
        index = chats + n
        if n < copies:
            chat = Chat(_exact_copy(original.example, rng, index), duplicate="exact")
        else:
            chat = Chat(_near_copy(original.example, rng, index), duplicate="near")
        placed.append((rng.uniform(position + 0.5, chats), chat))
    return [chat for _, chat in sorted(placed, key=lambda pair: pair[0])]


# --- measuring ---------------------------------------------------------------------------------


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 1.0


def _verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    return f"{'PASS' if value >= TARGETS[name] else 'MISS'} (target >= {TARGETS[name]:.2f})"


def _dedup_scores(chats: list[Chat], settings: DedupSettings) -> dict[str, float]:
    """Precision and recall of the deduplicator alone, exact and near separately and together."""
    deduplicator = Deduplicator(settings)
    flagged: dict[str, list[str | None]] = {"exact": [], "near": []}  # planted label per flag
    caught: Counter[str] = Counter()
    for chat in chats:
        found = deduplicator.check(chat.example.id or "", chat_text(chat.example))
        if found is not None:
            flagged["exact" if found.exact else "near"].append(chat.duplicate)
            if chat.duplicate:
                caught[chat.duplicate] += 1
    planted = Counter(chat.duplicate for chat in chats if chat.duplicate)
    scores = {}
    for kind in ("exact", "near"):
        scores[f"{kind} precision"] = _share(
            sum(1 for label in flagged[kind] if label), len(flagged[kind])
        )
        scores[f"{kind} recall"] = _share(caught[kind], planted[kind])
    every = flagged["exact"] + flagged["near"]
    scores["dedup precision"] = _share(sum(1 for label in every if label), len(every))
    scores["dedup recall"] = _share(sum(caught.values()), sum(planted.values()))
    return scores


def sweep(chats: int) -> None:
    """The measurements the dedup defaults were chosen from, on the tuning seed."""
    corpus_ = corpus(TUNING_SEED, chats)
    print(f"dedup sweep on tuning seed {TUNING_SEED} ({len(corpus_)} chats)")
    print("shingle  threshold  precision  recall")
    for size in (1, 2, 3, 4):
        for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
            scores = _dedup_scores(corpus_, DedupSettings(shingle_size=size, threshold=threshold))
            precision, recall = scores["dedup precision"], scores["dedup recall"]
            print(f"{size:>7}  {threshold:>9.1f}  {precision:>9.3f}  {recall:>6.3f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.curation", description=__doc__)
    parser.add_argument("--seed", type=int, default=REPORT_SEED)
    parser.add_argument("--chats", type=int, default=4000, help="unique chats before the copies")
    parser.add_argument("--sweep", action="store_true", help="reprint the tuning sweep and stop")
    args = parser.parse_args(argv)
    if args.sweep:
        sweep(args.chats)
        return 0
    chats = corpus(args.seed, args.chats)
    note = (
        " (the tuning seed: these figures are not independent)" if args.seed == TUNING_SEED else ""
    )
    size = sum(len(chat_text(chat.example).encode()) for chat in chats)
    print(f"curation: seed {args.seed}{note}, {len(chats)} chats, {size / 1e6:.2f} MB", flush=True)

    start = time.perf_counter()
    result = curate(chat.example for chat in chats)
    elapsed = time.perf_counter() - start

    by_id = {chat.example.id: chat for chat in chats}
    scrubbed = {example.id: example for example in result.kept}
    scrubbed.update({r.example.id: r.example for r in (*result.rejected, *result.flagged)})
    rows: list[tuple[str, float | int, str]] = []

    for name, value in _dedup_scores(chats, CurationPolicy().dedup).items():
        rows.append((name, value, _verdict(name, value)))
    rejected_as_duplicate = {
        r.example.id
        for r in result.rejected
        if r.reason in (Reason.EXACT_DUPLICATE, Reason.NEAR_DUPLICATE)
    }
    wrongly = sum(1 for i in rejected_as_duplicate if not by_id[i].duplicate)
    rows.append(("curate(): originals rejected as duplicates", wrongly, ""))

    planted: Counter[str] = Counter()
    recalled: Counter[str] = Counter()
    replaced: Counter[str] = Counter()
    clean, clean_hit = 0, 0
    for chat in chats:
        if chat.duplicate:
            continue
        after = scrubbed[chat.example.id]
        found = Counter(
            kind
            for message in after.messages
            for kind in KINDS
            for _ in range(message["content"].count(f"[{kind.upper()}]"))
        )
        replaced.update(found)
        if chat.pii is None:
            clean += 1
            clean_hit += bool(found)
            continue
        kind, text = chat.pii
        planted[kind] += 1
        if found[kind] and all(text not in m["content"] for m in after.messages):
            recalled[kind] += 1
    for kind in KINDS:
        recall = _share(recalled[kind], planted[kind])
        precision = _share(recalled[kind], replaced[kind])
        rows.append(
            (f"{kind} recall", recall, _verdict(f"{kind} recall", recall) + f"  n={planted[kind]}")
        )
        rows.append((f"{kind} precision", precision, ""))
    rows.append(("false-positive rate on clean chats", _share(clean_hit, clean), f"n={clean}"))
    rows.append(("throughput, chats/s (curate, one core)", len(chats) / elapsed, ""))
    rows.append(("throughput, MB/s", size / 1e6 / elapsed, ""))

    width = max(len(name) for name, _, _ in rows)
    for name, value, verdict in rows:
        if isinstance(value, int):
            shown = f"{value:,}"
        else:
            shown = f"{value:.3f}" if value <= 1 else f"{value:,.1f}"
        print(f"  {name:<{width}}  {shown:>9}  {verdict}".rstrip())
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(result.reasons().items()))
    print(
        f"  curate(): kept {len(result.kept)}, rejected {len(result.rejected)} ({reasons}),"
        f" flagged {len(result.flagged)} (the same question answered otherwise)"
    )
    missed = [name for name, value, _ in rows if name in TARGETS and value < TARGETS[name]]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
