"""Face detection and embedding behind one small interface (`load_face_backend`)."""

from __future__ import annotations

from pipeline.core.config import FaceSection

from .base import LANDMARK_ORDER, Face, FaceBackend, load_face_backend


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


def check_backend(settings: FaceSection) -> None:
    """Raise ModelNotFound (what, where, how to get it) unless the backend's model files are there; loads none."""
    if settings.backend == "dlib":
        from .dlib_backend import model_files

        model_files(None, settings.dlib_detector)
    elif settings.backend == "insightface":
        from .insightface_backend import pack_dir, pack_files

        pack_files(settings.model, pack_dir(settings.model, settings.model_root))


__all__ = ["LANDMARK_ORDER", "Face", "FaceBackend", "check_backend", "load_face_backend",
           "open_backend"]
