"""Face detection and embedding behind one small interface (`load_face_backend`)."""

from .base import LANDMARK_ORDER, Face, FaceBackend, ModelNotFound, load_face_backend

__all__ = ["LANDMARK_ORDER", "Face", "FaceBackend", "ModelNotFound", "load_face_backend"]
