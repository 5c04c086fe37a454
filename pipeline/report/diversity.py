"""The report's pose spread: how widely each identity's kept photos turn, before and after `verify.max_images`.

Reads verify's rows only: "before" is every photo verify would keep (the kept ones and those dropped as
`not_selected_for_diversity`), "after" the kept ones. The spread is the root-mean-square distance of the target
faces' (yaw, pitch) from their mean, in degrees (stages/diversity.py: `pose_spread`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.reasons import NOT_SELECTED_FOR_DIVERSITY
from pipeline.core.schema import OK
from pipeline.report.html import cell, esc, num_cell, table
from stages.diversity import pose_spread, target_pose

SHOWN = 30  # identities listed, the most photos left out first


@dataclass(frozen=True)
class Spread:
    photos_before: int
    photos_after: int
    degrees_before: float
    degrees_after: float


def identity_spread(rows: list[dict]) -> Spread | None:
    """The identity's pose spread before and after diversity selection; None when verify kept no photo."""
    kept = [row for row in rows if row["status"] == OK]
    if not kept:
        return None
    before = kept + [row for row in rows if row["reason"] == NOT_SELECTED_FOR_DIVERSITY]
    poses = [np.array([target_pose(row["faces"], row["target_face"]) for row in chosen]) for chosen in (before, kept)]
    return Spread(len(before), len(kept), pose_spread(poses[0]), pose_spread(poses[1]))


def section(spreads: dict[str, Spread], names: dict[str, str]) -> str:
    if not spreads:
        return '<p class="muted">No identity has photos verify kept yet.</p>'
    left_out = sum(s.photos_before - s.photos_after for s in spreads.values())
    note = (f'<p class="muted">Head-pose spread of each identity\'s photos (RMS distance of yaw and pitch from their '
            f"mean, degrees): before and after verify.max_images, which keeps the most varied photos "
            f"(farthest-point selection); {left_out:,} photos left out as not_selected_for_diversity. The "
            f"{SHOWN} identities with the most left out; summary.json has all.</p>")
    ranked = sorted(spreads.items(), key=lambda item: (item[1].photos_after - item[1].photos_before, item[0]))[:SHOWN]
    rows = [[cell(esc(names.get(slug, slug)), sort=names.get(slug, slug)), num_cell(s.photos_before),
             num_cell(s.photos_after), num_cell(s.degrees_before, 1), num_cell(s.degrees_after, 1)]
            for slug, s in ranked]
    headers = ["identity", "photos before", "photos kept", "pose spread before (deg)", "pose spread kept (deg)"]
    return note + table(headers, rows, sortable=True)
