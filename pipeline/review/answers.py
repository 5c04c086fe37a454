"""What the `a` and `r` keys decide for each kind of queue item: `a` says the pipeline's choice stands, `r`
writes the decision that undoes it. Each answer is shown on its item, so the curator reads what a key will do.

- a photo (kept or dropped near the threshold, a group photo's face): `a` accept, `r` reject;
- a class word the gender model contradicts: `a` keeps the word (a class_word decision pinning it), `r` sets
  the word the gender model says (woman <-> man, girl <-> boy; person -> man or woman);
- a `possible_same_person` pair: `a` confirms two people (nothing changes), `r` merges the identity into the
  other one;
- a competing face cluster: `a` confirms the largest cluster is the person (nothing changes); no one decision
  undoes it (which photos are the namesake is for the identity's page), so `r` opens that page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.core.decisions import ACCEPT, CLASS_WORD, CONFIRM, MERGE, REJECT
from pipeline.review.queue import CLASS_WORD as WORD_ITEM
from pipeline.review.queue import COMPETING, SAME_PERSON
from stages.class_words import GENDER, PERSON

OPEN = "open"  # not a decision: the key opens the identity's page
COMPETING_CONFIRMED = "competing: the largest face cluster is this person"
ADULT = {"male": "man", "female": "woman"}
YOUNG = {"male": "boy", "female": "girl"}


@dataclass(frozen=True)
class Answer:
    kind: str  # a decision kind, or OPEN
    value: str | None  # the decision's value
    label: str  # what the key does, shown on the item


def answers(item: dict, names: dict[str, str]) -> dict[str, dict]:
    """The `a` and `r` answers of a queue item (or a photo of an identity's page), as the page needs them."""
    kind, other = item.get("kind"), item.get("other")
    if kind == SAME_PERSON and other:
        found = (Answer(CONFIRM, f"different from {other}", f"two people, kept apart from {names.get(other, other)}"),
                 Answer(MERGE, other, f"the same person: merge into {names.get(other, other)}"))
    elif kind == COMPETING:
        found = (Answer(CONFIRM, COMPETING_CONFIRMED, "the largest face cluster is this person"),
                 Answer(OPEN, None, "open the identity to split or reject the other person's photos"))
    elif kind == WORD_ITEM and item.get("class_word") and flipped(item["class_word"], other):
        word, flip = item["class_word"], flipped(item["class_word"], other)
        found = (Answer(CLASS_WORD, word, f"keep the class word {word!r}"),
                 Answer(CLASS_WORD, flip, f"class word {flip!r}, as the gender model says"))
    else:
        found = (Answer(ACCEPT, None, "accept: this is the person"), Answer(REJECT, None, "reject: not this person"))
    return {"a": asdict(found[0]), "r": asdict(found[1])}


def flipped(word: str, gender: str | None) -> str | None:
    """The class word of the gender the model estimates, at the word's age; None where they agree."""
    if gender not in ADULT or GENDER.get(word) == gender:
        return None
    return YOUNG[gender] if word in YOUNG.values() else ADULT[gender] if word in (*ADULT.values(), PERSON) else None
