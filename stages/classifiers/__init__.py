"""Whole-image classifiers the safety stages score with: NSFW backends registered in `CLASSIFIERS`, chosen by
`governance.nsfw_model`."""

from __future__ import annotations

from pipeline.core.config import PipelineConfig

from .base import CLASSIFIERS, NsfwClassifier


def open_classifier(config: PipelineConfig) -> NsfwClassifier:
    """The classifier `governance.nsfw_model` names, loaded (once per worker: call it in a stage's setup)."""
    return CLASSIFIERS.selected(config).load(config)


__all__ = ["CLASSIFIERS", "NsfwClassifier", "open_classifier"]
