"""MODNet portrait matting (ONNX), cut down to the target person with the faces.

MODNet mattes every person in the picture, so the matte is shared out among the faces: each
foreground pixel goes to the face nearest it in face-size units, where distance below a face counts
less (a body hangs below its head, about a shoulder's width to each side). Other faces are never the
target, and of what is left the connected part holding the target face is the mask. A person whose
face was not detected cannot be told apart and stays in the target's mask where they touch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.models import locate
from stages.backends import Backend, onnx_options
from stages.devices import onnx_session

from .base import SEGMENTERS, Box, PersonMask, Prompt, Segmenter, face_pixels

STRIDE = 32  # MODNet downsamples by 32: its input sides must be multiples of it
THRESHOLD = 0.5  # alpha from which a pixel is the person (mattes are near 0 or 1 away from hair)
BELOW = 0.3  # weight of the distance below a face: bodies reach far down, not far sideways


def input_size(height: int, width: int, side: int) -> tuple[int, int]:
    """MODNet's input (width, height): the long side at `side`, both sides multiples of the stride."""
    scale = side / max(height, width)
    return max(round(width * scale / STRIDE), 1) * STRIDE, max(round(height * scale / STRIDE), 1) * STRIDE


def normalise(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 image as MODNet's CHW float input in [-1, 1]."""
    shrinking = size[0] < image.shape[1]
    pixels = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return ((pixels.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)


def body_distance(shape: tuple[int, int], face: Box) -> np.ndarray:
    """For each pixel, its distance to the face centre in face sides, the part below the face weighted by BELOW."""
    side = max(face[2] - face[0], face[3] - face[1], 1.0)
    dx = (np.arange(shape[1], dtype=np.float32) - (face[0] + face[2]) / 2) / side
    dy = (np.arange(shape[0], dtype=np.float32) - (face[1] + face[3]) / 2) / side
    return np.hypot(dx[None, :], np.where(dy > 0, dy * BELOW, dy)[:, None])


def territory(shape: tuple[int, int], prompt: Prompt) -> np.ndarray:
    """The pixels nearer the target face than any other face (`body_distance`)."""
    distances = np.stack([body_distance(shape, face) for face in (prompt.face, *prompt.others)])
    return distances.argmin(axis=0) == 0


def without_faces(mask: np.ndarray, faces: Sequence[Box]) -> np.ndarray:
    """The mask less the ellipse inscribed in each face box (a face without its box's corners)."""
    kept = mask.astype(np.uint8)
    for box in faces:
        centre = (round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2))
        axes = (max(round((box[2] - box[0]) / 2), 1), max(round((box[3] - box[1]) / 2), 1))
        cv2.ellipse(kept, centre, axes, 0, 0, 360, 0, thickness=-1)
    return kept.astype(bool)


def face_part(mask: np.ndarray, face: Box) -> np.ndarray:
    """The connected part of the mask holding most of the face box (all False when none touches it)."""
    _, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    region = parts[face_pixels(face, mask.shape)]
    labels, counts = np.unique(region[region > 0], return_counts=True)
    return parts == labels[np.argmax(counts)] if len(labels) else np.zeros_like(mask)


def target_mask(alpha: np.ndarray, prompt: Prompt) -> np.ndarray:
    """The target person's pixels in a matte of every person."""
    mask = alpha >= THRESHOLD
    if prompt.others:
        mask = without_faces(mask & territory(mask.shape, prompt), prompt.others)
    return face_part(mask, prompt.face)


@SEGMENTERS.register
class ModnetSegmenter(Segmenter, Backend):
    name = "modnet"
    fields = ("device", "modnet_side")

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        return ["modnet"]

    @classmethod
    def load(cls, config: PipelineConfig) -> ModnetSegmenter:
        return cls(locate("modnet", config.models.cache_dir), config.segment.modnet_side, config.segment.device)

    def __init__(self, model: Path, side: int = 512, device: str = "auto") -> None:
        self.session = onnx_session(str(model), device, onnx_options())
        self.input = self.session.get_inputs()[0].name  # "input": (batch, 3, height, width), all dynamic
        self.side = side
        self.source = f"modnet:{side}"

    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[Prompt]) -> list[PersonMask | None]:
        return [self._person(alpha, prompt) for alpha, prompt in zip(self.mattes(images), prompts, strict=True)]

    def mattes(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image's alpha matte (0..1, its own size); images of one input size run as one batch."""
        sizes = [input_size(*image.shape[:2], self.side) for image in images]
        out: list[np.ndarray] = [np.empty(0)] * len(images)
        for size in set(sizes):
            members = [k for k, other in enumerate(sizes) if other == size]
            batch = np.stack([normalise(images[k], size) for k in members])
            (alphas,) = self.session.run(None, {self.input: batch})  # (n, 1, height, width)
            for k, alpha in zip(members, alphas[:, 0], strict=True):
                height, width = images[k].shape[:2]
                out[k] = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        return out

    def _person(self, alpha: np.ndarray, prompt: Prompt) -> PersonMask | None:
        mask = target_mask(alpha, prompt)
        if not mask.any():
            return None
        x, y, width, height = cv2.boundingRect(mask.astype(np.uint8))
        return PersonMask(mask, (float(x), float(y), float(x + width), float(y + height)))
