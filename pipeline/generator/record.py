"""What a generation leaves behind: `generate/<run id>/` with images, reference crops and record.json.

record.json (the QA report reads it):
  run_id, created_at, seconds (loading + generation), prompt, prompt_text_only, negative_prompt, trigger_word, class_word,
  seed, steps, guidance, start_merge_step, width, height, lora_scale, device, dtype,
  base_model, adapter, adapter_version ("v1" | "v2"), id_tokens (class-word copies fused: one per
  reference for v1, two for v2), mix ("pool" | "weights"), face_backend, versions,
  identities: [{identity, class_word, weight, photos, references: [{image_id, dup_group, file}]}],
  images: [{file, seed, face_found, face_box, sim_to_references: {image_id: cos},
            sim_to_centroid: {identity: cos}}],
  summary: {images, images_with_face, mean_sim_to_centroid: {identity: mean or null},
            mean_sim_to_references: mean or null}
Files are relative to the record's folder: images/<k>.png, references/<image_id>.jpg.
"""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from PIL import Image

from pipeline.core.rundir import RunDir

GENERATE_DIR = "generate"
RECORD = "record.json"
PACKAGES = ("torch", "diffusers", "transformers", "peft")


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def folder(run_id: str) -> str:
    return f"{GENERATE_DIR}/{run_id}"


def save_image(run: RunDir, rel: str, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    run.write_bytes(rel, buffer.getvalue())


def versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def summary(images: list[dict], identities: list[str]) -> dict:
    scored = [image for image in images if image["face_found"]]
    to_refs = [sim for image in scored for sim in image["sim_to_references"].values()]
    return {
        "images": len(images),
        "images_with_face": len(scored),
        "mean_sim_to_centroid": {
            name: round(float(np.mean([image["sim_to_centroid"][name] for image in scored])), 4) if scored else None
            for name in identities
        },
        "mean_sim_to_references": round(float(np.mean(to_refs)), 4) if to_refs else None,
    }
