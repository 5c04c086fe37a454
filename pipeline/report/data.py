"""Per-identity statistics, distributions and threshold-guidance candidates, in one streaming pass.

Identities are read one at a time, and only the columns a figure needs (never image bytes), so
memory holds one identity's rows plus a small record per identity.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipeline.core.config import TrainingSection
from pipeline.core.pairs import PairCounts
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.core.markers import read_part
from pipeline.core.reasons import NOT_TARGET_IDENTITY  # verify's threshold decision; other drops: counts
from pipeline.report.diversity import Spread, identity_spread
from pipeline.report.guidance import Guidance
from pipeline.report.hist import Distributions
from pipeline.report.quality import WRONG_PERSON, WRONG_PERSON_SERIES, add_quality, identity_pairs
from pipeline.report.state import RunState

COLUMNS = {
    "filter": ["status", "width", "height", "faces"],
    "verify": ["identity", "image_id", "status", "reason", "detail", "sim_to_centroid", "identity_purity",
               "identity_competing", "raw_path", "target_face", "faces", "face_backend", "dup_group", "calibration"],
    "segment": ["status", "mask_area"],
    # with what a training pair needs: pairs are counted over the rows the dataset keeps, as the identity table
    "caption": ["status", "caption", "class_word", "class_word_disagrees", "image_id", "faces", "target_face",
                "dup_group", "calibration"],
}


@dataclass
class IdentityStats:
    slug: str
    name: str
    done_through: str | None = None  # the last stage whose task for it is current
    crawled: int | None = None
    kept: int | None = None  # `ok` rows of that last stage
    sim_mean: float | None = None  # over the images verify kept
    sim_min: float | None = None
    purity: float | None = None
    competing: bool | None = None
    class_word: str | None = None
    class_word_checked: int = 0  # kept captions with a confident gender estimate
    class_word_disagrees: int = 0

    def attention(self) -> tuple:
        """Sort key: the identities a person should look at first."""
        missing = 2.0
        return (not self.competing, self.purity if self.purity is not None else missing,
                self.sim_min if self.sim_min is not None else missing, -self.class_word_disagrees)


@dataclass
class Gathered:
    identities: list[IdentityStats]
    dists: Distributions = field(default_factory=Distributions)
    guidance: Guidance = field(default_factory=Guidance)
    face_backends: set[str] = field(default_factory=set)
    calibration: dict | None = None  # the thresholds verify applied, as its rows record them
    training: TrainingSection = field(default_factory=TrainingSection)  # the rules pairs are counted under
    pairs: dict[str, PairCounts] = field(default_factory=dict)  # identity slug -> its training pairs
    spreads: dict[str, Spread] = field(default_factory=dict)  # identity slug -> pose spread around verify.max_images


def gather(run: RunDir, state: RunState) -> Gathered:
    result = Gathered([], training=state.config.training)
    for identity in state.identities:
        stats = IdentityStats(identity.slug, identity.name)
        for stage in state.done_stages(identity.slug):
            stats.done_through, stats.kept = stage.name, stage.kept[identity.slug]
            if stage.name == "crawl":
                stats.crawled = stats.kept
            if stage.name in COLUMNS:
                rows = read_part(run, stage.name, identity.slug, COLUMNS[stage.name]).to_pylist()
                READERS[stage.name](rows, stats, result)
        result.identities.append(stats)
    return result


def _filter(rows: list[dict], stats: IdentityStats, result: Gathered) -> None:
    hists = result.dists.hists
    for series, ok in (("kept by filter", True), ("dropped by filter", False)):
        chosen = [row for row in rows if (row["status"] == OK) == ok]
        hists["short_side"].add(series, [min(r["width"], r["height"]) for r in chosen if r["width"] and r["height"]])
        hists["face_size"].add(series, [max(_side(face["box"]) for face in r["faces"]) for r in chosen if r["faces"]])


def _side(box: list[float]) -> float:
    return max(box[2] - box[0], box[3] - box[1])


def _verify(rows: list[dict], stats: IdentityStats, result: Gathered) -> None:
    kept = [row for row in rows if row["status"] == OK]
    sims = [row["sim_to_centroid"] for row in kept if row["sim_to_centroid"] is not None]
    if sims:
        stats.sim_mean, stats.sim_min = sum(sims) / len(sims), min(sims)
    scored = [row for row in rows if row["identity_purity"] is not None]
    if scored:
        stats.purity, stats.competing = scored[0]["identity_purity"], scored[0]["identity_competing"]
    result.face_backends.update(row["face_backend"] for row in rows if row["face_backend"])
    result.calibration = result.calibration or next((r["calibration"] for r in rows if r.get("calibration")), None)
    hist = result.dists.hists["sim_to_centroid"]
    hist.add("kept", sims)
    hist.add(WRONG_PERSON_SERIES, [r["sim_to_centroid"] for r in rows if r["reason"] in WRONG_PERSON])
    others = [r["sim_to_centroid"] for r in rows if r["status"] != OK and r["reason"] not in WRONG_PERSON]
    hist.add("dropped: other reasons", others)
    for row in rows:
        if row["sim_to_centroid"] is not None and (row["status"] == OK or row["reason"] == NOT_TARGET_IDENTITY):
            result.guidance.offer(row, kept=row["status"] == OK)
    add_quality(rows, result.dists.hists)
    if (spread := identity_spread(rows)) is not None:
        result.spreads[stats.slug] = spread
    _pairs(rows, stats, result)  # an identity not captioned yet: verify's kept photos


def _segment(rows: list[dict], stats: IdentityStats, result: Gathered) -> None:
    hist = result.dists.hists["mask_area"]
    hist.add("kept", [row["mask_area"] for row in rows if row["status"] == OK])
    hist.add("dropped", [row["mask_area"] for row in rows if row["status"] != OK])


def _caption(rows: list[dict], stats: IdentityStats, result: Gathered) -> None:
    kept = [row for row in rows if row["status"] == OK]
    result.dists.hists["caption_words"].add("kept", [len((row["caption"] or "").split()) for row in kept])
    words = Counter(row["class_word"] for row in kept if row["class_word"])
    result.dists.class_words.update(words)
    stats.class_word = words.most_common(1)[0][0] if words else None
    checked = [row["class_word_disagrees"] for row in kept if row["class_word_disagrees"] is not None]
    stats.class_word_checked, stats.class_word_disagrees = len(checked), sum(checked)
    _pairs(rows, stats, result)  # over the photos that passed every stage, replacing verify's count


def _pairs(rows: list[dict], stats: IdentityStats, result: Gathered) -> None:
    pairs = identity_pairs(rows, result.training)
    if pairs is not None:
        result.pairs[stats.slug] = pairs
    else:
        result.pairs.pop(stats.slug, None)


READERS = {"filter": _filter, "verify": _verify, "segment": _segment, "caption": _caption}
