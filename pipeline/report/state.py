"""What a run directory holds: its identities, its config, each stage's current tasks, its shards.

A stage's task counts only while its marker is current: written under the stage config the run
last used (run.json) and from the upstream output that is there now. This is the same rule the
runner resumes by, so the report never mixes a stale verify with a fresh filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from pydantic import ValidationError

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.markers import consumed, read_markers
from pipeline.engine.registry import SHARD, STAGES
from pipeline.engine.runner import name_digest
from pipeline.dataset.shards import INDEX, is_current, plan_shards
from pipeline.engine.stats import StageCounts

RUN_INFO = "run.json"


@dataclass(frozen=True)
class StageState:
    """One stage's current tasks, reduced to what the report reads (not whole markers: 13,000 names
    times six stages of markers would be most of the report's memory)."""

    name: str
    kept: dict[str, int]  # current task -> its `ok` rows
    counts: StageCounts  # summed over the current tasks
    stale: int  # markers of another config or another upstream output
    total: int

    @property
    def status(self) -> str:
        if not self.kept:
            return "missing"
        return "done" if len(self.kept) == self.total else "partial"


@dataclass(frozen=True)
class RunState:
    uri: str
    identities: list[Identity]
    config: PipelineConfig
    stages: list[StageState]
    shards: dict | None  # identities, rows, files and whether they match the last stage; None when unwritten

    def done_stages(self, slug: str) -> list[StageState]:
        """The stages whose task for this identity is current (a prefix of the pipeline)."""
        return [stage for stage in self.stages if slug in stage.kept]

    def missing(self) -> list[str]:
        """Stages (and the shard step) not yet done for every identity."""
        names = [stage.name for stage in self.stages if stage.status != "done"]
        return names + ([] if self.shards and self.shards["current"] else [SHARD])


def load_state(run: RunDir) -> RunState:
    if not run.exists(RUN_INFO):
        raise UserError(f"no run in {run.uri}", "pass --out DIR of a run, or start one with `python -m pipeline run`")
    info = run.read_json(RUN_INFO)
    identities = [Identity(slug, name) for slug, name in info["identities"]]
    try:
        config = PipelineConfig.model_validate(yaml.safe_load(run.read_bytes("config.yaml")))
    except (yaml.YAMLError, ValidationError) as exc:
        raise UserError(f"{run.uri}/config.yaml is not a config this version reads: {exc}".replace("\n", " "),
                        "re-run `python -m pipeline run` on this run directory to refresh it") from exc
    stages = _stage_states(run, identities, info["stage_hashes"])
    return RunState(run.uri, identities, config, stages, _shards(run, config, identities))


def _stage_states(run: RunDir, identities: list[Identity], hashes: dict[str, str]) -> list[StageState]:
    inputs = {identity.slug: name_digest(identity.name) for identity in identities}  # what crawl consumed
    states = []
    for stage in STAGES:
        markers = read_markers(run, stage.name)
        current = [
            marker for slug, marker in markers.items()
            if slug in inputs and marker.config_hash == hashes.get(stage.name)
            and consumed(marker.input_digest, inputs[slug])  # a curator's decisions, applied or not, keep it current
        ]
        counts = StageCounts(stage.name, tasks_total=len(identities))
        for marker in current:
            counts.add(marker.rows_in, marker.statuses, marker.reasons, marker.device)
        stale = sum(1 for slug in markers if slug in inputs) - len(current)
        states.append(StageState(stage.name, {m.task: m.kept for m in current}, counts, stale, len(identities)))
        inputs = {marker.task: marker.output_digest for marker in current}
    return states


def _shards(run: RunDir, config: PipelineConfig, identities: list[Identity]) -> dict | None:
    if not run.exists(INDEX):
        return None
    index = run.read_table(INDEX)
    plan = plan_shards(config, identities, read_markers(run, STAGES[-1].name))
    return {
        "identities": index.num_rows,
        "rows": int(sum(index["num_rows"].to_pylist())),
        "files": len(set(index["shard"].to_pylist())),
        "current": is_current(run, plan),
    }
