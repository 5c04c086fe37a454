"""Filter stage: resolution from the header first (cheap), then faces on the decoded survivors.

`prepare` (CPU workers) reads each image, checks its header and decodes the survivors upright, in sRGB
(stages/imaging.py: any mode, the ICC profile applied and named in `icc_profile`) and shrunk for
detection; `infer` (the face model's actors) finds and embeds the faces and judges them.

Every face whose box reaches `filter.min_face_size` is kept in the row with its embedding (unit
vector and raw norm) and its quality evidence (sharpness, head pose, share of the image), so verify
can re-decide with new thresholds without running a model again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.core.config import PipelineConfig
from pipeline.core.schema import FACE_EVIDENCE, IMAGE_SIZE
from pipeline.core.reasons import EXTREME_ASPECT_RATIO, FACE_TOO_SMALL, LOW_RESOLUTION, NO_FACE
from stages.base import ModelStage, Row, drop, keep
from stages.faces import FACES, Face, open_backend
from stages.faces.quality import head_pose, sharpness
from stages.imaging import ImageRejected, decode_for_detection, probe


@dataclass
class Candidate:
    """One row on its way through the checks: a verdict already, or an image to detect on."""

    row: Row
    verdict: Row | None = None
    image: Image.Image | None = None  # shrunk for detection
    scale: float = 1.0  # from the shrunk image back to full size
    columns: Row | None = None


class FilterStage(ModelStage):
    name = "filter"
    sections = ("filter", "face")
    requires = ("raw_path",)
    produces = pa.schema([*IMAGE_SIZE, *FACE_EVIDENCE])
    # 2: faces carry `embedding_norm`; 3: and quality evidence (sharpness, yaw/pitch/roll, image_share), which needs
    # the decoded pixels: a run made before it re-runs filter once, since verify's gates read it; 4: pixels in sRGB
    # through the ICC profile (`icc_profile`), orientations outside 1..8 read as 1
    version = 4

    @classmethod
    def preflight(cls, config: PipelineConfig) -> None:
        FACES.preflight(config)

    def setup(self) -> None:
        self.backend = open_backend(self.config)
        self.models = json.dumps(self.backend.versions(), sort_keys=True)

    def prepare(self, rows: pa.Table) -> list[Candidate]:
        return [self._check_image(row) for row in rows.to_pylist()]

    def infer(self, rows: pa.Table, prepared: list[Candidate]) -> pa.Table:
        todo = [c for c in prepared if c.verdict is None]
        size = self.resources(self.config).batch_size
        for start in range(0, len(todo), size):
            self._detect(todo[start : start + size])
        return self.to_table([{**c.row, **c.verdict} for c in prepared if c.verdict is not None], rows.schema)

    def _check_image(self, row: Row) -> Candidate:
        settings, candidate = self.config.filter, Candidate(row)
        data = self.run.read_bytes(row["raw_path"])
        try:
            header = probe(data, settings.max_pixels)
        except ImageRejected as rejected:
            candidate.verdict = drop(rejected.reason, rejected.detail)
            return candidate
        size = {"width": header.width, "height": header.height, "exif_orientation": header.orientation,
                "icc_profile": header.icc_profile}
        short, long = sorted((header.width, header.height))
        if short < settings.min_short_side:
            candidate.verdict = drop(LOW_RESOLUTION, f"short side {short} < {settings.min_short_side}", **size)
        elif long > settings.max_aspect_ratio * short:
            candidate.verdict = drop(EXTREME_ASPECT_RATIO, f"{header.width}x{header.height}", **size)
        else:
            try:
                detection = decode_for_detection(data, settings.max_pixels, self.config.face.max_side)
                candidate.image, candidate.scale = detection
            except ImageRejected as rejected:
                candidate.verdict = drop(rejected.reason, rejected.detail, **size)
                return candidate
            candidate.columns = {**size, "phash": str(imagehash.phash(candidate.image))}
        return candidate

    def _detect(self, candidates: list[Candidate]) -> None:
        if not candidates:
            return
        pixels = [np.asarray(c.image) for c in candidates]
        found = self.backend.analyze(pixels)
        for candidate, image, faces in zip(candidates, pixels, found, strict=True):
            candidate.verdict = self._judge(faces, candidate.scale, candidate.columns or {}, image)
            candidate.image = None  # done with the pixels

    def _judge(self, faces: list[Face], scale: float, columns: Row, pixels: np.ndarray) -> Row:
        evidence = {**columns, "num_detected": len(faces), "face_backend": self.backend.name,
                    "face_models": self.models}
        if not faces:
            return drop(NO_FACE, "the detector found no face", **evidence)
        records = [face_record(face, scale) for face in faces]
        minimum = self.config.filter.min_face_size
        large = [pair for pair in zip(faces, records, strict=True) if box_side(pair[1]["box"]) >= minimum]
        if not large:
            biggest = max(box_side(record["box"]) for record in records)
            detail = f"largest face {biggest:.0f} px < {minimum}"
            return drop(FACE_TOO_SMALL, detail, **evidence)
        area = columns["width"] * columns["height"]
        measured = [{**record, **face_quality(face, record, pixels, area)} for face, record in large]
        return keep(**evidence, faces=measured)


def face_record(face: Face, scale: float) -> Row:
    """A face as stored: box and landmarks back in full-size upright pixels."""
    assert face.embedding is not None and face.embedding_norm is not None
    return {
        "box": [float(v) * scale for v in face.box],
        "landmarks": (face.landmarks.reshape(-1) * scale).tolist(),
        "score": float(face.score),
        "embedding": face.embedding.astype(np.float32).tolist(),
        "embedding_norm": float(face.embedding_norm),
    }


def face_quality(face: Face, record: Row, pixels: np.ndarray, image_area: int) -> Row:
    """Quality evidence of a face: landmarks in the pixels it was detected on, the share in full-size pixels."""
    yaw, pitch, roll = head_pose(face.landmarks)
    x0, y0, x1, y1 = record["box"]
    return {
        "sharpness": sharpness(pixels, face.landmarks),
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
        "image_share": (x1 - x0) * (y1 - y0) / image_area,
    }


def box_side(box: list[float]) -> float:
    return max(box[2] - box[0], box[3] - box[1])
