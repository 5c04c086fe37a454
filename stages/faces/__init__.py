"""Face detection and embedding behind one small interface (`load_face_backend`)."""

from __future__ import annotations

from pipeline.config import FaceSection

from .base import LANDMARK_ORDER, Face, FaceBackend, ModelNotFound, load_face_backend


def open_backend(settings: FaceSection, device: str | None = None) -> FaceBackend:
    """The backend the `face` config section describes (`device` overrides it, e.g. for checks)."""
    return load_face_backend(
        settings.backend,
        settings.model,
        device=device or settings.device,
        det_size=settings.det_size,
        det_threshold=settings.det_threshold,
        model_root=str(settings.model_root) if settings.model_root else None,
        dlib_detector=settings.dlib_detector,
        upsample=settings.upsample,
    )


__all__ = ["LANDMARK_ORDER", "Face", "FaceBackend", "ModelNotFound", "load_face_backend", "open_backend"]
