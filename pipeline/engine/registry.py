"""The stages in pipeline order, and the check that each one's input columns exist upstream."""

from __future__ import annotations

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.schema import NAMES, ROW_KEYS
from stages.base import Stage
from stages.caption import CaptionStage
from stages.captioners import CAPTIONERS, pick_estimator
from stages.classifiers import CLASSIFIERS
from stages.crawl import CrawlStage
from stages.crop import CropStage
from stages.faces import FACES
from stages.filter import FilterStage
from stages.hygiene import HygieneStage
from stages.safety import SafetyScoresStage, SafetyStage
from stages.segment import SegmentStage
from stages.segmenters import SEGMENTERS
from stages.sources import SOURCES
from stages.verify import VerifyStage

BACKEND_FAMILIES = (SOURCES, FACES, SEGMENTERS, CAPTIONERS, CLASSIFIERS)
STAGES: tuple[type[Stage], ...] = (
    CrawlStage, FilterStage, VerifyStage, HygieneStage, SafetyScoresStage, SafetyStage, CropStage, SegmentStage,
    CaptionStage,
)
SHARD = "shard"  # the final step: not a per-identity stage, it packs identities into shards
STAGE_NAMES = (*(stage.name for stage in STAGES), SHARD)


def check_contracts(stages: tuple[type[Stage], ...] = STAGES) -> None:
    """Fail before scheduling anything if a stage needs a column no earlier stage produces."""
    available = set(NAMES.names) | set(ROW_KEYS.names)
    for stage in stages:
        missing = set(stage.requires) - available
        if missing:
            raise TypeError(f"stage {stage.name} requires {sorted(missing)}, produced by no earlier stage")
        available |= set(stage.produces.names)


def check_backends(config: PipelineConfig) -> None:
    """Config validation of the backend keys: each names a backend its family's registry holds."""
    for registry in BACKEND_FAMILIES:
        registry.selected(config)
    pick_estimator(config)


def stage_class(name: str) -> type[Stage]:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise UserError(f"unknown stage {name!r}", f"use one of: all, {', '.join(STAGE_NAMES)}")


def upstream_of(stage: type[Stage]) -> type[Stage] | None:
    index = STAGES.index(stage)
    return STAGES[index - 1] if index else None


def selected(stage: str) -> tuple[type[Stage], ...]:
    """The per-identity stages `--stage` names (none for `shard` alone)."""
    if stage == SHARD:
        return ()
    return STAGES if stage == "all" else (stage_class(stage),)
