"""Several people in one caption: whose class word is which.

A group photo's faces carry their identity from hygiene on (`faces[i].identity`, docs/multi-identity.md); the
target face is always its row's identity, even where no other face is labelled. The labelled people are ordered
left to right by the centre of their face box in the crop, and that order decides which "man" is which: the
caption's k-th person word (stages/class_words.py: `mentions`) belongs to the k-th person from the left. Where
the caption names a different number of people than are labelled, only the target's word is marked (the caption
stage already placed it), since no order can then be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages import class_words as cw
from stages.base import Row


@dataclass(frozen=True)
class Person:
    identity: str
    face: int  # index into the row's `faces` (and `crop_faces`)


def left_to_right(row: Row) -> list[Person]:
    """The row's labelled people in the crop, by the horizontal centre of their face boxes."""
    target = row["target_face"]
    labels = [face.get("identity") for face in row.get("faces") or []]  # none: the target alone is labelled
    labelled = [
        Person(row["identity"] if index == target else label, index)
        for index, label in enumerate(labels or [None] * len(row["crop_faces"]))
        if index == target or (label and label != row["identity"])
    ]
    centre = {index: (face["box"][0] + face["box"][2]) / 2 for index, face in enumerate(row["crop_faces"])}
    return sorted(labelled, key=lambda person: (centre[person.face], person.face))


Span = tuple[int, int]


def person_spans(caption: str, people: list[Person], target: Person, span: Span) -> dict[str, Span]:
    """identity -> [start, end) of its class word: the caption's person words matched to `people` in order,
    provided the target's own word sits at the target's place; else the target's `span` alone."""
    found = cw.mentions(caption)
    place = people.index(target)
    if len(found) != len(people) or (found[place].start, found[place].end) != tuple(span):
        return {target.identity: tuple(span)}
    return {person.identity: (mention.start, mention.end) for person, mention in zip(people, found, strict=True)}


def target_mention(caption: str, row: Row, word: str) -> cw.Mention | None:
    """Where the target's class word `word` goes: the person word at the target's place from the left when the
    caption names as many people as are labelled (the second "man" for the man on the right), else its first."""
    people, found = left_to_right(row), cw.mentions(caption)
    place = next(k for k, person in enumerate(people) if person.face == row["target_face"])
    if len(found) == len(people) > 1 and found[place].word == word:
        return found[place]
    return cw.find(caption, word)
