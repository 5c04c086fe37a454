"""The NSFW-classifier interface: a model input per image made on CPU workers, a probability per input.

Backends import onnxruntime in their constructors, so importing this package stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from PIL import Image

from stages.backends import Registry

CLASSIFIERS = Registry("governance.nsfw_model", "stages.classifiers")


class NsfwClassifier(ABC):
    name: str

    @classmethod
    @abstractmethod
    def prepare(cls, image: Image.Image) -> np.ndarray:
        """The model's input for one upright RGB image: no model needed, so CPU workers make it."""

    @abstractmethod
    def score(self, inputs: Sequence[np.ndarray]) -> list[float]:
        """P(sexual content), 0..1, for each prepared input."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Package versions and model files (name and sha256)."""
