"""Some of test_resume's identities, for test_worker_crash, which loses a Ray worker mid-run: a run over
them must give their rows of the session's uninterrupted run of all of them (`reference`), which
test_resume builds anyway. Fewer photos go through the model stages; the loss still lands mid-filter,
and the subset keeps each case of the whole tree: photos filter drops, an identity verify drops (the
later stages' tasks without input rows), identities kept into the shards."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_resume import image_ids, shard_rows

# a task per identity; jeff_bezos_04 is dropped by verify, jack_dorsey_03 keeps 3 of its 5 photos past filter
FEW = ("jack_dorsey_03", "leonardo_dicaprio_07", "elon_musk_01", "jeff_bezos_04")


def subset_tree(tree: dict, root: Path, identities: tuple[str, ...]) -> dict:
    """A tree like `tree` (test_resume's `args` reads it) of `identities` alone: their photo folders, copied, and
    a names file of them."""
    for identity in identities:
        shutil.copytree(tree["root"] / "photos" / identity, root / "photos" / identity)
    (root / "names.txt").write_text("\n".join(identities) + "\n")
    return {"root": root}


def reference_ids(reference: Path, stage: str, identities: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """The rows `image_ids` gives for `stage` of the reference run, of `identities` alone."""
    return [row for row in image_ids(reference, stage) if row[0] in identities]


def reference_shard_rows(reference: Path, identities: tuple[str, ...]) -> list[tuple[str, str]]:
    return [row for row in shard_rows(reference) if row[0] in identities]
