"""The caption-backend interfaces: captioners write text for crops, estimators guess gender and age.

Backends import their heavy libraries (torch, transformers, onnxruntime, dlib) in their
constructors, so importing this package stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.backends import Registry

Box = Sequence[float]  # x0, y0, x1, y1 in pixels of the crop

CAPTIONERS = Registry("caption.backend", "stages.captioners")
ESTIMATORS = Registry("caption.gender_model", "stages.captioners")


class Captioner(ABC):
    source: str  # written to `caption_source`, e.g. "blip:Salesforce/blip-image-captioning-large"
    describes: bool = True  # False: no text of its own; the caption is written from the class word (`write`)

    @abstractmethod
    def caption(self, images: Sequence[np.ndarray], seed: int | None = None) -> list[str]:
        """One caption per HxWx3 uint8 RGB image: beam search, or sampling seeded by `seed` when given."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Package versions and the model that produced the captions."""

    def write_people(self, words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
        """A caption from the class words alone, one a person left to right, and each word's character span
        (backends that do not describe)."""
        raise NotImplementedError(f"{type(self).__name__} describes images; it does not write from words")


@dataclass(frozen=True)
class Estimate:
    gender: str  # "male" | "female"
    confidence: float | None  # of the gender, 0..1; None when the model gives only its answer
    age: float  # years

    def class_word(self, child_age: float) -> str:
        if self.gender == "male":
            return "boy" if self.age < child_age else "man"
        return "girl" if self.age < child_age else "woman"


class Estimator(ABC):
    """Gender and age of the face in a box, from a face-attribute model."""

    name: str

    @abstractmethod
    def estimate(self, images: Sequence[np.ndarray], faces: Sequence[Box]) -> list[Estimate]:
        """For each HxWx3 uint8 RGB crop, the estimate for the face in the given box."""

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Package versions and model files (name and sha256)."""
