"""`decide` end to end on a copy of the shared finished run, in one `decide --apply` (a run costs a minute): a reject
recorded from the command line re-runs only the touched identity (its row-by-row stages reused on the driver),
reaches the shards and the report, and survives `--force`; a photo split into another identity of the run leaves
its own (`curator_split`, naming where it went) and becomes the other's (kept, `decided_by: curator`); the apply
works from the run directory alone (the names file the run was made with is gone); the shards of identities no
decision touched stay byte-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.core.markers import Marker, read_markers, read_part
from pipeline.core.reasons import CURATOR_REJECTED, CURATOR_SPLIT
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.dataset.shards import INDEX
from pipeline.engine.registry import STAGES
from tests.conftest import run_cli
from tests.shared_run import SharedRun

JOLIE, DAMON, CLOONEY = "angelina_jolie", "matt_damon", "george_clooney"


def markers(out: Path) -> dict[str, dict[str, Marker]]:
    run = RunDir(str(out))
    return {stage.name: dict(read_markers(run, stage.name)) for stage in STAGES}


def shards(out: Path) -> dict[str, tuple[str, set[str]]]:
    """Shard file -> (sha256 of its bytes, the identities it holds)."""
    held: dict[str, set[str]] = {}
    for entry in pq.read_table(out / INDEX).to_pylist():
        held.setdefault(entry["shard"], set()).add(entry["identity"])
    return {shard: (hashlib.sha256((out / "shards" / shard).read_bytes()).hexdigest(), ids)
            for shard, ids in held.items()}


def kept_photos(out: Path, slug: str) -> list[str]:
    verified = read_part(RunDir(str(out)), "verify", slug, ["image_id", "status"])
    return sorted(verified.filter(pc.equal(verified["status"], OK))["image_id"].to_pylist())


def verdicts(out: Path, slug: str) -> dict[str, dict]:
    part = read_part(RunDir(str(out)), "verify", slug, ["image_id", "status", "reason", "detail", "decided_by"])
    return {row["image_id"]: row for row in part.to_pylist()}


def names_moved(out: Path, where: Path) -> None:
    """The run's saved config names a names file that is no longer there."""
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["run"]["names"] = str(where)
    (out / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
def test_decisions_applied_rerun_only_their_identities_and_survive_force(shared_run: SharedRun,
                                                                           tmp_path: Path) -> None:
    out = shared_run.copy(tmp_path / "run")
    photo = kept_photos(out, JOLIE)[0]
    moved = kept_photos(out, DAMON)[0]  # every photo of Clooney is in his folder: the split moves one of Damon's
    assert moved not in verdicts(out, CLOONEY)
    before, shards_before = markers(out), shards(out)

    decided = run_cli("decide", "--out", str(out), "--identity", "Angelina Jolie", "--image", photo, "--reject",
                      "--note", "a look-alike")
    assert decided.returncode == 0, decided.stderr
    split = ("decide", "--out", str(out), "--identity", "Matt Damon", "--image", moved, "--split")
    unknown = run_cli(*split, "Someone New")
    assert unknown.returncode == 2 and unknown.stderr.strip().startswith("error: --split 'Someone New' is not an")
    assert "add the name to the names file" in unknown.stderr
    assert run_cli(*split, "George Clooney", "--note", "a namesake's photo").returncode == 0
    names_moved(out, tmp_path / "moved" / "names.txt")
    applied = run_cli("decide", "--apply", "--out", str(out), timeout=600)
    assert applied.returncode == 0, applied.stderr

    after = markers(out)
    redone = {stage: {task for task, marker in now.items() if before[stage].get(task) != marker}
              for stage, now in after.items()}
    assert redone["crawl"] == redone["filter"] == set() and redone["verify"] == {JOLIE, DAMON, CLOONEY}
    assert all(tasks <= {JOLIE, DAMON, CLOONEY} for tasks in redone.values())
    for stage in ("safety_scores", "crop", "segment"):  # her other rows were judged already: no worker, no model
        assert after[stage][JOLIE].node == "", stage
    left = verdicts(out, DAMON)[moved]
    assert (left["reason"], left["decided_by"]) == (CURATOR_SPLIT, "curator") and CLOONEY in left["detail"]
    assert (verdicts(out, CLOONEY)[moved]["status"], verdicts(out, CLOONEY)[moved]["decided_by"]) == (OK, "curator")
    shards_after = shards(out)
    untouched = [shard for shard, (_, ids) in shards_before.items() if not ids & {JOLIE, DAMON, CLOONEY}]
    assert untouched and all(shards_after[shard] == shards_before[shard] for shard in untouched)
    rows = {(row["identity"], row["image_id"]) for shard in shards_after for row in
            pq.read_table(out / "shards" / shard, columns=["identity", "image_id"]).to_pylist()}
    assert photo not in {image for _, image in rows} and JOLIE in {identity for identity, _ in rows}
    assert (CLOONEY, moved) in rows and (DAMON, moved) not in rows
    page = (out / "report" / "index.html").read_text()
    assert 'id="curation"' in page and "2 decisions in force about 2 identities" in page and photo in page

    forced = run_cli("run", "--stage", "verify", "--force", *shared_run.tree.args(out))
    assert forced.returncode == 0, forced.stderr
    again = read_part(RunDir(str(out)), "verify", JOLIE, ["image_id", "reason", "decided_by"]).to_pylist()
    outcome = {row["image_id"]: (row["reason"], row["decided_by"]) for row in again}
    assert outcome[photo] == (CURATOR_REJECTED, "curator")
    assert (verdicts(out, CLOONEY)[moved]["status"], verdicts(out, CLOONEY)[moved]["decided_by"]) == (OK, "curator")
