"""Contact sheets: for a capped number of identities, kept crops beside the images dropped on the way.

Only the identities shown are read a second time (with image bytes), so the report's size and
time stay bounded on a run of thousands of names; the identity table links to the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc

from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.core.markers import read_part
from pipeline.report.data import IdentityStats
from pipeline.report.guidance import Candidate
from pipeline.report.state import RunState
from pipeline.report.thumbs import Thumbs

MAX_SHEETS = 30
MAX_KEPT = 8
MAX_DROPPED = 8
DROP_COLUMNS = ["image_id", "status", "reason", "detail", "raw_path", "url"]
FACE_COLUMNS = {"crawl": [], "filter": ["faces"]}  # later stages also carry verify's target face


@dataclass(frozen=True)
class Tile:
    thumb: str | None  # path relative to report/, None when there is nothing to show
    label: str  # caption of a kept image; stage and reason of a dropped one
    detail: str | None = None
    url: str | None = None
    image_id: str | None = None  # shown whole, selected by one click: what `decide --image` takes


@dataclass(frozen=True)
class Sheet:
    identity: IdentityStats
    kept: list[Tile]
    kept_total: int
    dropped: list[Tile]
    dropped_total: int


def choose(identities: list[IdentityStats], limit: int = MAX_SHEETS) -> list[IdentityStats]:
    """Those most in need of a look first (competing clusters, low purity, low similarity)."""
    return sorted(identities, key=IdentityStats.attention)[:limit]


def build_sheet(run: RunDir, state: RunState, stats: IdentityStats, thumbs: Thumbs) -> Sheet:
    done = state.done_stages(stats.slug)
    kept_rows: list[dict] = []
    if done:
        table = read_part(run, done[-1].name, stats.slug)
        kept_rows = table.filter(pc.equal(table["status"], OK)).to_pylist()
    kept_rows.sort(key=lambda row: (row.get("sim_to_centroid") is None, row.get("sim_to_centroid") or 0.0))
    # Later stages first: their drops say more about the identity than a failed download does.
    dropped = [(stage.name, row) for stage in reversed(done) for row in _dropped_rows(run, stage.name, stats.slug)]
    return Sheet(
        stats,
        [_kept_tile(row, thumbs) for row in kept_rows[:MAX_KEPT]],
        len(kept_rows),
        [_dropped_tile(stage, row, thumbs) for stage, row in dropped[:MAX_DROPPED]],
        len(dropped),
    )


def _dropped_rows(run: RunDir, stage: str, slug: str) -> list[dict]:
    """Not-kept rows of one stage, without image bytes."""
    extra = FACE_COLUMNS.get(stage, ["faces", "target_face", "sim_to_centroid"])
    table = read_part(run, stage, slug, DROP_COLUMNS + extra)
    return table.filter(pc.not_equal(table["status"], OK)).to_pylist()


def _face_box(row: dict) -> list[float] | None:
    faces, target = row.get("faces") or [], row.get("target_face")
    if target is not None and target < len(faces):
        return faces[target]["box"]
    return max((face["box"] for face in faces), key=lambda b: b[2] - b[0], default=None)


def _kept_tile(row: dict, thumbs: Thumbs) -> Tile:
    thumb = thumbs.crop(row) if row.get("crop_image") else thumbs.raw(row, _face_box(row))
    sim = row.get("sim_to_centroid")
    detail = f"similarity {sim:.3f}" if sim is not None else None
    return Tile(thumb, row.get("caption") or "(no caption yet)", detail, row.get("url"), row.get("image_id"))


def _dropped_tile(stage: str, row: dict, thumbs: Thumbs) -> Tile:
    sim = row.get("sim_to_centroid")
    label = f"{stage}: {row['reason'] or row['status']}" + (f" ({sim:.3f})" if sim is not None else "")
    return Tile(thumbs.raw(row, _face_box(row)), label, row.get("detail"), row.get("url"), row.get("image_id"))


def guidance_tile(candidate: Candidate, name: str, thumbs: Thumbs) -> Tile:
    return Tile(thumbs.face(candidate.image_id, candidate.raw_path, candidate.box),
                f"{candidate.sim:.3f} · {name}", candidate.detail, image_id=candidate.image_id)
