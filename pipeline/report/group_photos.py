"""The report's section on group photos: the photos in the shards with two or more labelled identities (the
samples `export --format multiid` writes), counted, and the first few shown with every labelled face boxed
and named (docs/multi-identity.md)."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.core.rundir import RunDir
from pipeline.dataset.shards import SHARDS
from pipeline.report.gallery import tiles
from pipeline.report.sheets import Tile
from pipeline.report.thumbs import Thumbs

SHOWN = 12  # group photos drawn; the count covers all
COLUMNS = ["identity", "image_id", "raw_path", "faces", "num_identities"]


def build(run: RunDir, thumbs: Thumbs) -> tuple[str, dict]:
    """The section's HTML and its numbers for summary.json."""
    photos = group_rows(run)
    if photos is None:
        return '<p class="muted">No shards yet: group photos are counted in the dataset the shard step writes.</p>', {}
    shown = [tile(row, thumbs) for row in photos[:SHOWN]]
    intro = (f"<p><b>{len(photos):,}</b> multi-identity samples: photos in the shards with two or more labelled "
             "identities (every face of a kept photo is labelled with the run's identity whose centroid it is "
             "closest to, above verify's threshold and by <code>hygiene.label_margin</code> over the runner-up). "
             "<code>export --format multiid</code> writes one sample per photo.</p>")
    return intro + tiles(shown, len(photos), "No photo holds two labelled identities."), {"samples": len(photos)}


def group_rows(run: RunDir) -> list[dict] | None:
    """Each photo with two or more labelled identities once (a photo kept under each of its people is one)."""
    files = [run.path(SHARDS, name) for name in run.list_files(SHARDS) if name.startswith("train-")]
    if not files:
        return None
    dataset = ds.dataset(files, filesystem=run.fs, format="parquet")
    if "num_identities" not in dataset.schema.names:  # shards written before faces were labelled
        return []
    table = dataset.to_table(columns=COLUMNS, filter=pc.field("num_identities") >= 2)
    photos: dict[str, dict] = {}
    for row in table.to_pylist():
        photos.setdefault(row["image_id"], row)
    return list(photos.values())


def tile(row: dict, thumbs: Thumbs) -> Tile:
    named = sorted((face for face in row["faces"] if face["identity"]), key=lambda face: face["box"][0])
    faces = [(face["box"], face["identity"]) for face in named]
    return Tile(thumbs.labelled(row, faces), ", ".join(name for _, name in faces), image_id=row["image_id"])
