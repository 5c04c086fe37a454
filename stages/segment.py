"""Segment stage: the mask of the identity's person in each crop (the ID region training uses).

The backend (`segment.backend`) sees a batch of crops and each one's target face box, and returns
the person around that face. The stage keeps the evidence (mask area, share of the face box inside
the mask) and drops `no_person_mask` where no mask covers enough of the face. Masks are 1-bit PNGs of
the crop's size; padding a crop got at the image border is never part of the person. Crops are
decoded in `prepare` (CPU workers; one that does not decode is dropped, `crop_unreadable`), the backend
runs in `infer` (its actors).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.core.config import PipelineConfig
from pipeline.core.schema import MASK
from pipeline.core.reasons import MASK_FILLS_CROP, NO_PERSON_MASK
from stages.base import ModelStage, Row, drop, keep
from stages.crop import decode_crop, target_crop_box
from stages.imaging import ImageRejected
from stages.segmenters import SEGMENTERS, PersonMask, Prompt, encode_mask, face_coverage, open_segmenter


class SegmentStage(ModelStage):
    name = "segment"
    sections = ("segment",)
    requires = ("crop_image", "crop_size", "crop_box", "crop_faces", "crop_padding", "target_face", "width", "height")
    produces = MASK
    reuses_rows = True  # row by row: rows judged before are reused where a curator changed others

    @classmethod
    def preflight(cls, config: PipelineConfig) -> None:
        SEGMENTERS.preflight(config)

    def setup(self) -> None:
        self.segmenter = open_segmenter(self.config)

    def prepare(self, rows: pa.Table) -> list[np.ndarray | Row]:
        """Each crop decoded, or the drop of an unreadable one."""
        return [_decoded(data) for data in rows["crop_image"].to_pylist()]

    def infer(self, rows: pa.Table, prepared: list[np.ndarray | Row]) -> pa.Table:
        verdicts: list[Row | None] = [None if isinstance(item, np.ndarray) else item for item in prepared]
        live = [k for k, item in enumerate(prepared) if isinstance(item, np.ndarray)]
        every = rows.to_pylist()
        size = self.resources(self.config).batch_size
        for start in range(0, len(live), size):
            batch = live[start : start + size]
            found = self.segmenter.segment([prepared[k] for k in batch], [prompt(every[k]) for k in batch])
            for k, person in zip(batch, found, strict=True):
                verdicts[k] = self._judge(every[k], person)
        return self.to_table([{**row, **verdict} for row, verdict in zip(every, verdicts, strict=True)], rows.schema)

    def _judge(self, row: Row, person: PersonMask | None) -> Row:
        source = self.segmenter.source
        if person is None:
            return drop(NO_PERSON_MASK, f"{source}: no person found around the target face", mask_source=source)
        mask = person.mask & source_region(row)
        coverage = face_coverage(mask, target_crop_box(row))
        evidence = {
            "mask": encode_mask(mask),
            "mask_source": source,
            "mask_area": float(mask.mean()),
            "mask_face_coverage": coverage,
            "person_box": list(person.box),
        }
        least = self.config.segment.min_face_coverage
        if not mask.any():
            return drop(NO_PERSON_MASK, f"{source}: the mask is empty", **evidence)
        if coverage < least:
            return drop(NO_PERSON_MASK, f"mask covers {coverage:.0%} of the face box (< {least:.0%})", **evidence)
        most = self.config.segment.max_mask_area
        if evidence["mask_area"] > most:
            return drop(MASK_FILLS_CROP, f"mask fills {evidence['mask_area']:.0%} of the crop (> {most:.0%})", **evidence)
        return keep(**evidence)


def _decoded(data: bytes) -> np.ndarray | Row:
    try:
        return decode_crop(data)
    except ImageRejected as rejected:
        return drop(rejected.reason, rejected.detail)


def prompt(row: Row) -> Prompt:
    boxes = [face["box"] for face in row["crop_faces"]]
    return Prompt(boxes[row["target_face"]], tuple(box for k, box in enumerate(boxes) if k != row["target_face"]))


def source_region(row: Row) -> np.ndarray:
    """True on the crop's pixels that came from the photo, False on its padding."""
    size = row["crop_size"]
    inside = np.ones((size, size), dtype=bool)
    if not row["crop_padding"]:
        return inside
    x0, y0, x1, _ = row["crop_box"]
    factor = size / (x1 - x0)
    left, top = round(-x0 * factor), round(-y0 * factor)
    right, bottom = round((row["width"] - x0) * factor), round((row["height"] - y0) * factor)
    inside[:, : max(left, 0)] = inside[:, max(right, 0) :] = False
    inside[: max(top, 0), :] = inside[max(bottom, 0) :, :] = False
    return inside
