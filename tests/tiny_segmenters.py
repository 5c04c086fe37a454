"""Real-architecture YOLO and segment-anything models with near-random weights, saved in their real on-disk
formats, so the yolo_sam backend loads them exactly as it loads a user's downloaded checkpoints."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

YOLO_FILE = "yolov8n.pt"
SAM_FILE = "sam_vit_b_01ec64.pth"  # the official vit_b file name: the default path the config derives


def person_dataset(folder: Path) -> Path:
    """A two-image YOLO dataset (noise, one 'person' box each); returns its data.yaml."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "images" / split / "0.jpg")
        (folder / "labels" / split / "0.txt").write_text("0 0.5 0.5 0.4 0.6\n")
    data = folder / "data.yaml"
    data.write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames:\n  0: person\n")
    return data


def build_weights(folder: Path) -> Path:
    """`folder` holding yolov8n.pt and a vit_b SAM state dict; returns it. The YOLO file comes out of one
    epoch of ultralytics' own trainer, so it is written as released checkpoints are (EMA model, train
    args and metrics, optimizer stripped)."""
    os.environ["YOLO_OFFLINE"] = "1"
    import torch
    from segment_anything import sam_model_registry
    from ultralytics import YOLO

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    data = person_dataset(folder / "data")
    with warnings.catch_warnings():  # ultralytics' Ray Tune callback asks Ray for a trial outside any Tune run
        warnings.filterwarnings("ignore", "`get_trial_id`", UserWarning)
        yolo.train(data=str(data), epochs=1, imgsz=64, batch=1, workers=0, device="cpu", amp=False, plots=False,
                   deterministic=False, project=str(folder / "runs"), name="train", exist_ok=True, verbose=False)
    shutil.copy(yolo.trainer.best, folder / YOLO_FILE)
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), folder / SAM_FILE)
    return folder
