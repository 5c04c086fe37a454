"""The caption-backend interfaces: captioners write text for crops, estimators guess gender and age.

Backends import their heavy libraries (torch, transformers, onnxruntime, dlib) in their
constructors, so importing this package stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.config import PipelineConfig
from stages.backends import Registry

Box = Sequence[float]  # x0, y0, x1, y1 in pixels of the crop
Fit = Callable[[np.ndarray], np.ndarray]  # a decoded crop to what a captioner's processor would resize it to
Cut = Callable[[np.ndarray, Box], np.ndarray]  # a decoded crop and a face box in it to an estimator's face chip

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

    @classmethod
    def fitter(cls, config: PipelineConfig) -> Fit | None:
        """The resize CPU workers give each crop before it travels to the actors (the stage's `prepare`): exactly
        the one the model's processor makes, so `caption` of the result is `caption` of the crop, and the actor's
        processor has nothing left to resize. None: the crop travels as it is (no model, or no fixed input size)."""
        return None

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

    @classmethod
    def cutter(cls, config: PipelineConfig) -> Cut | None:
        """The face chip CPU workers cut for each face (the caption stage's `prepare`), exactly as `estimate` cuts it,
        so the actor gets the model's input (`estimate_chips`) instead of the whole crop. None: it gets the crop."""
        return None

    def estimate_chips(self, chips: Sequence[np.ndarray]) -> list[Estimate]:
        """The estimates from chips `cutter` cut (estimators that have one)."""
        raise NotImplementedError(f"{type(self).__name__} estimates from whole crops")

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Package versions and model files (name and sha256)."""
