"""The shard step: the last stage's kept rows packed into Parquet shards, then the index and the dataset card.

Shards are planned from the markers (`shards.plan_shards`), written in parallel by the engine's tasks
(`map_tasks`) to temporary names, then the driver writes the index, the card and `shards/_done.json`.
An unchanged plan is not rewritten.
"""

from __future__ import annotations

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.markers import Marker, read_markers
from pipeline.core.names import Identity
from pipeline.core.optout import OptOutList
from pipeline.core.removals import load_ledger
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, OK
from pipeline.dataset import governance
from pipeline.dataset.face_optout import FaceRefusals, face_refusals
from pipeline.dataset.governance_card import card_section
from pipeline.dataset.pair_index import PairRules
from pipeline.dataset.shards import dataset_card, finish, is_current, opted_out_counts, plan_shards, write_shard
from pipeline.engine.driver import map_tasks
from pipeline.engine.progress import plain_text
from pipeline.engine.registry import STAGES
from pipeline.engine.stats import StageCounts, counts_from_markers, counts_table
from stages.filter import FilterStage


def write_dataset(config: PipelineConfig, run: RunDir, identities: list[Identity], force: bool) -> StageCounts:
    """The shard step: Ray tasks write the shards, then the driver writes the index and the card."""
    last = STAGES[-1]
    markers = read_markers(run, last.name)
    if not markers:
        raise UserError(f"no {last.name} output in {run.uri} to shard", f"run `python -m pipeline run --stage {last.name}` first")
    plan = plan_shards(config, identities, markers, packing_sizes(run, markers))
    if is_current(run, plan) and not force:
        return StageCounts("shard", tasks_skipped=len(plan.shards))
    run.remove_temporaries("shards")
    specs = [{"target": plan.file(i), "identities": ids} for i, ids in enumerate(plan.shards)]
    results = map_tasks(_write_one, specs, config.run.address, config.shard.resources.num_cpus, run_uri=run.uri,
                        upstream=last.name, row_group_rows=config.shard.row_group_rows, optout=plan.optout,
                        faces=face_refusals(run, config, plan.optout), pairs=plan.pairs)  # faces embedded once, here
    finish(run, plan, results, card(config, run, identities, results))
    written = sum(row["num_rows"] for result in results for row in result["index"])
    opted_out = opted_out_counts(results)  # rows the opt-out list covers now: counted as dropped here
    counts = StageCounts("shard", tasks_total=len(plan.shards))
    counts.add(written + opted_out.total(), {OK: written, DROPPED: opted_out.total()}, dict(opted_out))
    counts.tasks_done = len(results)
    return counts


def packing_sizes(run: RunDir, markers: dict[str, Marker]) -> dict[str, int]:
    """Per identity, the photos filter kept: a size for packing that a curator's decisions and verify's thresholds
    never change, so they never move an identity to another shard, and the shards of identities they do not
    touch stay byte-identical (docs/curation.md). A shard may hold fewer than shard.max_rows rows."""
    found = read_markers(run, FilterStage.name, list(markers))
    return {slug: marker.kept for slug, marker in found.items()}


def card(config: PipelineConfig, run: RunDir, identities: list[Identity], results: list[dict]) -> str:
    """The dataset card of these shard results: the funnel and governance as the markers and the ledger say now."""
    funnel = [counts_from_markers(run, stage.name, {i.slug for i in identities}, None) for stage in STAGES]
    shards = sorted({row["shard"] for result in results for row in result["index"]})
    facts = governance.gather(run, config, funnel, load_ledger(run), shards)
    return dataset_card(config, plain_text(counts_table("funnel", funnel)), results, card_section(facts))


def _write_one(spec: dict, run_uri: str, upstream: str, row_group_rows: int, optout: OptOutList,
               faces: FaceRefusals, pairs: PairRules | None) -> dict:
    return write_shard(RunDir(run_uri), upstream, spec["target"], spec["identities"], row_group_rows, optout, faces,
                       pairs)
