"""`decide` end to end on a copy of the shared finished run: a reject recorded from the command line, applied
with `decide --apply`, re-runs only the touched identity (its row-by-row stages reused on the driver), leaves
the other identities' shards byte-identical, reaches the shards and the report, and survives `--force`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.core.markers import Marker, read_markers, read_part
from pipeline.core.reasons import CURATOR_REJECTED
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.dataset.shards import INDEX
from pipeline.engine.registry import STAGES
from tests.conftest import run_cli
from tests.shared_run import SharedRun

JOLIE = "angelina_jolie"


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


@pytest.mark.slow
def test_a_reject_applied_reruns_only_its_identity_and_survives_force(shared_run: SharedRun, tmp_path: Path) -> None:
    out = shared_run.copy(tmp_path / "run")
    verified = read_part(RunDir(str(out)), "verify", JOLIE, ["image_id", "status"])
    photo = sorted(verified.filter(pc.equal(verified["status"], OK))["image_id"].to_pylist())[0]
    before, shards_before = markers(out), shards(out)

    decided = run_cli("decide", "--out", str(out), "--identity", "Angelina Jolie", "--image", photo, "--reject",
                      "--note", "a look-alike")
    assert decided.returncode == 0, decided.stderr
    applied = run_cli("decide", "--apply", "--out", str(out), timeout=600)
    assert applied.returncode == 0, applied.stderr

    after = markers(out)
    redone = {stage: {task for task, marker in now.items() if before[stage].get(task) != marker}
              for stage, now in after.items()}
    assert redone["crawl"] == redone["filter"] == set()
    assert all(tasks <= {JOLIE} for tasks in redone.values()) and redone["verify"] == {JOLIE}
    for stage in ("safety_scores", "crop", "segment"):  # her other rows were judged already: no worker, no model
        assert after[stage][JOLIE].node == "", stage
    shards_after = shards(out)
    untouched = [shard for shard, (_, ids) in shards_before.items() if JOLIE not in ids]
    assert untouched and all(shards_after[shard] == shards_before[shard] for shard in untouched)
    rows = [row for shard in shards_after for row in
            pq.read_table(out / "shards" / shard, columns=["identity", "image_id"]).to_pylist()]
    assert photo not in {row["image_id"] for row in rows} and JOLIE in {row["identity"] for row in rows}
    page = (out / "report" / "index.html").read_text()
    assert 'id="curation"' in page and "1 decision in force about 1 identity" in page and photo in page

    forced = run_cli("run", "--stage", "verify", "--force", *shared_run.tree.args(out))
    assert forced.returncode == 0, forced.stderr
    again = read_part(RunDir(str(out)), "verify", JOLIE, ["image_id", "reason", "decided_by"]).to_pylist()
    outcome = {row["image_id"]: (row["reason"], row["decided_by"]) for row in again}
    assert outcome[photo] == (CURATOR_REJECTED, "curator")
