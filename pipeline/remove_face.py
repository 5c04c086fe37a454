"""`python -m pipeline remove --face PHOTO ...`: take a person out of a run wherever their face is.

The photos are embedded with the run's face backend (stages/face_photos.py) and matched against
every face verify judged (pipeline/dataset/face_match.py): rows where the requester is the target
are taken down; where they stand beside someone else's target, `governance.bystander` blurs their
face in the crop and mask, or drops the row. The ledger entry names the rows and faces and keeps
each embedding only as a salted hash; the embeddings go to `governance/faceprints/` (the next
crawl needs them). A receipt for the requester lists what was removed or blurred by image_id
(the sha256 of the photo's bytes), never an identity or anything of anyone else.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core import faceprints
from pipeline.core.errors import UserError
from pipeline.core.removals import Removal, load_ledger, new_removal, record
from pipeline.core.rundir import RunDir
from pipeline.dataset.face_match import FaceMatches, match_cut, match_tables, verified_tables
from pipeline.dataset.takedown_parts import crawled
from stages.faces import open_backend
from stages.face_photos import embed_photos

if TYPE_CHECKING:
    from pipeline.core.config import PipelineConfig

RECEIPTS = "governance/receipts"


def face_request(run: RunDir, config: PipelineConfig, photos: list[Path], args: argparse.Namespace,
                 by: str) -> tuple[Removal, bool]:
    """The ledger entry of this request and whether it is new. The same photos again (their salted hashes are
    the entry's value) match again: rows crawled since get an entry of their own, else the first entry is
    applied again (finishing an interrupted takedown)."""
    embeddings = embed_photos(open_backend(config), config, photos)
    value = ",".join(sorted(faceprints.salted_hashes(run, embeddings)))
    earlier = [entry for entry in load_ledger(run).entries if (entry.kind, entry.value) == ("face", value)]
    cut = match_cut(config)
    found = match_tables(verified_tables(run, crawled(run)), embeddings, cut)
    if not earlier and not found.targets and not found.bystanders:
        raise UserError(f"no stored face in {run.uri} matches the photos (closest cosine {found.best:.3f}, "
                        f"needed {cut:.3f})", "to keep the person out of future crawls, add a face: entry to an "
                        "opt-out list (governance.optout)")
    removal = _removal(value, found, config.governance.bystander, args.reason, by)
    rows = set(removal.rows).difference(*(entry.rows for entry in earlier))
    blurred = set(removal.blurred).difference(*(entry.blurred for entry in earlier))
    if earlier and not rows and not blurred:
        return earlier[0], False
    removal = replace(removal, rows=tuple(sorted(rows)), blurred=tuple(sorted(blurred)),
                      identities=tuple(sorted({key.split("/", 1)[0] for key in rows | blurred})))
    faceprints.save(run, removal.id, embeddings)
    record(run, removal)
    return removal, True


def _removal(value: str, found: FaceMatches, bystander: str, reason: str | None, by: str) -> Removal:
    dropped = set(found.targets) | (set(found.bystanders) if bystander == "drop" else set())
    blurred = found.bystanders if bystander == "blur" else {}
    return new_removal(
        "face", value, reason, by,
        rows=tuple(sorted(f"{identity}/{image_id}" for identity, image_id in dropped)),
        blurred=tuple(sorted(f"{identity}/{image_id}/{face}" for (identity, image_id), faces in blurred.items()
                             for face in faces)),
        identities=tuple(sorted({identity for identity, _ in [*dropped, *blurred]})),
    )


def write_receipt(run: RunDir, removal: Removal, photos: int) -> str:
    """The requester's receipt: what was removed and blurred, by image_id; returns its path in the run."""
    taken_down = sorted({key.rsplit("/", 1)[1] for key in removal.rows})
    blurred = sorted({key.rsplit("/", 2)[1] for key in removal.blurred} - set(taken_down))
    receipt = {"request": removal.id, "at": removal.at, "photos_sent": photos, "reason": removal.reason,
               "taken_down": taken_down, "blurred": blurred,
               "note": "image_id is the SHA-256 of a photo's bytes; hash your own copies to find them here"}
    rel = f"{RECEIPTS}/{removal.id}.json"
    run.write_json(rel, receipt)
    return rel
