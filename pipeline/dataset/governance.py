"""Consent, safety and takedown, as the dataset card and the QA report state them.

Everything comes from what the run holds: drops by reason from the stage markers, the removals
ledger, and a pass over the shards' small columns (never image bytes). Columns a check adds
(an age estimate, an NSFW score) are used where they exist, so an older run still gets a section
that says what it cannot tell.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.config import PipelineConfig
from pipeline.core.removals import TAKEN_DOWN, Ledger, Removal, ledger_summary
from pipeline.core.rundir import RunDir
from pipeline.core.markers import part_path, read_markers
from pipeline.core.reasons import (
    AI_GENERATED,
    IDENTITY_MINOR,
    LICENSE_NOT_ALLOWED,
    METADATA_PROHIBITS_TRAINING,
    MINOR,
    NSFW,
    OPTED_OUT_IDENTITY,
    OPTED_OUT_IMAGE,
    OPTED_OUT_URL,
    ROBOTS_DISALLOWED,
    ROBOTS_NOAI,
    ROBOTS_UNREACHABLE,
    TDM_RESERVED,
)
from pipeline.dataset.shards import INDEX, SHARDS
from pipeline.engine.stats import StageCounts


@dataclass(frozen=True)
class Check:
    name: str
    reasons: tuple[str, ...]  # the row reasons it drops with
    setting: str | None = None  # the config key that governs it, where this version has one
    evidence: tuple[str, ...] = ()  # its keys in a row's `consent` JSON (outcome per check)


CHECKS = (
    Check("robots.txt", (ROBOTS_DISALLOWED, ROBOTS_UNREACHABLE), "crawl.consent.robots_txt", ("robots_txt",)),
    Check("TDMRep (text and data mining reservation)", (TDM_RESERVED,), "crawl.consent.tdmrep",
          ("tdmrep_json", "tdm_header")),
    Check("X-Robots-Tag", (ROBOTS_NOAI,), "crawl.consent.x_robots_tag", ("x_robots_tag",)),
    Check("embedded metadata (rights, AI-generated marks)", (METADATA_PROHIBITS_TRAINING, AI_GENERATED),
          "crawl.consent.embedded_metadata", ("training_metadata", "ai_generated")),
    Check("opt-out lists", (OPTED_OUT_IDENTITY, OPTED_OUT_URL, OPTED_OUT_IMAGE), "governance.optout",
          ("optout_name", "optout_url", "optout_image")),
    Check("licences", (LICENSE_NOT_ALLOWED,), "crawl.allowed_licenses", ("license",)),
    Check("minors (estimated age)", (MINOR, IDENTITY_MINOR), "governance.min_age"),
    Check("NSFW", (NSFW,), "governance.max_nsfw"),
    Check("takedowns (removals ledger)", (TAKEN_DOWN,)),
)
PASS, ABSENT = "pass", "absent"  # consent outcomes: a signal that allows; none found (no metadata, no robots.txt)
NOT_RECORDED = "not recorded"  # a dataset row without that check's outcome (local files, older runs)
SAFETY_REASONS = (MINOR, IDENTITY_MINOR, NSFW)


@dataclass(frozen=True)
class Measure:
    """A per-image estimate a safety check decides on, and the buckets the card shows it in."""

    key: str
    title: str
    columns: tuple[str, ...]  # candidate column names, the first one present is used
    edges: tuple[float, ...]
    setting: str  # its threshold
    open_end: bool = False  # the last bucket has no upper bound (ages)


MEASURES = (  # the safety stage's age first: the one the minors check decides on
    Measure("age", "Estimated age (years)", ("safety_age", "estimated_age"), (0, 13, 18, 25, 35, 50, 65, 150),
            "governance.min_age", open_end=True),
    Measure("nsfw", "NSFW score (probability)", ("nsfw_score",), (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), "governance.max_nsfw"),
)
DATASET = "in the dataset"  # the series of the shards' rows
Observer = Callable[[Measure, str, np.ndarray], None]  # (measure, series, values): the report's histograms


@dataclass
class Distribution:
    column: str | None = None  # the column the data holds; None: not measured in this run
    series: dict[str, np.ndarray] = field(default_factory=dict)  # series -> counts per bucket
    missing: int = 0  # dataset images without a value

    def add(self, measure: Measure, series: str, values: np.ndarray) -> None:
        counts, _ = np.histogram(np.clip(values, measure.edges[0], measure.edges[-1]), measure.edges)
        self.series[series] = self.series.get(series, np.zeros(len(counts), np.int64)) + counts


@dataclass
class Governance:
    checks: list[dict]  # name, reasons, dropped, setting, value (None: no such setting), evidence
    reasons: dict[str, int]  # each governance reason's rows dropped, over every stage
    ledger: dict  # the removals ledger summarised: requests by kind and by reason
    removals: list[dict]  # the ledger's entries, oldest first
    dataset_rows: int | None = None  # None: no shards yet
    unknown: list[tuple[str, int | None]] = field(default_factory=list)  # what could not be checked, images
    distributions: dict[str, Distribution] = field(default_factory=dict)


def setting_value(config: PipelineConfig, key: str | None) -> object:
    """A dotted config key's value, or None where this version's config has no such key."""
    value: object = config
    for part in (key or "").split("."):
        if not part or not hasattr(value, part):
            return None
        value = getattr(value, part)
    return [str(item) for item in value] if isinstance(value, list) else value


def gather(run: RunDir, config: PipelineConfig, counts: list[StageCounts], ledger: Ledger, shards: list[str] | None,
           observe: Observer | None = None) -> Governance:
    """`counts`: the stages' rows by reason; `shards`: the dataset's shard files (None: none written yet)."""
    reasons: Counter[str] = Counter()
    for stage in counts:
        reasons.update(stage.reasons)
    checks = [{"name": check.name, "reasons": list(check.reasons), "dropped": sum(reasons[r] for r in check.reasons),
               "setting": check.setting, "value": setting_value(config, check.setting), "evidence": {}}
              for check in CHECKS]
    wanted = {reason for check in CHECKS for reason in check.reasons}
    facts = Governance(checks, {reason: reasons[reason] for reason in sorted(wanted) if reasons[reason]},
                       ledger_summary(ledger), [_entry(entry) for entry in ledger.entries],
                       distributions={measure.key: Distribution() for measure in MEASURES})
    if shards is not None:
        _dataset(run, shards, facts, observe)
    _safety_drops(run, counts, facts, observe)
    return facts


def _entry(entry: Removal) -> dict:
    return {"id": entry.id, "at": entry.at, "by": entry.by, "kind": entry.kind, "value": entry.value,
            "name": entry.name, "reason": entry.reason, "images": len(entry.image_ids)}


def indexed_shards(run: RunDir) -> list[str] | None:
    """The shard files the index names; None when no shards were written."""
    return sorted(set(run.read_table(INDEX, ["shard"])["shard"].to_pylist())) if run.exists(INDEX) else None


def shard_tables(run: RunDir, shards: list[str], wanted: tuple[str, ...]) -> Iterator[pa.Table]:
    """`wanted` columns of each shard, where it has them (never image bytes)."""
    for name in shards:
        rel = f"{SHARDS}/{name}"
        present = pq.read_schema(run.path(rel), filesystem=run.fs).names
        yield run.read_table(rel, [column for column in wanted if column in present])


def _dataset(run: RunDir, shards: list[str], facts: Governance, observe: Observer | None) -> None:
    """Consent evidence, coverage and distributions over the shards' rows: what the dataset holds."""
    wanted = ("source", "license", "consent", *(column for measure in MEASURES for column in measure.columns))
    rows, local, unlicensed = 0, 0, 0
    outcomes: dict[str, Counter[str]] = {key: Counter() for check in CHECKS for key in check.evidence}
    for table in shard_tables(run, shards, wanted):
        rows += table.num_rows
        local += table["source"].to_pylist().count("local")
        unlicensed += sum(1 for value in table["license"].to_pylist() if not value)
        _tally(table, outcomes)
        for measure in MEASURES:
            _measure(measure, table, facts, observe)
    facts.dataset_rows = rows
    metadata = outcomes["training_metadata"]
    for check, entry in zip(CHECKS, facts.checks, strict=True):
        entry["evidence"] = {key: dict(outcomes[key].most_common()) for key in check.evidence}
    facts.unknown = [
        ("images without a licence recorded (none was given by the page, the URL list or the source)", unlicensed),
        ("images from local folders: no robots.txt, TDMRep or X-Robots-Tag existed to check", local),
        ("images without embedded rights metadata (the image said nothing either way)", metadata[ABSENT]),
        ("images whose metadata was not checked (check off, older runs) or could not be read",
         rows - metadata[ABSENT] - metadata[PASS]),
        *((f"images without {measure.title.lower()}", facts.distributions[measure.key].missing)
          for measure in MEASURES if facts.distributions[measure.key].column),
        ("other people in a photo (group photos): only the photo's own identity is checked for consent", None),
        ("resized or re-encoded copies of a removed photo: the ledger matches exact bytes, URLs, hosts, identities",
         None),
    ]


def _tally(table: pa.Table, outcomes: dict[str, Counter[str]]) -> None:
    """Each check's outcome per row, from the `consent` JSON (older runs have none: not recorded)."""
    column = table["consent"].to_pylist() if "consent" in table.schema.names else [None] * table.num_rows
    for text in column:
        evidence = json.loads(text) if text else {}
        for key, counter in outcomes.items():
            counter[evidence.get(key, NOT_RECORDED)] += 1


def _column(measure: Measure, table: pa.Table) -> str | None:
    return next((name for name in measure.columns if name in table.schema.names), None)


def _values(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table[column].to_numpy(zero_copy_only=False), dtype=np.float64)  # nulls are NaN


def _count(facts: Governance, measure: Measure, series: str, values: np.ndarray, observe: Observer | None) -> None:
    facts.distributions[measure.key].add(measure, series, values)
    if observe:
        observe(measure, series, values)


def _measure(measure: Measure, table: pa.Table, facts: Governance, observe: Observer | None) -> None:
    column = _column(measure, table)
    if column is None:
        return
    values = _values(table, column)
    known = values[np.isfinite(values)]
    dist = facts.distributions[measure.key]
    dist.column, dist.missing = column, dist.missing + len(values) - len(known)
    _count(facts, measure, DATASET, known, observe)


def _safety_drops(run: RunDir, counts: list[StageCounts], facts: Governance, observe: Observer | None) -> None:
    """The values of the images the safety checks dropped, from the parts that say they dropped some."""
    for stage in counts:
        if not any(stage.reasons[reason] for reason in SAFETY_REASONS):
            continue
        for task, marker in read_markers(run, stage.stage).items():
            if any(marker.reasons.get(reason) for reason in SAFETY_REASONS):
                _drops_of(run, part_path(stage.stage, task), facts, observe)


def _drops_of(run: RunDir, rel: str, facts: Governance, observe: Observer | None) -> None:
    present = pq.read_schema(run.path(rel), filesystem=run.fs).names
    table = run.read_table(rel, [c for c in ("reason", *(c for m in MEASURES for c in m.columns)) if c in present])
    for reason in SAFETY_REASONS:
        dropped = table.filter(pc.equal(table["reason"], reason))
        for measure in MEASURES:
            column = _column(measure, dropped)
            if dropped.num_rows and column:
                values = _values(dropped, column)
                _count(facts, measure, f"dropped: {reason}", values[np.isfinite(values)], observe)


def summary(facts: Governance) -> dict:
    """The facts as plain JSON (summary.json)."""
    return {
        "checks": facts.checks,
        "reasons": facts.reasons,
        "ledger": facts.ledger,
        "removals": facts.removals,
        "dataset_rows": facts.dataset_rows,
        "unknown": [{"what": what, "images": images} for what, images in facts.unknown],
        "distributions": {key: {"column": dist.column, "missing": dist.missing,
                                "series": {name: counts.tolist() for name, counts in dist.series.items()}}
                          for key, dist in facts.distributions.items()},
    }
