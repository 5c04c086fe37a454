"""The segmentation-backend interface: for each crop, the mask of the person whose face box is given.

Backends import their heavy libraries (torch, ultralytics, segment-anything) in their constructors,
so importing this package stays cheap. Masks are stored as 1-bit PNG: any image library decodes
them to the crop's size, and a 1024 x 1024 person mask takes a few kilobytes.
"""

from __future__ import annotations

import io
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from stages.backends import Registry

Box = Sequence[float]  # x0, y0, x1, y1 in pixels of the crop

SEGMENTERS = Registry("segment.backend", "stages.segmenters")


@dataclass(frozen=True)
class Prompt:
    """What a segmenter is told about one crop: the target face, and the other faces (not that person)."""

    face: Box
    others: tuple[Box, ...] = ()


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make field-wise equality ambiguous
class PersonMask:
    mask: np.ndarray  # HxW bool, the crop's size; True = the person
    box: tuple[float, float, float, float]  # the person box that prompted or seeded the mask


class Segmenter(ABC):
    source: str  # written to `mask_source`: the method and model, e.g. "yolo+sam:vit_h"

    @abstractmethod
    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[Prompt]) -> list[PersonMask | None]:
        """For each HxWx3 uint8 RGB crop, the person around its prompt's face; None when none is found."""


def face_pixels(face: Box, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The rows and columns of the pixels a box touches, clipped to the image."""
    height, width = shape[:2]
    x0, y0 = max(math.floor(face[0]), 0), max(math.floor(face[1]), 0)
    x1, y1 = min(math.ceil(face[2]), width), min(math.ceil(face[3]), height)
    return slice(y0, max(y1, y0)), slice(x0, max(x1, x0))


def face_coverage(mask: np.ndarray, face: Box) -> float:
    """Share of the face box's pixels inside the mask (0 for a box outside the image)."""
    region = mask[face_pixels(face, mask.shape)]
    return float(region.mean()) if region.size else 0.0


def encode_mask(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(buffer, "PNG", optimize=True)  # a bool array is mode "1"
    return buffer.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("1"), dtype=bool)


def near_best(values: np.ndarray, tolerance: float, tiebreak: np.ndarray) -> int:
    """Index of the best tiebreak among the values within `tolerance` of the largest."""
    close = values >= values.max() - tolerance
    return int(np.argmax(np.where(close, tiebreak, -np.inf)))
