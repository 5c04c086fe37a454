"""Face labels are decisions on stored evidence (docs/multi-identity.md): a changed verify threshold or
`hygiene.label_margin` re-labels the faces of a finished run without re-embedding them. On a copy of the
shared run (tests/shared_run.py), verify and hygiene planned and run in this process as the engine does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.core.config import load_config
from pipeline.core.markers import part_path
from pipeline.core.names import run_identities
from pipeline.core.rundir import RunDir
from pipeline.engine.runner import TaskExecutor, plan_stage
from stages.filter import FilterStage
from stages.hygiene import HygieneStage
from stages.verify import VerifyStage

JOLIE = "angelina_jolie"  # her folder holds couple.jpg: her face (the target) and Brad Pitt's, not in the run


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its bytes' digest."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def couple_identities(out: Path, *overrides: str) -> list[str]:
    """Verify and hygiene run again with `overrides` on the run's own config; the couple photo's `identities`
    as hygiene's part holds them (left to right)."""
    run, config = RunDir(str(out)), load_config(out / "config.yaml", list(overrides))
    for stage, upstream in ((VerifyStage, FilterStage), (HygieneStage, VerifyStage)):
        plan = plan_stage(stage, upstream, config, run, run_identities(run))
        executor = TaskExecutor(stage, upstream.name, config, run.uri)
        assert all(executor.execute(spec).error is None for spec in plan.todo)
    rows = run.read_table(part_path("hygiene", JOLIE)).to_pylist()
    (couple,) = [row for row in rows if row["status"] == "ok" and len(row["faces"]) == 2]
    return couple["identities"]


@pytest.mark.slow
def test_a_changed_threshold_or_margin_relabels_without_re_embedding(shared_run, tmp_path) -> None:
    """Brad Pitt's face (SFace) sits at 0.38 to Matt Damon's centroid, 0.12 over the runner-up: below verify's
    threshold (0.5) no one's. At a threshold of 0.35 he is labelled Matt Damon (why the threshold is verify's),
    and a margin of 0.15 takes the label back; filter's faces and embeddings are never touched, and the margin
    touches none of verify's files either (its whole-run step's
    note included: the margin is not in its fingerprint)."""
    out = shared_run.copy(tmp_path / "run")
    filtered = digests(out / "stages" / "filter")
    assert couple_identities(out) == [JOLIE]  # current: nothing runs again
    assert couple_identities(out, "verify.threshold=0.35") == [JOLIE, "matt_damon"]
    verified = digests(out / "stages" / "verify")
    assert couple_identities(out, "verify.threshold=0.35", "hygiene.label_margin=0.15") == [JOLIE]
    assert digests(out / "stages" / "verify") == verified
    assert digests(out / "stages" / "filter") == filtered
