"""`decide --split NAME` end to end on a copy of the shared finished run: a photo Matt Damon's verify kept, split
into George Clooney (every photo of him is in his own folder already, so the test moves one of Damon's), leaves
Matt Damon (`curator_split`, naming where it went) and becomes George Clooney's (kept, `decided_by: curator`) in
verify and in the shards, after one `decide --apply` run from the run directory alone (the names file the run
was made with is gone). Only the two identities run again; the other shards stay byte-identical. A name the run
does not know is refused."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.core.decisions import SPLIT, Decision
from pipeline.core.markers import Marker, part_path, read_part, write_marker, write_part
from pipeline.core.reasons import CURATOR_SPLIT
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, OK
from stages.curation import SPLIT_SOURCE, split_in
from tests.conftest import run_cli
from tests.shared_run import SharedRun
from tests.test_curation_cli import markers, shards

DAMON, CLOONEY = "matt_damon", "george_clooney"


def verdicts(out: Path, slug: str) -> dict[str, dict]:
    part = read_part(RunDir(str(out)), "verify", slug, ["image_id", "status", "reason", "detail", "decided_by"])
    return {row["image_id"]: row for row in part.to_pylist()}


def names_moved(out: Path, where: Path) -> None:
    """The run's saved config names a names file that is no longer there."""
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["run"]["names"] = str(where)
    (out / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
def test_a_photo_split_into_another_identity_becomes_hers_after_apply(shared_run: SharedRun, tmp_path: Path) -> None:
    out = shared_run.copy(tmp_path / "run")
    kept = sorted(image for image, row in verdicts(out, DAMON).items() if row["status"] == OK)
    photo = kept[0]  # the mechanism, on real rows: a curator says this photo of his is another identity's
    assert photo not in verdicts(out, CLOONEY)
    split = ("decide", "--out", str(out), "--identity", "Matt Damon", "--image", photo, "--split")

    unknown = run_cli(*split, "Someone New")
    assert unknown.returncode == 2 and unknown.stderr.strip().startswith("error: --split 'Someone New' is not an")
    assert "add the name to the names file" in unknown.stderr
    assert run_cli(*split, "George Clooney", "--note", "a namesake's photo").returncode == 0

    names_moved(out, tmp_path / "moved" / "names.txt")
    before, shards_before = markers(out), shards(out)
    applied = run_cli("decide", "--apply", "--out", str(out), timeout=600)
    assert applied.returncode == 0, applied.stderr

    after = markers(out)
    redone = {stage: {task for task, marker in now.items() if before[stage].get(task) != marker}
              for stage, now in after.items()}
    assert redone["crawl"] == redone["filter"] == set() and redone["verify"] == {DAMON, CLOONEY}
    assert all(tasks <= {DAMON, CLOONEY} for tasks in redone.values())
    left = verdicts(out, DAMON)[photo]
    assert (left["reason"], left["decided_by"]) == (CURATOR_SPLIT, "curator") and CLOONEY in left["detail"]
    joined = verdicts(out, CLOONEY)[photo]
    assert (joined["status"], joined["decided_by"]) == (OK, "curator")

    shards_after = shards(out)
    untouched = [shard for shard, (_, ids) in shards_before.items() if not ids & {DAMON, CLOONEY}]
    assert untouched and all(shards_after[shard] == shards_before[shard] for shard in untouched)
    held = {(row["identity"], row["image_id"]) for shard in shards_after for row in
            pq.read_table(out / "shards" / shard, columns=["identity", "image_id"]).to_pylist()}
    assert (CLOONEY, photo) in held and (DAMON, photo) not in held


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
