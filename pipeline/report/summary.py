"""summary.json: the report's numbers for scripts (and for the tests that check them)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone

from pipeline.core.schema import DROPPED, FAILED, OK
from pipeline.report.data import Gathered
from pipeline.report.guidance import Candidate
from pipeline.report.state import RunState, StageState


def _stage(stage: StageState) -> dict:
    counts = stage.counts
    return {
        "stage": stage.name,
        "status": stage.status,
        "tasks_done": counts.tasks_done,
        "tasks_total": counts.tasks_total,
        "tasks_stale": stage.stale,
        "rows_in": counts.rows_in,
        "kept": counts.statuses[OK],
        "dropped": counts.statuses[DROPPED],
        "failed": counts.statuses[FAILED],
        "reasons": dict(counts.reasons),
        "devices": dict(counts.devices),
    }


def _faces(candidates: list[Candidate]) -> list[dict]:
    return [{"identity": c.identity, "image_id": c.image_id, "sim": c.sim} for c in candidates]


def summary(
    state: RunState, gathered: Gathered, threshold: float | None, shown: list[str], generations: list[dict]
) -> dict:
    guidance = gathered.guidance
    return {
        "run": state.uri,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "stages": [_stage(stage) for stage in state.stages],
        "missing_stages": state.missing(),
        "shards": state.shards,
        "face_backends": sorted(gathered.face_backends),
        "verify_threshold": threshold,
        "identities": [asdict(stats) for stats in gathered.identities],
        "distributions": {name: hist.summary() for name, hist in gathered.dists.hists.items()},
        "class_words": dict(gathered.dists.class_words),
        "guidance": {
            "lowest_kept": _faces(guidance.lowest_kept()),
            "highest_dropped": _faces(guidance.highest_dropped()),
        },
        "contact_sheets": shown,
        "generations": generations,
    }
