"""Segment stage: the mask of the identity's person in each crop (the ID region training uses).

The backend (`segment.backend`) sees a batch of crops and each one's target face box, and returns
the person around that face. The stage keeps the evidence (mask area, share of the face box inside
the mask) and drops `no_person_mask` where no mask covers enough of the face. Masks are 1-bit PNGs of
the crop's size; padding a crop got at the image border is never part of the person. Crops are
checked in `prepare` (CPU workers; one that does not decode is dropped, `crop_unreadable`) and shipped to the
backend's actors still encoded (`CheckedCrop`), which decode it in `infer`.

In a group photo, every other person hygiene labelled (`faces[i].identity`) whose face lies in the crop gets
a mask too, asked of the backend as the target's is (that face, every other face not them), kept in
`person_masks` with the target's (docs/multi-identity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.core.config import PipelineConfig
from pipeline.core.schema import MASK, OK
from pipeline.core.reasons import MASK_FILLS_CROP, NO_PERSON_MASK
from stages.base import ModelStage, Row, drop, keep
from stages.crop import decode_crop, target_crop_box
from stages.imaging import ImageRejected
from stages.segmenters import SEGMENTERS, PersonMask, Prompt, encode_mask, face_coverage, open_segmenter


@dataclass(frozen=True)
class CheckedCrop:
    """A crop known to decode, kept encoded: what travels to the actors through Ray's object store is its JPEG
    (~0.3 MB at 1024 px), not its 3.1 MB of pixels, and decoding it again costs the actor ~10 ms."""

    data: bytes

    def pixels(self) -> np.ndarray:
        return decode_crop(self.data)


class SegmentStage(ModelStage):
    name = "segment"
    sections = ("segment",)
    requires = ("crop_image", "crop_size", "crop_box", "crop_faces", "crop_padding", "target_face", "width", "height",
                "faces")
    produces = MASK
    reuses_rows = True  # row by row: rows judged before are reused where a curator changed others

    @classmethod
    def preflight(cls, config: PipelineConfig) -> None:
        SEGMENTERS.preflight(config)

    def setup(self) -> None:
        self.segmenter = open_segmenter(self.config)

    def prepare(self, rows: pa.Table) -> list[CheckedCrop | Row]:
        """Each crop checked to decode, or the drop of an unreadable one."""
        return [_checked(data) for data in rows["crop_image"].to_pylist()]

    def infer(self, rows: pa.Table, checked: list[CheckedCrop | Row]) -> pa.Table:
        verdicts: list[Row | None] = [None if isinstance(item, CheckedCrop) else item for item in checked]
        live = [k for k, item in enumerate(checked) if isinstance(item, CheckedCrop)]
        prepared = {k: checked[k].pixels() for k in live}
        every = rows.to_pylist()
        asks = [(k, None, prompt(every[k])) for k in live]
        asks += [(k, who, ask) for k in live for who, ask in people_prompts(every[k])]
        found: dict[tuple[int, str | None], PersonMask | None] = {}
        size = self.resources(self.config).batch_size
        for start in range(0, len(asks), size):
            batch = asks[start : start + size]
            masks = self.segmenter.segment([prepared[k] for k, _, _ in batch], [ask for _, _, ask in batch])
            found |= {(k, who): mask for (k, who, _), mask in zip(batch, masks, strict=True)}
        for k in live:
            verdicts[k] = self._judge(every[k], found[k, None])
            others = {who: mask for (row, who), mask in found.items() if row == k and who is not None}
            kept = verdicts[k]["status"] == OK
            verdicts[k]["person_masks"] = self._people(every[k], verdicts[k], others) if kept else None
        return self.to_table([{**row, **verdict} for row, verdict in zip(every, verdicts, strict=True)], rows.schema)

    def _people(self, row: Row, verdict: Row, others: dict[str, PersonMask | None]) -> list[dict]:
        """{identity, mask (PNG)}: the target's mask, and each other labelled person's that covers enough of their
        face."""
        masks = {row["identity"]: verdict["mask"]}
        boxes = {face["identity"]: box for face, box in zip(row["faces"] or [], row["crop_faces"])}
        for who, person in others.items():
            mask = person.mask & source_region(row) if person is not None else None
            if mask is not None and face_coverage(mask, boxes[who]["box"]) >= self.config.segment.min_face_coverage:
                masks[who] = encode_mask(mask)
        return [{"identity": who, "mask": png} for who, png in masks.items()]

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


def _checked(data: bytes) -> CheckedCrop | Row:
    try:
        decode_crop(data)
    except ImageRejected as rejected:
        return drop(rejected.reason, rejected.detail)
    return CheckedCrop(data)


def people_prompts(row: Row) -> list[tuple[str, Prompt]]:
    """Each other labelled person whose face box lies mostly in the crop, with every other face as not them."""
    boxes = [face["box"] for face in row["crop_faces"]]
    asks = []
    for k, face in enumerate(row["faces"] or []):  # faces, labelled by hygiene
        if k != row["target_face"] and face.get("identity") and in_crop(boxes[k], row["crop_size"]):
            asks.append((face["identity"], Prompt(boxes[k], tuple(box for j, box in enumerate(boxes) if j != k))))
    return asks


def in_crop(box: list[float], size: int) -> bool:
    """At least half of the box's area inside the crop."""
    width = max(min(box[2], size) - max(box[0], 0), 0)
    height = max(min(box[3], size) - max(box[1], 0), 0)
    return width * height >= 0.5 * (box[2] - box[0]) * (box[3] - box[1])


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
