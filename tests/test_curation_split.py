"""A photo split into another identity of the run is read from its source's filter part (stages/curation.py:
split_in); `decide --split NAME` end to end is in tests/test_curation_cli.py, in the same apply as a reject."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.decisions import SPLIT, Decision
from pipeline.core.markers import Marker, part_path, write_marker, write_part
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, OK
from stages.curation import SPLIT_SOURCE, split_in

DAMON, CLOONEY = "matt_damon", "george_clooney"


def test_split_photos_are_read_from_the_sources_part_as_its_marker_pins_it(tmp_path: Path) -> None:
    """Only the split photo, kept by the source's filter, joins; a source part changed since its marker was written
    fails the task (RuntimeError: retried next run), never the PartChanged that would make the runner forget the
    taking identity's own filter part."""
    run = RunDir(str(tmp_path))
    rows = [{"identity": DAMON, "name": "Matt Damon", "image_id": c * 64, "status": status}
            for c, status in (("a", OK), ("b", OK), ("c", DROPPED))]
    write_part(run, SPLIT_SOURCE, DAMON, pa.Table.from_pylist(rows))
    write_marker(run, Marker(SPLIT_SOURCE, DAMON, "h", "i", "d", 3, 3, {OK: 2, DROPPED: 1}, {}))
    splits = [Decision(DAMON, SPLIT, image * 64, CLOONEY) for image in "ac"]

    joined = split_in(run, splits, CLOONEY, "George Clooney")
    assert [(row["identity"], row["name"], row["image_id"]) for row in joined] == [
        (CLOONEY, "George Clooney", "a" * 64)]
    (tmp_path / part_path(SPLIT_SOURCE, DAMON)).write_bytes(b"not the part its marker pinned")
    with pytest.raises(RuntimeError, match="split in from matt_damon"):
        split_in(run, splits, CLOONEY, "George Clooney")
