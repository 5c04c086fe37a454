"""Person segmentation behind one small interface (`load_segmenter`), chosen by `segment.backend`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.core.config import SegmentSection
from pipeline.core.errors import ModelNotFound

from .base import PersonMask, Prompt, Segmenter, decode_mask, encode_mask, face_coverage
from .checkpoints import SAM_URL, YOLO_URL, yolo_globals

# The files segment-anything's authors publish, per model; a user's copy keeps the name.
SAM_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}


def weight_paths(settings: SegmentSection) -> tuple[Path, Path]:
    """The YOLO and SAM checkpoints the config names; relative names live in `weights_dir`."""
    root = settings.weights_dir.expanduser()
    sam = settings.sam_checkpoint or Path(SAM_FILES[settings.sam_model])
    return root / settings.yolo_weights.expanduser(), root / sam.expanduser()


def check_backend(settings: SegmentSection) -> None:
    """Raise ModelNotFound (what, where, how to get it) unless the backend can load; reads no weights."""
    if settings.backend != "yolo_sam":
        return
    for package in ("torch", "ultralytics", "segment_anything"):
        if importlib.util.find_spec(package) is None:
            fix = "pip install torch torchvision ultralytics segment-anything"
            raise ModelNotFound(f"python package {package!r}", ["this environment"], fix)
    yolo, sam = weight_paths(settings)
    if not yolo.is_file():
        fix = f"download {yolo.name} from {YOLO_URL} to {yolo}, or set segment.yolo_weights=PATH"
        raise ModelNotFound(f"YOLO weights {yolo.name!r}", [str(yolo)], fix)
    if not sam.is_file():
        official = SAM_FILES[settings.sam_model]
        fix = f"download {SAM_URL}{official} to {sam}, or set segment.sam_checkpoint=PATH (a {settings.sam_model} file)"
        raise ModelNotFound(f"segment-anything {settings.sam_model} checkpoint {sam.name!r}", [str(sam)], fix)
    yolo_globals(yolo)  # refuses a checkpoint whose pickle names anything off the allow-list; unpickles nothing


def load_segmenter(settings: SegmentSection) -> Segmenter:
    check_backend(settings)
    if settings.backend == "cpu":
        from .grabcut import GrabCutSegmenter

        return GrabCutSegmenter(settings.grabcut_side, settings.grabcut_iters)
    from .yolo_sam import YoloSamSegmenter

    yolo, sam = weight_paths(settings)
    return YoloSamSegmenter(yolo, settings.sam_model, sam, settings.device, settings.person_conf)


__all__ = [
    "PersonMask", "Prompt", "Segmenter", "check_backend", "decode_mask", "encode_mask", "face_coverage",
    "load_segmenter", "weight_paths",
]
