"""Person segmentation: backends registered in `SEGMENTERS`, chosen by `segment.backend`."""

from __future__ import annotations

from pipeline.core.config import PipelineConfig

from .base import SEGMENTERS, PersonMask, Prompt, Segmenter, decode_mask, encode_mask, face_coverage


def open_segmenter(config: PipelineConfig) -> Segmenter:
    """The segmenter `segment.backend` names, loaded (once per worker: call it in a stage's setup)."""
    return SEGMENTERS.selected(config).load(config)


__all__ = ["SEGMENTERS", "PersonMask", "Prompt", "Segmenter", "decode_mask", "encode_mask", "face_coverage",
           "open_segmenter"]
