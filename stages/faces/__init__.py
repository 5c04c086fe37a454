"""Face detection and embedding: backends registered in `FACES`, chosen by `face.backend`."""

from __future__ import annotations

from pipeline.core.config import PipelineConfig

from .base import FACES, LANDMARK_ORDER, Face, FaceBackend


def open_backend(config: PipelineConfig) -> FaceBackend:
    """The backend `face.backend` names, loaded (once per worker: call it in a stage's setup)."""
    return FACES.selected(config).load(config)


__all__ = ["FACES", "LANDMARK_ORDER", "Face", "FaceBackend", "open_backend"]
