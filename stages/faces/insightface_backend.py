"""insightface on onnxruntime: SCRFD detection + ArcFace recognition from a model pack.

The pack's ONNX files go through insightface's own model router (`model_zoo.get_model`), which
recognises detector and recogniser by their input/output shapes. Nothing is ever downloaded: a
missing pack is an error that says where it was looked for and how to put it there.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ModelNotFound
from stages.backends import Backend, onnx_options
from stages.devices import CUDA_PROVIDER, PADDED_BATCHES, checked_providers, onnx_providers, padded

from .base import (
    FACES,
    Calibration,
    Face,
    FaceBackend,
    attach_embeddings,
    check_image,
    check_pairing,
    clip_box,
    file_sha256,
    has_area,
)

DEFAULT_PACK = "buffalo_l"
DEFAULT_ROOT = "~/.insightface"  # insightface's own default root; 2.x reads no environment variable for it
MAX_RECOGNITION_BATCH = 256  # aligned 112x112 crops per onnxruntime call, bounds GPU memory on crowded batches

def pack_dir(model: str | None, root: str | Path | None) -> Path:
    """An existing directory as given, else the pack `<root>/models/<model>`."""
    name = model or DEFAULT_PACK
    direct = Path(name).expanduser()
    if direct.is_dir():
        return direct
    return Path(root or DEFAULT_ROOT).expanduser() / "models" / name


def official_pack(config: PipelineConfig) -> list[str]:
    """The manifest's entry for the default pack (fetched and unpacked by `models fetch`); others are the user's."""
    return [DEFAULT_PACK] if config.face.model == DEFAULT_PACK else []


def onnx_files(folder: Path) -> list[Path]:
    """The pack's ONNX files; some packs (antelopev2) unzip into a folder of the same name inside."""
    return sorted(folder.glob("*.onnx")) or sorted(folder.glob("*/*.onnx"))


def missing_pack(model: str | None, folder: Path, what: str) -> ModelNotFound:
    name = model or DEFAULT_PACK
    fix = (
        f"on a machine with internet, get insightface's {name}.zip and unzip it so that {folder}/*.onnx exist "
        "(or set face.model to a directory of ONNX files with an SCRFD detector and an ArcFace recogniser)"
    )
    return ModelNotFound(f"insightface {what} for model {name!r}", [str(folder)], fix)


def pack_files(model: str | None, folder: Path) -> list[Path]:
    """The pack's ONNX files; ModelNotFound (what, where, fix) when there are none."""
    files = onnx_files(folder)
    if not files:
        raise missing_pack(model, folder, "model pack")
    return files


def route_models(files: list[Path], providers: list) -> dict[str, object]:
    """The first detection and first recognition model among `files`, by insightface's router."""
    from insightface.model_zoo import get_model

    found: dict[str, object] = {}
    for path in files:
        model = get_model(str(path), providers=providers, sess_options=onnx_options())
        task = getattr(model, "taskname", None)
        if task in ("detection", "recognition") and task not in found:
            found[task] = model
        if len(found) == 2:
            break  # packs also hold landmark and attribute models: no need to load those
    return found


def aligned_crop(image_bgr: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    from insightface.utils.face_align import norm_crop

    with warnings.catch_warnings():
        # insightface calls scikit-image's deprecated SimilarityTransform.estimate; nothing to act on here
        warnings.filterwarnings("ignore", message=".*estimate.*deprecated", category=FutureWarning)
        return norm_crop(image_bgr, landmark=landmarks, image_size=size)


@FACES.register
class InsightFaceBackend(FaceBackend, Backend):
    name = "insightface"
    fields = ("model", "model_root", "device", "det_size", "det_threshold")
    # ArcFace (buffalo_l) from the literature, not measured here (no ArcFace weights on our machines): deepface's
    # ArcFace pair cut is cosine 0.32 (distance 0.68); a centroid of several photos lifts same-person similarity
    # above pair level. SCRFD's own cut (face.det_threshold) is the score floor. Real same-person pairs sit around
    # 0.46 (WithAnyone's MultiID-2M), so a reference above 0.68 shows the target's shoot.
    calibration = Calibration(threshold=0.40, cluster_threshold=0.32, dup_similarity=0.90, min_face_score=0.5,
                              copy_paste_max=0.68)

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        return official_pack(config)

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        pack_files(config.face.model, pack_dir(config.face.model, config.face.model_root))

    @classmethod
    def load(cls, config: PipelineConfig) -> InsightFaceBackend:
        face = config.face
        root = str(face.model_root) if face.model_root else None
        return cls(face.model, root=root, device=face.device, det_size=face.det_size, det_threshold=face.det_threshold)

    def __init__(
        self,
        model: str | None = None,
        *,
        root: str | None = None,
        device: str = "auto",
        det_size: int = 640,
        det_threshold: float = 0.5,
    ) -> None:
        folder = pack_dir(model, root)
        files = pack_files(model, folder)
        self._pack = model or DEFAULT_PACK
        self._det_size = det_size
        found = route_models(files, onnx_providers(device))
        for task in ("detection", "recognition"):
            if task not in found:
                raise missing_pack(model, folder, f"{task} model (none of {[f.name for f in files]} is one)")
        self._detector, self._recognizer = found["detection"], found["recognition"]
        self._providers = checked_providers(self._detector.session.get_providers(), device, "SCRFD")
        checked_providers(self._recognizer.session.get_providers(), device, "ArcFace")
        # a CUDA session meets a few batch shapes only (cuDNN picks its kernels per shape); the CPU has no such cost
        self._batch_sizes = PADDED_BATCHES if self._providers.startswith(CUDA_PROVIDER) else ()
        if not self._detector.use_kps:
            raise ValueError(f"{self._detector.model_file}: SCRFD without keypoints cannot align faces for ArcFace")
        self._detector.prepare(0, input_size=(det_size, det_size), det_thresh=det_threshold)
        self.embedding_dim = int(self._recognizer.output_shape[-1])
        self._versions = self._describe()

    def _describe(self) -> dict[str, str]:
        import insightface
        import onnxruntime

        out = {
            "backend": self.name,
            "insightface": insightface.__version__,
            "onnxruntime": onnxruntime.__version__,
            "providers": self._providers,
            "pack": self._pack,
            "det_size": str(self._det_size),
        }
        for role, model in (("detector", self._detector), ("recognizer", self._recognizer)):
            out[f"{role}_model"] = Path(model.model_file).name
            out[f"{role}_sha256"] = file_sha256(Path(model.model_file))
        return out

    def embed(self, images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> list[list[Face]]:
        check_pairing(images, faces)
        size = int(self._recognizer.input_size[0])
        crops = []
        for image, image_faces in zip(images, faces, strict=True):
            bgr = _bgr(check_image(image))
            crops.extend(aligned_crop(bgr, face.landmarks, size) for face in image_faces)
        return attach_embeddings(faces, self._features(crops))

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        boxes, keypoints = self._detector.detect(_bgr(image), max_num=0)
        faces = []
        for row, points in zip(boxes, keypoints, strict=True):
            box = clip_box(row[:4], image)
            if has_area(box):  # boxes wholly in the detector's padding fall outside the image
                faces.append(Face(box=box, landmarks=points.astype(np.float32), score=float(row[4])))
        return faces

    def _features(self, crops: list[np.ndarray]) -> np.ndarray:
        """Raw ArcFace features (insightface's `face.embedding`) of BGR crops, batched (singly for a fixed batch)."""
        if not crops:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        fixed_batch = isinstance(self._recognizer.input_shape[0], int)
        step = 1 if fixed_batch else MAX_RECOGNITION_BATCH
        chunks = [self._feat(crops[i : i + step], () if fixed_batch else self._batch_sizes)
                  for i in range(0, len(crops), step)]
        return np.concatenate(chunks).astype(np.float32)

    def _feat(self, crops: list[np.ndarray], batch_sizes: tuple[int, ...]) -> np.ndarray:
        """ArcFace on `crops`, padded with blank crops up to the next of `batch_sizes` (none: as they come)."""
        return self._recognizer.get_feat(padded(crops, batch_sizes))[: len(crops)]


def _bgr(image_rgb: np.ndarray) -> np.ndarray:
    """insightface's models take OpenCV's BGR order (they swap to RGB inside)."""
    return np.ascontiguousarray(image_rgb[..., ::-1])
