"""Class words: the word of a caption that names the identity's person ("man", "woman", ...).

PhotoMaker fuses the ID embedding into the class word's token and writes its trigger word after it,
so every caption must hold exactly the identity's class word, in its canonical form. Matching is
case-insensitive and on whole words: "manager", "womanizer", "snowman" and "man-made" hold none, a
possessive ("woman's") does (CLIP tokenizes "'s" apart). Plurals ("men", "people") are not class
words: they mark a caption that describes several people.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

PERSON = "person"
CANONICAL = ("man", "woman", "boy", "girl", PERSON)
GENDER = {"man": "male", "woman": "female", "boy": "male", "girl": "female"}

# surface form -> canonical class word (singular nouns only)
SYNONYMS = {
    **{word: "man" for word in ("man", "guy", "gentleman", "businessman", "dude", "gent")},
    **{word: "woman" for word in ("woman", "lady", "businesswoman")},
    **{word: "boy" for word in ("boy", "schoolboy", "lad")},
    **{word: "girl" for word in ("girl", "schoolgirl", "lass")},
    **{word: PERSON for word in ("person", "child", "kid", "baby", "toddler", "teenager", "teen", "adult", "individual")},
}
# singular words for other people: not class words, but a second person in the caption
RELATIONS = (
    "wife", "husband", "girlfriend", "boyfriend", "mother", "father", "mom", "dad", "son", "daughter",
    "brother", "sister", "friend", "partner", "bride", "groom",
)
# plural or collective words for people ("a couple of ..." means "a few", not two people)
CROWDS = (
    "men", "women", "boys", "girls", "guys", "gentlemen", "ladies", "people", "persons", "children", "kids",
    "babies", "teenagers", "teens", "adults", "friends", "family", "crowd", "group", "team", "band", "twins",
    "audience", "couple(?! of)",
)


def _words(alternatives: Sequence[str]) -> re.Pattern[str]:
    """Whole words: no letter, digit, underscore or hyphen on either side (an apostrophe may follow)."""
    ordered = sorted(alternatives, key=len, reverse=True)  # longest first: "gentleman" before "gent"
    return re.compile(rf"(?<![\w-])({'|'.join(ordered)})(?![\w-])", re.IGNORECASE)


_CLASS = _words(list(SYNONYMS))
_RELATION = _words(RELATIONS)
_CROWD = _words(CROWDS)


@dataclass(frozen=True)
class Mention:
    """A class-vocabulary word in a caption: its canonical form and its character span."""

    word: str
    start: int
    end: int


def mentions(caption: str) -> list[Mention]:
    return [Mention(SYNONYMS[m.group(1).lower()], m.start(1), m.end(1)) for m in _CLASS.finditer(caption)]


def find(caption: str, word: str) -> Mention | None:
    """The first mention of the class word `word` (any of its synonyms)."""
    return next((m for m in mentions(caption) if m.word == word), None)


def first_class_word(caption: str) -> str | None:
    """The caption's own class word (its first mention), canonical; None when it names no person."""
    found = mentions(caption)
    return found[0].word if found else None


def many_people(caption: str) -> bool:
    """The caption describes several people: a plural or collective word, or two person words."""
    if _CROWD.search(caption):
        return True
    return len(mentions(caption)) + len(_RELATION.findall(caption)) >= 2


def majority(votes: Sequence[str | None], fallback: Sequence[str | None] = ()) -> str:
    """The identity's class word: the most frequent gendered vote; `fallback` (e.g. a gender model)
    decides when there is none or breaks a tie; `person` when neither decides."""
    candidates = set(GENDER)
    for pool in (votes, fallback):
        counts = Counter(word for word in pool if word in candidates)
        if not counts:
            continue
        top = max(counts.values())
        leaders = {word for word, count in counts.items() if count == top}
        if len(leaders) == 1:
            return leaders.pop()
        candidates = leaders
    return PERSON


def put(caption: str, word: str, mention: Mention) -> tuple[str, tuple[int, int]]:
    """`mention` replaced by `word` (first-letter case kept, "an" -> "a"); the new text and word span."""
    surface = caption[mention.start : mention.end]
    new = word.capitalize() if surface[:1].isupper() else word
    head, tail = caption[: mention.start], caption[mention.end :]
    article = re.search(r"(?<![\w-])(an)\s+$", head, re.IGNORECASE)
    if article and new[0].lower() not in "aeiou":
        head = head[: article.start(1)] + head[article.start(1)] + head[article.end(1) :]  # keeps "A"/"a"
    return head + new + tail, (len(head), len(head) + len(new))


def rewrite(caption: str, word: str) -> tuple[str, tuple[int, int]]:
    """A caption holding `word`: its first person word replaced, or, naming none, `word` put in front."""
    found = mentions(caption)
    if found:
        return put(caption, word, found[0])
    prefix = f"a photo of a {word}"
    return f"{prefix}, {caption}" if caption else prefix, (len(prefix) - len(word), len(prefix))
