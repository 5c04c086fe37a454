"""Real-architecture YOLO and segment-anything models with random weights, saved in their real on-disk
formats, so the yolo_sam backend loads them exactly as it loads a user's downloaded checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

YOLO_FILE = "yolov8n.pt"
SAM_FILE = "sam_vit_b_01ec64.pth"  # the official vit_b file name: the default path the config derives


def build_weights(folder: Path) -> Path:
    """`folder` holding yolov8n.pt (ultralytics checkpoint) and a vit_b SAM state dict; returns it."""
    os.environ["YOLO_OFFLINE"] = "1"
    import torch
    from segment_anything import sam_model_registry
    from ultralytics import YOLO

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    YOLO("yolov8n.yaml").save(str(folder / YOLO_FILE))
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), folder / SAM_FILE)
    return folder
