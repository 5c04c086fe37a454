"""Blur a bystander's face in the stored crop and take it out of the mask (`governance.bystander: blur`).

The face's box in the crop (`crop_faces`), widened by a quarter each side for hair and jaw, is
pixelated to 6x6 blocks and then smoothed: pixelation throws the detail away (a blur alone can be
partly undone), the smoothing hides the blocks. The same region is cleared in the mask, since the
mask is the target person's and the bystander is not part of the ID region. Each blurred face's
index (into `faces`) is added to the row's `blurred_faces`, so blurring is done once per face
however often the ledger is applied, and readers can see which faces were touched. A blurred face also
loses its identity label (`faces[i].identity`, the photo's `identities`, its `person_masks` entry and its
`caption_people` entry): a requester found beside someone else is neither shown nor named there.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter

LABELS = ("faces", "identities", "num_identities", "person_masks", "caption_people")  # what names a face's person
BLOCKS = 6
WIDEN = 0.25
Blurs = dict[tuple[str, str], set[int]]  # (identity, image_id) -> indices into the row's faces


def pending(row: dict, blurs: Blurs) -> set[int]:
    """The faces of a row (identity, image_id, merged_from, blurred_faces) still to blur."""
    wanted = blurs.get((row["identity"], row["image_id"])) or blurs.get((row.get("merged_from") or "", row["image_id"]))
    return set(wanted or ()) - set(row.get("blurred_faces") or ())


def blur_table(table: pa.Table, blurs: Blurs) -> tuple[pa.Table, int]:
    """The table with every pending bystander face blurred, and how many rows changed."""
    if not blurs or "crop_image" not in table.column_names or not table.num_rows:
        return table, 0
    keys = ["identity", "image_id", *(c for c in ("merged_from", "blurred_faces") if c in table.column_names)]
    todo = {i: faces for i, row in enumerate(table.select(keys).to_pylist()) if (faces := pending(row, blurs))}
    if not todo:
        return table, 0
    columns = {name: table[name].to_pylist() for name in ("crop_image", "crop_format", "crop_faces", "mask", *LABELS)
               if name in table.column_names}
    done = table["blurred_faces"].to_pylist() if "blurred_faces" in table.column_names else [None] * table.num_rows
    for i, faces in todo.items():
        boxes = [columns["crop_faces"][i][face]["box"] for face in sorted(faces)]
        columns["crop_image"][i] = blur_image(columns["crop_image"][i], columns["crop_format"][i], boxes)
        if columns.get("mask") and columns["mask"][i]:
            columns["mask"][i] = clear_mask(columns["mask"][i], boxes)
        unlabel(columns, i, faces)
        done[i] = sorted(set(done[i] or ()) | faces)
    for name, values in {**columns, "blurred_faces": done}.items():
        table = _set_column(table, name, values)
    return table, len(todo)


def unlabel(columns: dict[str, list], row: int, faces: set[int]) -> None:
    """Row `row`'s labels of these faces gone, from every column that names a face's person."""
    labels = (columns["faces"][row] or []) if "faces" in columns else []
    gone = {labels[k].get("identity") for k in faces if k < len(labels)} - {None}
    for k in faces & set(range(len(labels))):
        labels[k] = {**labels[k], "identity": None, "identity_score": None}
    if columns.get("identities") and columns["identities"][row] is not None:
        columns["identities"][row] = [name for name in columns["identities"][row] if name not in gone]
        if "num_identities" in columns:
            columns["num_identities"][row] = len(columns["identities"][row])
    if columns.get("person_masks") and columns["person_masks"][row] is not None:
        columns["person_masks"][row] = [entry for entry in columns["person_masks"][row] if entry["identity"] not in gone]
    if columns.get("caption_people") and columns["caption_people"][row] is not None:
        columns["caption_people"][row] = [entry for entry in columns["caption_people"][row] if entry["face"] not in faces]


def _set_column(table: pa.Table, name: str, values: list) -> pa.Table:
    if name not in table.column_names:
        return table.append_column(pa.field(name, pa.list_(pa.int32())), pa.array(values, pa.list_(pa.int32())))
    index = table.column_names.index(name)
    return table.set_column(index, table.schema.field(name), pa.array(values, table.schema.field(name).type))


def _region(box: list[float], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * WIDEN, (y1 - y0) * WIDEN
    left, top = max(0, int(x0 - dx)), max(0, int(y0 - dy))
    right, bottom = min(size[0], int(np.ceil(x1 + dx))), min(size[1], int(np.ceil(y1 + dy)))
    return (left, top, right, bottom) if right > left and bottom > top else None  # a face wholly outside the crop


def blur_image(data: bytes, fmt: str, boxes: list[list[float]]) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.load()
    for region in filter(None, (_region(box, image.size) for box in boxes)):
        patch = image.crop(region)
        side = max(patch.size)
        coarse = patch.resize((BLOCKS, BLOCKS), Image.Resampling.BOX).resize(patch.size, Image.Resampling.NEAREST)
        image.paste(coarse.filter(ImageFilter.GaussianBlur(side / (2 * BLOCKS))), region[:2])
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def clear_mask(data: bytes, boxes: list[list[float]]) -> bytes:
    mask = Image.open(io.BytesIO(data))
    mask.load()
    for region in filter(None, (_region(box, mask.size) for box in boxes)):
        mask.paste(0, region)
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()
