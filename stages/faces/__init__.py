"""Face detection and embedding: backends registered in `FACES`, chosen by `face.backend`."""

from __future__ import annotations

from dataclasses import asdict, replace

from pipeline.core.config import PipelineConfig

from .base import FACES, LANDMARK_ORDER, Calibration, Face, FaceBackend

VERIFY_KEYS = ("threshold", "cluster_threshold", "dup_similarity")


def open_backend(config: PipelineConfig) -> FaceBackend:
    """The backend `face.backend` names, loaded (once per worker: call it in a stage's setup)."""
    return FACES.selected(config).load(config)


def applied_calibration(config: PipelineConfig, backend: str) -> Calibration:
    """The calibration verify applies to `backend`'s faces: its own, with every threshold the verify section
    sets taking its place. The one place nulls are resolved; verify records the result in its rows.
    `training.copy_paste_max` is applied by the readers of the rows (it must not re-run verify)."""
    verify = config.verify
    explicit = {key: getattr(verify, key) for key in VERIFY_KEYS if getattr(verify, key) is not None}
    if verify.quality.min_face_score is not None:
        explicit["min_face_score"] = verify.quality.min_face_score
    own = FACES.get(backend).calibration if backend in FACES.names() else None  # rows of a backend since removed
    if own is None:
        missing = [f"verify.{key}" for key in VERIFY_KEYS if key not in explicit]
        if missing:
            raise ValueError(f"face backend {backend!r} declares no calibration: set {', '.join(missing)}")
        own = Calibration(**{key: explicit[key] for key in VERIFY_KEYS}, min_face_score=None, copy_paste_max=None)
    return replace(own, **explicit)


def calibrations() -> dict[str, dict | None]:
    """Every registered backend's own calibration: part of verify's fingerprint, so a new measurement re-runs it."""
    return {name: asdict(c) if (c := FACES.get(name).calibration) else None for name in FACES.names()}


__all__ = ["FACES", "LANDMARK_ORDER", "Calibration", "Face", "FaceBackend", "applied_calibration", "calibrations",
           "open_backend"]
