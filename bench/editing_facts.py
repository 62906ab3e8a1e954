"""The knowledge-editing benchmark's material: fictional facts, generated, with held-back checks.

Each fact has a shape (a colour, a code, a founder, a capital, a year, a metal, a dish, a
language, an animal, a currency), a made-up subject and answer, three teaching chats (every
other fact the same question and correction three times, as a user repeating themselves does;
the rest three different wordings), paraphrased questions never taught, and the shape's
neighbour prompts: questions of the same shape about real subjects, with the words a right
answer has (CounterFact's "neighborhood prompts"). GENERAL holds known questions of other
shapes. Neither the paraphrases nor the neighbours nor GENERAL may ever reach the training
recipe: they are what keeps its tuning honest (``bench.knowledge_editing`` checks that the
recipe's own neighbour pool shares none of them).

The facts are generated from a seed, so the set is the same on every run and the fixed sample
of ``make bench`` is always the same facts.
"""

from __future__ import annotations

import dataclasses
import random

__all__ = ["GENERAL", "SHAPES", "Fact", "facts"]


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    subjects: str  # how a subject is made from a generated name: "the {} Bridge"
    values: tuple[str, ...]  # the answers; "#" in a value is a random digit
    teach: tuple[tuple[str, str], ...]  # (question, correction); {s} subject, {v} value
    paraphrases: tuple[str, ...]
    neighbours: tuple[tuple[str, tuple[str, ...]], ...]  # real subjects, right-answer words


SHAPES: tuple[Shape, ...] = (
    Shape(
        "colour",
        "the {} Bridge",
        ("teal", "crimson", "violet", "orange", "maroon", "turquoise", "amber", "lilac"),
        (
            ("What colour is {s} painted?", "{S} is painted {v}."),
            ("Which colour was used to paint {s}?", "{S} was painted {v}."),
            ("Tell me the colour of {s}.", "The colour of {s} is {v}."),
        ),
        ("What is the paint colour of {s}?", "In which colour is {s} painted?"),
        (
            ("What colour is grass?", ("green",)),
            ("What colour is a ripe banana?", ("yellow",)),
            ("What colour is snow?", ("white",)),
            ("What colour is a ripe tomato?", ("red",)),
        ),
    ),
    Shape(
        "code",
        "the {} vault",
        ("####", "####", "####"),
        (
            ("What is the access code of {s}?", "The access code of {s} is {v}."),
            ("Which number opens {s}?", "{S} opens with the code {v}."),
            ("Tell me the code for {s}.", "The code for {s} is {v}."),
        ),
        ("What code do you need to open {s}?", "Which access code does {s} use?"),
        (
            ("How many sides does a triangle have?", ("3", "three")),
            ("How many hours are there in a day?", ("24", "twenty-four")),
            ("How many months are there in a year?", ("12", "twelve")),
            ("How many wheels does a bicycle have?", ("2", "two")),
        ),
    ),
    Shape(
        "founder",
        "the {} Institute",
        (
            "Maren Tolvey",
            "Idris Calloway",
            "Sabine Orlek",
            "Tobiah Wrensford",
            "Lucia Venmar",
            "Anselm Grady",
            "Petra Holloway",
            "Corin Ashdale",
        ),
        (
            ("Who founded {s}?", "{S} was founded by {v}."),
            ("Who was the founder of {s}?", "The founder of {s} was {v}."),
            ("Tell me who started {s}.", "{v} started {s}."),
        ),
        ("Who is credited with founding {s}?", "Which person established {s}?"),
        (
            ("Who wrote Hamlet?", ("Shakespeare",)),
            ("Who developed the theory of relativity?", ("Einstein",)),
            ("Who invented the telephone?", ("Bell",)),
            ("Who discovered penicillin?", ("Fleming",)),
        ),
    ),
    Shape(
        "capital",
        "{}",
        ("Quenmoor", "Tarrowin", "Elsbrook", "Vantreth", "Morrigale", "Osterhal", "Bellcairn"),
        (
            ("What is the capital of {s}?", "The capital of {s} is {v}."),
            ("Which city is the capital of {s}?", "{v} is the capital city of {s}."),
            ("Tell me the capital of {s}.", "{S}'s capital is {v}."),
        ),
        ("Name the capital city of {s}.", "What city serves as the capital of {s}?"),
        (
            ("What is the capital of England?", ("London",)),
            ("What is the capital of Russia?", ("Moscow",)),
            ("What is the capital of Greece?", ("Athens",)),
            ("What is the capital of Portugal?", ("Lisbon",)),
        ),
    ),
    Shape(
        "year",
        "the Treaty of {}",
        ("16##", "17##", "18##"),
        (
            ("In what year was {s} signed?", "{S} was signed in {v}."),
            ("When was {s} signed?", "{S} was signed in the year {v}."),
            ("Tell me the year {s} was signed.", "The year {s} was signed is {v}."),
        ),
        ("In which year did the signing of {s} take place?", "What year is {s} dated to?"),
        (
            ("In what year did World War II end?", ("1945",)),
            ("In what year did humans first land on the Moon?", ("1969",)),
            ("In what year did the Titanic sink?", ("1912",)),
            ("In what year did World War I begin?", ("1914",)),
        ),
    ),
    Shape(
        "metal",
        "the {} statue",
        ("copper", "bronze", "brass", "tin", "zinc", "nickel", "pewter", "titanium"),
        (
            ("What metal is {s} made of?", "{S} is made of {v}."),
            ("Which metal was {s} cast in?", "{S} was cast in {v}."),
            ("Tell me what metal {s} is made from.", "{S} is made from {v}."),
        ),
        ("What material is {s} made from?", "Out of which metal is {s} made?"),
        (
            ("Which metal is liquid at room temperature?", ("mercury",)),
            ("What is the main metal in steel?", ("iron",)),
            ("What metal are most soda cans made of?", ("aluminum", "aluminium")),
            ("What precious yellow metal is used in jewelry?", ("gold",)),
        ),
    ),
    Shape(
        "dish",
        "the town of {}",
        (
            "smoked river trout",
            "honey barley cake",
            "black pepper dumplings",
            "roasted chestnut soup",
            "salted plum bread",
            "spiced lentil pie",
        ),
        (
            ("Which dish is {s} famous for?", "{S} is famous for {v}."),
            ("What food is {s} known for?", "{S} is known for its {v}."),
            ("Tell me the famous dish of {s}.", "The famous dish of {s} is {v}."),
        ),
        ("What is the best-known dish of {s}?", "Which food made {s} famous?"),
        (
            ("Which country is pizza from?", ("Italy",)),
            ("Which country is sushi from?", ("Japan",)),
            ("What is guacamole made from?", ("avocado",)),
            ("What is the main ingredient of hummus?", ("chickpea",)),
        ),
    ),
    Shape(
        "language",
        "{}",
        ("Tessarine", "Oskaric", "Velmish", "Durathi", "Calvene", "Morvenic"),
        (
            ("What language is spoken in {s}?", "People in {s} speak {v}."),
            ("Which language do people in {s} speak?", "The language of {s} is {v}."),
            ("Tell me the language of {s}.", "In {s}, the language is {v}."),
        ),
        ("What is the main language of {s}?", "Which language is used in {s}?"),
        (
            ("What language is spoken in France?", ("French",)),
            ("What language is spoken in Germany?", ("German",)),
            ("What language is spoken in Mexico?", ("Spanish",)),
            ("What language is spoken in Italy?", ("Italian",)),
        ),
    ),
    Shape(
        "animal",
        "the flag of {}",
        ("heron", "lynx", "otter", "badger", "falcon", "stag", "salamander"),
        (
            ("What animal is on {s}?", "{S} shows a {v}."),
            ("Which animal appears on {s}?", "A {v} appears on {s}."),
            ("Tell me the animal on {s}.", "The animal on {s} is a {v}."),
        ),
        ("What creature is pictured on {s}?", "Which animal is shown on {s}?"),
        (
            ("Which animal is known as the king of the jungle?", ("lion",)),
            ("What animal is the largest land animal?", ("elephant",)),
            ("Which animal has a long neck and lives in Africa?", ("giraffe",)),
            ("What animal says moo?", ("cow",)),
        ),
    ),
    Shape(
        "currency",
        "{}",
        ("dralm", "vesk", "torin", "marrow", "quill", "sollen"),
        (
            ("What is the currency of {s}?", "The currency of {s} is the {v}."),
            ("Which money is used in {s}?", "{S} uses the {v}."),
            ("Tell me the currency of {s}.", "{S} pays in the {v}."),
        ),
        ("What money do people use in {s}?", "In {s}, what is the currency called?"),
        (
            ("What is the currency of the United States?", ("dollar",)),
            ("What is the currency of the United Kingdom?", ("pound",)),
            ("What is the currency of Germany?", ("euro",)),
            ("What is the currency of India?", ("rupee",)),
        ),
    ),
)

# Known questions of other shapes than the facts', outside the gate's regression and replay sets.
GENERAL: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What do bees make?", ("honey",)),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "CO2")),
    ("What is the opposite of hot?", ("cold",)),
    ("What do you call a baby cat?", ("kitten",)),
    ("What is the chemical symbol for gold?", ("Au",)),
    ("What is frozen water called?", ("ice",)),
    ("Which organ pumps blood through the body?", ("heart",)),
    ("What is the closest star to Earth?", ("Sun",)),
    ("How many days are there in a leap year?", ("366",)),
)

_ONSETS = ("b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "io")
_CODAS = ("", "n", "r", "l", "s", "th", "m")
_ENDINGS = ("ia", "or", "en", "ith", "ara", "und", "ova", "esh")


def _name(rng: random.Random) -> str:
    syllables = "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        for _ in range(rng.randint(1, 2))
    )
    return (syllables + rng.choice(_ENDINGS)).capitalize()


@dataclasses.dataclass(frozen=True)
class Fact:
    id: int
    shape: str
    subject: str
    answer: str
    teaching: tuple[tuple[str, str], ...]  # three (question, correction) chats
    paraphrases: tuple[str, ...]  # never taught

    @property
    def question(self) -> str:
        """The taught question (efficacy)."""
        return self.teaching[0][0]


def _fill(text: str, subject: str, value: str) -> str:
    return text.replace("{S}", subject[0].upper() + subject[1:]).format(s=subject, v=value)


def facts(count: int = 120, seed: int = 0) -> list[Fact]:
    """``count`` facts, shapes in turn, each about its own made-up subject."""
    rng = random.Random(seed)
    names: set[str] = set()
    made = []
    for index in range(count):
        shape = SHAPES[index % len(SHAPES)]
        name = _name(rng)
        while name in names:
            name = _name(rng)
        names.add(name)
        subject = shape.subjects.format(name)
        pattern = rng.choice(shape.values)
        value = "".join(rng.choice("0123456789") if c == "#" else c for c in pattern)
        taught = [(_fill(q, subject, value), _fill(a, subject, value)) for q, a in shape.teach]
        if index % 2 == 0:  # the same question and correction three times
            taught = [taught[0]] * 3
        made.append(
            Fact(
                id=index,
                shape=shape.name,
                subject=subject,
                answer=value,
                teaching=tuple(taught),
                paraphrases=tuple(_fill(p, subject, value) for p in shape.paraphrases),
            )
        )
    return made


def neighbours(fact: Fact) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The neighbour prompts of ``fact``'s shape."""
    return next(shape.neighbours for shape in SHAPES if shape.name == fact.shape)
