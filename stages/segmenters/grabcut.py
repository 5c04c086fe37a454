"""CPU backend: OpenCV GrabCut seeded by the target face box and a person shape estimated from it.

No learned person segmenter installs cleanly beside this project's numpy 2 and OpenCV 5 (mediapipe's
wheels that bundle `selfie_segmentation.tflite` pin numpy<2 and pull opencv-contrib-python), so the
`cpu` profile uses colour models instead: the face is sure foreground, a head and a torso below it are
probably the person, the rest of the crop is probably or surely background. Rows say `grabcut`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.core.config import PipelineConfig
from stages.backends import Backend

from .base import SEGMENTERS, Box, PersonMask, Prompt, Segmenter

MIN_SAMPLES = 64  # pixels GrabCut needs on each side to fit its colour models (5 Gaussians each)


def person_box(face: Box, width: int, height: int) -> tuple[float, float, float, float]:
    """Where the person probably is: hair above the face, shoulders two face widths out, down to the bottom."""
    fw, fh = face[2] - face[0], face[3] - face[1]
    cx = (face[0] + face[2]) / 2
    return (max(cx - 2.0 * fw, 0.0), max(face[1] - 0.6 * fh, 0.0), min(cx + 2.0 * fw, width), float(height))


def seeds(shape: tuple[int, int], prompt: Prompt) -> np.ndarray:
    """GrabCut's initial labels for a crop of `shape`, from the prompt's faces (both in the same pixels)."""
    height, width = shape
    face = prompt.face
    fw, fh = face[2] - face[0], face[3] - face[1]
    cx = (face[0] + face[2]) / 2
    labels = np.full(shape, cv2.GC_BGD, np.uint8)
    _fill(labels, person_box(face, width, height), cv2.GC_PR_BGD)
    _fill(labels, (0, 0, cx - 1.2 * fw, face[3]), cv2.GC_BGD)  # beside the head, above the shoulders
    _fill(labels, (cx + 1.2 * fw, 0, width, face[3]), cv2.GC_BGD)
    _fill(labels, (cx - 0.8 * fw, face[1] - 0.6 * fh, cx + 0.8 * fw, face[3] + 0.2 * fh), cv2.GC_PR_FGD)  # head
    _fill(labels, (cx - 1.6 * fw, face[3], cx + 1.6 * fw, height), cv2.GC_PR_FGD)  # shoulders and torso
    _fill(labels, (cx - 0.25 * fw, face[3], cx + 0.25 * fw, face[3] + 0.5 * fh), cv2.GC_FGD)  # neck
    for other in prompt.others:  # someone else's face is never this person
        _ellipse(labels, other, cv2.GC_BGD)
    _ellipse(labels, face, cv2.GC_FGD)
    return labels


def _ellipse(labels: np.ndarray, box: Box, value: int) -> None:
    """The ellipse inscribed in a box: a face without the box's corners."""
    centre = (round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2))
    axes = (max(round(0.5 * (box[2] - box[0])), 1), max(round(0.5 * (box[3] - box[1])), 1))
    cv2.ellipse(labels, centre, axes, 0, 0, 360, int(value), thickness=-1)


def _fill(labels: np.ndarray, box: Box, value: int) -> None:
    height, width = labels.shape
    x0, y0 = min(max(round(box[0]), 0), width), min(max(round(box[1]), 0), height)
    x1, y1 = min(max(round(box[2]), 0), width), min(max(round(box[3]), 0), height)
    labels[y0:y1, x0:x1] = value


def face_component(foreground: np.ndarray, face: Box) -> np.ndarray:
    """The connected part of the foreground that holds the face centre (drops stray blobs)."""
    _, parts = cv2.connectedComponents(foreground.astype(np.uint8), connectivity=8)
    height, width = foreground.shape
    centre = parts[min(round((face[1] + face[3]) / 2), height - 1), min(round((face[0] + face[2]) / 2), width - 1)]
    return (parts == centre) & foreground if centre else foreground


@SEGMENTERS.register
class GrabCutSegmenter(Segmenter, Backend):
    name = "cpu"
    fields = ("grabcut_side", "grabcut_iters")

    @classmethod
    def load(cls, config: PipelineConfig) -> GrabCutSegmenter:
        return cls(config.segment.grabcut_side, config.segment.grabcut_iters)

    source = "grabcut"

    def __init__(self, side: int = 320, iterations: int = 5) -> None:
        self.side = side
        self.iterations = iterations

    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[Prompt]) -> list[PersonMask | None]:
        return [self._one(image, prompt) for image, prompt in zip(images, prompts, strict=True)]

    def _one(self, image: np.ndarray, prompt: Prompt) -> PersonMask | None:
        height, width = image.shape[:2]
        scale = min(self.side / max(height, width), 1.0)  # GrabCut's cost grows with pixels; masks are smooth
        size = (max(round(width * scale), 1), max(round(height * scale), 1))
        pixels = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        small = Prompt(_scaled(prompt.face, scale), tuple(_scaled(box, scale) for box in prompt.others))
        labels = seeds(pixels.shape[:2], small)
        background = np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).sum()
        if background < MIN_SAMPLES or labels.size - background < MIN_SAMPLES:
            return None
        cv2.setRNGSeed(0)  # its k-means start is random: same crop, same mask, on every run
        models = (np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64))
        cv2.grabCut(pixels, labels, None, *models, self.iterations, cv2.GC_INIT_WITH_MASK)
        found = face_component(np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)), small.face)
        mask = cv2.resize(found.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR) > 127
        return PersonMask(mask, person_box(prompt.face, width, height)) if mask.any() else None


def _scaled(box: Box, scale: float) -> list[float]:
    return [value * scale for value in box]
