"""A curator's decisions (`pipeline/core/decisions.py`) applied to a stage's rows: pure functions over rows.

Verify leaves the photos a curator rejected or split off out of its clustering (they are not this person,
so they must not pull the centroid) and then applies every photo decision to its verdicts; hygiene reads
the merges, caption the class word. Decisions are applied from the evidence already stored, so applying
them runs no model. A row a decision changed says so: `decided_by` is `curator`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.decisions import (
    ACCEPT, CLASS_WORD, MERGE, REJECT, SPLIT, TARGET_FACE, Decision, by_identity, digest, in_force, read_log,
)
from pipeline.core.markers import PartChanged, read_markers, read_pinned_part
from pipeline.core.reasons import CURATOR_REJECTED, CURATOR_SPLIT, MERGED_INTO_OTHER_IDENTITY, NO_FACE, TOO_FEW_IMAGES
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, OK
from stages.base import Row, drop, keep
from stages.face_gates import large_faces

CURATOR = "curator"  # the `decided_by` of a row a decision changed
VERIFY_KINDS = (REJECT, ACCEPT, SPLIT, TARGET_FACE)
SPLIT_SOURCE = "filter"  # verify's upstream: where a photo split into another identity is read from


def decisions_by_identity(run: RunDir) -> dict[str, list[Decision]]:
    """The decisions in force, per identity slug (the log is small: read whole, once per worker)."""
    return by_identity(in_force(read_log(run).rows))


def digests(run: RunDir, kinds: tuple[str, ...]) -> dict[str, str]:
    """Per identity with decisions of these kinds, their digest: part of what its task consumed."""
    found = {slug: digest(d for d in decisions if d.kind in kinds)
             for slug, decisions in decisions_by_identity(run).items()}
    return {slug: text for slug, text in found.items() if text}


def split_targets(run: RunDir) -> set[str]:
    """The identities a split photo can join: those with a verify task, i.e. whose filter kept a photo."""
    return {slug for slug, marker in read_markers(run, SPLIT_SOURCE).items() if marker.kept}


def splits_into(decisions: dict[str, list[Decision]]) -> dict[str, list[Decision]]:
    """A curator's named splits by the identity they move photos into (its slug, as `decide` resolved it)."""
    found: dict[str, list[Decision]] = defaultdict(list)
    for slug, own in decisions.items():
        for d in own:
            if d.kind == SPLIT and d.image and d.value and d.value != slug:
                found[str(d.value)].append(d)
    return dict(found)


def verify_inputs(run: RunDir) -> dict[str, str]:
    """Per identity, what besides its filter part decides its verify task: its own photo decisions, and the
    photos split into it with the filter output they come from (a new embedding there re-runs it too)."""
    found = digests(run, VERIFY_KINDS)
    incoming = splits_into(decisions_by_identity(run))
    sources = read_markers(run, SPLIT_SOURCE, {d.identity for splits in incoming.values() for d in splits})
    for target, splits in incoming.items():
        upstream = sorted(sources[d.identity].output_digest for d in splits if d.identity in sources)
        joined = json.dumps([found.get(target, ""), digest(splits), upstream])
        found[target] = hashlib.sha256(joined.encode()).hexdigest()[:16]
    return found


def split_in(run: RunDir, splits: list[Decision], identity: str, name: str) -> list[Row]:
    """The filter rows of the photos split into this identity, now its own (their source's part as pinned by
    its marker). A photo the source's filter no longer keeps is not taken in."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for d in splits:
        wanted[d.identity].add(str(d.image))
    markers = read_markers(run, SPLIT_SOURCE, set(wanted))
    rows = []
    for source in sorted(set(wanted) & set(markers)):
        try:
            table = read_pinned_part(run, SPLIT_SOURCE, source, markers[source].pin)
        except PartChanged as exc:  # not this task's input: the runner must not forget this identity's filter part
            raise RuntimeError(f"the photos split in from {source}: {exc}") from exc
        rows += [{**row, "identity": identity, "name": name} for row in table.to_pylist()
                 if row["image_id"] in wanted[source] and row["status"] == OK]
    return rows


def taken_in(rows: list[Row], splits: list[Decision]) -> list[Decision]:
    """The photos split into an identity, as accepts of its own (its own later decisions about them win)."""
    held = {row["image_id"] for row in rows}
    return [Decision(d.identity, ACCEPT, d.image, note=f"split from {d.identity}" + (f": {d.note}" if d.note else ""),
                     by=d.by, time=d.time) for d in splits if d.image in held]


@dataclass(frozen=True)
class Curation:
    """One identity's photo decisions, as verify applies them (merges: hygiene; class words: caption)."""

    verdicts: dict[str, Decision] = field(default_factory=dict)  # image_id -> its reject, accept or split
    targets: dict[str, int] = field(default_factory=dict)  # image_id -> the target face's index

    @classmethod
    def of(cls, decisions: list[Decision]) -> Curation:
        verdicts = {d.image: d for d in decisions if d.kind in (REJECT, ACCEPT, SPLIT) and d.image}
        targets = {d.image: int(d.value or 0) for d in decisions if d.kind == TARGET_FACE and d.image}
        return cls(verdicts, targets)

    def left_out(self, image_id: str) -> bool:
        """Not this person, by a decision: kept out of the identity's clustering."""
        verdict = self.verdicts.get(image_id)
        return verdict is not None and verdict.kind in (REJECT, SPLIT)

    def applied(self, rows: list[Row], min_images: int) -> list[Row]:
        """Verify's rows with the photo decisions applied, then verify's `min_images` rule again."""
        if not (self.verdicts or self.targets):
            return rows
        out = [self._decided(row) for row in rows]
        for i, row in enumerate(out):
            target = self.targets.get(row["image_id"])
            if target is not None and row["status"] == OK and 0 <= target < len(row["faces"] or []):
                out[i] = {**row, **_target_columns(row, target, centroid(out, row["image_id"])),
                          "decided_by": CURATOR}
            elif self.left_out(row["image_id"]) and row["faces"]:  # scored as verify would, for the report's labels
                direction = centroid(out, row["image_id"])
                best = int(np.argmax(_sims(row["faces"], direction))) if direction is not None else 0
                out[i] = {**row, **_target_columns(row, best, direction)}
        return enough_photos(out, min_images)

    def _decided(self, row: Row) -> Row:
        verdict, target = self.verdicts.get(row["image_id"]), self.targets.get(row["image_id"])
        if verdict is not None and verdict.kind == REJECT:
            return {**row, **drop(CURATOR_REJECTED, _detail("not this person", verdict)), "decided_by": CURATOR}
        if verdict is not None and verdict.kind == SPLIT:
            other = f"another person: moved to {verdict.value}" if verdict.value else "another person"
            return {**row, **drop(CURATOR_SPLIT, _detail(other, verdict)), "decided_by": CURATOR}
        chosen = target is not None and 0 <= target < len(row["faces"] or [])
        if (chosen or verdict is not None) and row["status"] == DROPPED and row["reason"] != NO_FACE:
            return {**row, **keep(), "decided_by": CURATOR}  # accepted (a chosen face says so too), even against verify
        return row


def _detail(what: str, decision: Decision) -> str:
    return f"{what}, decided by {decision.by}" + (f": {decision.note}" if decision.note else "")


def centroid(rows: list[Row], image_id: str) -> np.ndarray | None:
    """The identity's direction without this photo: the mean target face of the other kept rows (verify's
    leave-one-out scale); None when no other row is kept."""
    vectors = [row["faces"][row["target_face"]]["embedding"] for row in rows
               if row["status"] == OK and row["image_id"] != image_id and row["target_face"] is not None]
    if not vectors:
        return None
    mean = np.mean(np.array(vectors, dtype=np.float32), axis=0)
    return mean / (np.linalg.norm(mean) or 1.0)


def _sims(faces: list[Row], direction: np.ndarray) -> np.ndarray:
    return np.array([face["embedding"] for face in faces], dtype=np.float32) @ direction


def _target_columns(row: Row, target: int, direction: np.ndarray | None) -> Row:
    """The verify columns of a photo whose target face a curator chose, scored as verify scores faces."""
    faces = row["faces"]
    if direction is None:
        return {"target_face": target, "large_faces": large_faces(faces, target)}
    sims = _sims(faces, direction)
    others = [float(s) for i, s in enumerate(sims) if i != target]
    return {"target_face": target, "sim_to_centroid": float(sims[target]),
            "runner_up_sim": max(others) if others else None, "large_faces": large_faces(faces, target)}


def enough_photos(rows: list[Row], min_images: int) -> list[Row]:
    """Verify's rule after decisions, over the rows kept or dropped only for being too few: too few distinct
    photos drop them all, enough keep them all."""
    candidates = [row for row in rows if row["status"] == OK or row["reason"] == TOO_FEW_IMAGES]
    distinct = len({row["dup_group"] or row["image_id"] for row in candidates})
    detail = f"{distinct} distinct photos kept after the curator's decisions < {min_images}"
    verdict = keep() if distinct >= min_images else drop(TOO_FEW_IMAGES, detail)
    out = [{**row, **verdict} if row["status"] == OK or row["reason"] == TOO_FEW_IMAGES else row for row in rows]
    kept = sum(row["status"] == OK for row in out)
    return [{**row, "identity_kept": kept} for row in out]


def curated_merges(run: RunDir) -> dict[str, str]:
    """A curator's merges: identity slug -> the slug it merges into."""
    return {slug: str(d.value) for slug, decisions in decisions_by_identity(run).items()
            for d in decisions if d.kind == MERGE}


def merge_digest(merges: dict[str, str]) -> str:
    return json.dumps(sorted(merges.items())) if merges else ""


def merged_groups(groups: list[tuple[str, ...]], merges: dict[str, str]) -> list[tuple[str, ...]]:
    """hygiene.merge's groups (merge_groups' output: every identity in one) with a curator's merges joined in:
    the group of the identity merged away joins its target's group, behind it."""
    of = {slug: group for group in groups for slug in group}
    for source, target in merges.items():
        if source not in of or target not in of or of[source] is of[target]:
            continue  # an identity no longer listed, or already one group
        joined = of[target] + of[source]
        for slug in joined:
            of[slug] = joined
    return list(dict.fromkeys(of[slug] for group in groups for slug in group))


def marked_merges(rows: list[Row], merges: dict[str, str]) -> list[Row]:
    """Hygiene's rows a curator's merge moved (merged away, or taken in) say so."""
    if not merges:
        return rows
    return [{**row, "decided_by": CURATOR} if row["merged_from"] in merges or
            (row["reason"] == MERGED_INTO_OTHER_IDENTITY and row["identity"] in merges) else row for row in rows]


def class_words(run: RunDir) -> dict[str, str]:
    """A curator's class word per identity slug (caption applies it instead of the captions' majority)."""
    return {slug: str(d.value) for slug, decisions in decisions_by_identity(run).items()
            for d in decisions if d.kind == CLASS_WORD}
