"""The target faces' quality evidence against verify's gates, and each identity's training pairs.

Both read verify's rows only. Runs made before filter measured quality have no values: their
histograms stay empty and say so; pairs need only embeddings and duplicate groups, which every run has.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from pipeline.core.config import PipelineConfig, TrainingSection
from pipeline.core.pairs import PairCounts, pair_counts, target_evidence
from pipeline.core.schema import OK
from pipeline.core.reasons import (
    BLURRY_FACE, CURATOR_REJECTED, CURATOR_SPLIT, EXTREME_POSE, LOW_FACE_SCORE, MANY_FACES, NOT_TARGET_IDENTITY,
    SMALL_FACE_SHARE,
)
from pipeline.report.hist import Histogram
from pipeline.report.html import cell, esc, num_cell, table
from stages.face_gates import large_faces

Row = dict
SHOWN_PAIRS = 30  # identities listed, those with the fewest servable targets first


def _field(name: str, transform: Callable[[float], float] = float) -> Callable[[Row], float | None]:
    def value(row: Row) -> float | None:
        raw = row["faces"][row["target_face"]].get(name)
        return None if raw is None else transform(raw)

    return value


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else -math.inf  # an infinite value is left out of the histogram


# not this person, by verify's similarity or a curator: their own series, not "other reasons"
WRONG_PERSON = (NOT_TARGET_IDENTITY, CURATOR_REJECTED, CURATOR_SPLIT)
WRONG_PERSON_SERIES = "dropped: wrong person"

# histogram -> (the target face's value, the verify.quality gate's drop reason)
METRICS: dict[str, tuple[Callable[[Row], float | None], str]] = {
    "sharpness": (_field("sharpness", _log10), BLURRY_FACE),
    "yaw": (_field("yaw", abs), EXTREME_POSE),
    "pitch": (_field("pitch", abs), EXTREME_POSE),
    "face_score": (_field("score"), LOW_FACE_SCORE),
    "image_share": (_field("image_share"), SMALL_FACE_SHARE),
    "large_faces": (lambda row: large_faces(row["faces"], row["target_face"]), MANY_FACES),
}


def add_quality(rows: list[Row], hists: dict[str, Histogram]) -> None:
    """Kept, dropped by the metric's own gate, and dropped otherwise: every row verify scored a target face for."""
    scored = [row for row in rows if row["target_face"] is not None and row["faces"]]
    for name, (value, reason) in METRICS.items():
        for series, chosen in (
            ("kept", [row for row in scored if row["status"] == OK]),
            (f"dropped: {reason}", [row for row in scored if row["reason"] == reason]),
            (WRONG_PERSON_SERIES, [row for row in scored if row["reason"] in WRONG_PERSON]),
            ("dropped: other reasons", [row for row in scored if row["status"] != OK
                                        and row["reason"] not in (reason, *WRONG_PERSON)]),
        ):
            hists[name].add(series, [value(row) for row in chosen])


def thresholds(config: PipelineConfig, calibration: dict | None) -> dict[str, tuple[float | None, str]]:
    """Each quality histogram's line: the gate's value (in the histogram's units) and its config key."""
    gates = config.verify.quality
    sharpness = math.log10(gates.min_sharpness) if gates.min_sharpness > 0 else None
    return {
        "sharpness": (sharpness, f"verify.quality.min_sharpness {gates.min_sharpness:g} (log10 {sharpness or 0:.2f})"),
        "yaw": line(gates.max_yaw, "verify.quality.max_yaw"),
        "pitch": line(gates.max_pitch, "verify.quality.max_pitch"),
        "face_score": line(calibration["min_face_score"] if calibration else None, "verify.quality.min_face_score"),
        "image_share": line(gates.min_image_share, "verify.quality.min_image_share"),
        "large_faces": line(gates.max_large_faces, "verify.quality.max_large_faces"),
    }


def line(value: float | None, key: str) -> tuple[float | None, str]:
    """A histogram's threshold line and its legend: the key and its value as set (3 significant digits)."""
    return value, key if value is None else f"{key} {value:.3g}"


def identity_pairs(rows: list[Row], training: TrainingSection) -> PairCounts | None:
    """The identity's (target, reference) pairs among the photos verify kept; None when it kept none, or when
    its rows record no copy-paste cut (written before verify recorded it) and none is set."""
    kept = [row for row in rows if row["status"] == OK]
    if not kept:
        return None
    try:
        limit = training.resolved((kept[0].get("calibration") or {}).get("copy_paste_max"))
    except ValueError:
        return None
    vectors = np.stack([target_evidence(row)[0] for row in kept])
    groups = np.array([row["dup_group"] or row["image_id"] for row in kept])
    return pair_counts(vectors, groups, limit)


def pairs_section(pairs: dict[str, PairCounts], names: dict[str, str], training: TrainingSection) -> str:
    if not pairs:
        return '<p class="muted">No identity has photos verify kept yet.</p>'
    total = sum(counts.pairs for counts in pairs.values())
    blocked = sum(counts.blocked for counts in pairs.values())
    limit = "the face backend's calibration" if training.copy_paste_max is None else f"{training.copy_paste_max:g}"
    note = (f'<p class="muted">Among the photos each identity keeps (as the identity table counts them): {total:,} '
            "target/reference "
            f"pairs allowed, {blocked:,} refused as copy-paste (target faces more alike than "
            f"training.copy_paste_max, {esc(limit)}); a pair never joins two photos of one near-duplicate group. "
            f"A target is servable with at least one reference left. The {SHOWN_PAIRS} identities with the fewest "
            "servable targets; summary.json has all.</p>")
    ranked = sorted(pairs.items(), key=lambda item: (item[1].servable, item[1].pairs, item[0]))[:SHOWN_PAIRS]
    rows = [[cell(esc(names.get(slug, slug)), sort=names.get(slug, slug)), num_cell(c.photos), num_cell(c.groups),
             num_cell(c.pairs), num_cell(c.blocked), num_cell(c.servable)] for slug, c in ranked]
    headers = ["identity", "photos", "distinct photos", "pairs allowed", "refused: copy-paste", "servable targets"]
    return note + table(headers, rows, sortable=True)
