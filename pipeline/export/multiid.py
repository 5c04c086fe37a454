"""Multi-identity export: one sample per group photo with two or more labelled identities (docs/multi-identity.md).

Layout under the destination (paths in a line are relative to the destination):

    train.jsonl                                  every sample, each with its reference pools: give this to a trainer
    train-<k>-of-<n>.jsonl                       one source shard's samples, without pools
    train-<k>-of-<n>.refs.jsonl                  one shard's photos as references: identity, image_id, group, phash
    train-<k>-of-<n>/images/<image_id>.jpg       the whole photo, upright, its long side at most PHOTO_SIDE
    train-<k>-of-<n>/masks/<image_id>/<identity>.png   each labelled person's mask in that photo's pixels (1-bit)
    train-<k>-of-<n>/ref/<identity>/<image_id>.<ext>, .npy   every kept photo's crop and ID embedding

A sample's fields follow MultiID-2M (WithAnyone) where they mean the same: `bboxes` (every detected face, x0, y0,
x1, y1 in the image's pixels, left to right), `name` (each box's identity, null for a face no identity was given,
where MultiID-2M writes "none"), `embeddings` (one unit vector per box; MultiID-2M keeps them in a `.npy` beside
the image), `caption_en`, `url`. Ours besides: `landmarks` (5 points per box), `mask_files` (labelled people only),
`caption_people` (each labelled person's class word, `box` an index into `bboxes`), `image_file`, and
`references`: identity -> the crops of that identity's other photos, less this photo's near-duplicates (a trainer
draws its references from them, never the photo it reconstructs; MultiID-2M keeps its references in
`ref/<name>/`, as ours are in `<shard>/ref/<identity>/`).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterator
from functools import partial

import numpy as np
from PIL import Image

from pipeline.core.rundir import RunDir
from pipeline.export import rows
from pipeline.export.format import Format, Sample, stem
from stages.cross_identity import hex_keys
from stages.imaging import decode_upright, shrink
from stages.segmenters import decode_mask

COMBINED = "train.jsonl"
PHOTO_SIDE = 1024  # the exported photo's long side at most (a trainer crops and resizes further)
MAX_PIXELS = 178_956_970  # what a raw photo may decode to (Pillow's own bomb limit, twice)
COLUMNS = [*rows.COLUMNS, "raw_path", "crop_box", "identities", "num_identities", "person_masks", "calibration",
           "phash", "caption_people"]
LAYOUT = 2  # 2: every detected face, the people's class words, references' phash


def outputs(shard_stem: str) -> list[str]:
    return [f"{shard_stem}.jsonl", f"{shard_stem}.refs.jsonl", f"{shard_stem}/"]


def write_shard(run: RunDir, dest: RunDir, shard: str) -> list[Sample]:
    """The shard's group photos as samples, and every photo of it as a reference (crop, embedding)."""
    folder, samples = stem(shard), []
    samples_file, refs_file = outputs(folder)[:2]
    with dest.open_atomic(samples_file) as lines, dest.open_atomic(refs_file) as refs:
        for row in read_rows(run, shard):
            refs.write(json_line(write_reference(dest, folder, row)))
            if (row["num_identities"] or 0) >= 2:
                lines.write(json_line(write_sample(run, dest, folder, row)))
                samples.append(rows.sample(row))
    return samples


def read_rows(run: RunDir, shard: str) -> Iterator[rows.Row]:
    import pyarrow.parquet as pq

    from pipeline.dataset.shards import SHARDS

    with run.fs.open_input_file(run.path(SHARDS, shard)) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=rows.BATCH_ROWS, columns=COLUMNS):
            yield from batch.to_pylist()


def json_line(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode()


def write_reference(dest: RunDir, folder: str, row: rows.Row) -> dict:
    base = f"{folder}/ref/{row['identity']}/{row['image_id']}"
    dest.write_bytes(f"{base}.{rows.image_ext(row)}", row["crop_image"])
    dest.write_bytes(f"{base}.npy", rows.npy(rows.embedding(row)))
    return {"identity": row["identity"], "image_id": row["image_id"], "dup_group": row["dup_group"] or row["image_id"],
            "phash": row["phash"], "file": f"{base}.{rows.image_ext(row)}", "embedding_file": f"{base}.npy"}


def write_sample(run: RunDir, dest: RunDir, folder: str, row: rows.Row) -> dict:
    """The whole photo resized, and each detected face's box, landmarks, identity (null: none), embedding and mask
    (labelled people only) in it, left to right."""
    photo, scale = shrink(decode_upright(run.read_bytes(row["raw_path"]), MAX_PIXELS), PHOTO_SIDE)
    image_file = f"{folder}/images/{row['image_id']}.jpg"
    dest.write_bytes(image_file, jpeg(photo))
    order = sorted(range(len(row["faces"])), key=lambda k: row["faces"][k]["box"][0] + row["faces"][k]["box"][2])
    faces = [row["faces"][k] for k in order]
    masks = {person["identity"]: person["mask"] for person in row["person_masks"] or []}
    mask_files = []
    for face in faces:
        mask = masks.get(face["identity"]) if face["identity"] else None
        path = f"{folder}/masks/{row['image_id']}/{face['identity']}.png" if mask else None
        if path:
            dest.write_bytes(path, photo_mask(mask, row["crop_box"], scale, photo.size))
        mask_files.append(path)
    record = rows.metadata(row)
    return {"image_id": row["image_id"], "identity": row["identity"], "dup_group": row["dup_group"] or row["image_id"],
            "image_file": image_file, "width": photo.width, "height": photo.height,
            "bboxes": [[v / scale for v in face["box"]] for face in faces],
            "landmarks": [rows.points([v / scale for v in face["landmarks"]]) for face in faces],
            "name": [face["identity"] for face in faces], "identity_scores": [face["identity_score"] for face in faces],
            "embeddings": [face["embedding"] for face in faces], "mask_files": mask_files,
            "caption_en": record["caption"], **{key: record[key] for key in (*rows.CAPTION, *rows.PROVENANCE)},
            "caption_people": caption_people(row, order), "phash": row["phash"],
            "copy_paste_max": (row["calibration"] or {}).get("copy_paste_max")}  # the backend's (training reads it)


def caption_people(row: rows.Row, order: list[int]) -> list[dict]:
    """The row's labelled people, left to right, with their class word in its caption (null where unmarked), each
    with `box`: its face's index in the sample's boxes (`order` lists the row's face indices in box order)."""
    return [{"identity": person["identity"], "box": order.index(person["face"]),
             "class_word_span": person["class_word_span"], "class_word_tokens": person["class_word_tokens"]}
            for person in row["caption_people"] or []]


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def photo_mask(png: bytes, crop_box: list[int], scale: float, size: tuple[int, int]) -> bytes:
    """A crop's mask placed back on the photo: the crop's square (upright source pixels) scaled as the photo was."""
    x0, y0, x1, y1 = (round(v / scale) for v in crop_box)
    square = Image.fromarray(decode_mask(png)).resize((max(x1 - x0, 1), max(y1 - y0, 1)), Image.Resampling.NEAREST)
    canvas = Image.new("1", size, 0)
    canvas.paste(square, (x0, y0))  # a square reaching past the photo is clipped
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def finish(dest: RunDir, markers: list[dict], dup_hamming: int) -> None:
    """train.jsonl: each group photo once, with its people's reference pools from every shard's references."""
    refs: dict[str, list[dict]] = defaultdict(list)
    for marker in markers:
        for line in read_lines(dest, outputs(stem(marker["shard"]))[1]):
            refs[line["identity"]].append(line)
    photos: dict[str, list[dict]] = defaultdict(list)  # a photo kept under each of its people: one sample each
    for marker in markers:
        for sample in read_lines(dest, outputs(stem(marker["shard"]))[0]):
            photos[sample["image_id"]].append(sample)
    with dest.open_atomic(COMBINED) as stream:
        for found in photos.values():
            sample = {**found[0], "mask_files": best_masks(found)}
            stream.write(json_line({**sample, "references": pools(sample, refs, dup_hamming)}))


def best_masks(found: list[dict]) -> list[str | None]:
    """Per person, the mask from the crop around their own face where the photo is kept under them too (another
    person's crop may cut them off at its border), else the first found."""
    own = {sample["identity"]: sample for sample in found}
    masks = []
    for who in found[0]["name"]:
        if who is None:  # a face no identity was given has no mask
            masks.append(None)
            continue
        kept = own.get(who)
        candidates = [kept["mask_files"][kept["name"].index(who)]] if kept else []
        candidates += [sample["mask_files"][sample["name"].index(who)] for sample in found if who in sample["name"]]
        masks.append(next((path for path in candidates if path), None))
    return masks


def read_lines(dest: RunDir, path: str) -> Iterator[dict]:
    yield from (json.loads(line) for line in dest.read_bytes(path).decode().splitlines() if line)


def pools(sample: dict, refs: dict[str, list[dict]], dup_hamming: int) -> dict[str, list[str]]:
    """Per labelled person of the photo, their photos' crops less this photo's near-duplicates: its duplicate group
    in that person's own photos, where they hold it, and any photo whose phash is within `dup_hamming` bits of this
    one's (a resized copy kept under one person is another image_id, and dup groups are made per identity)."""
    out = {}
    for who in filter(None, sample["name"]):
        held = {ref["dup_group"] for ref in refs[who] if ref["image_id"] == sample["image_id"]}
        copies = near_copies(sample["phash"], [ref["phash"] for ref in refs[who]], dup_hamming)
        out[who] = [ref["file"] for ref, copy in zip(refs[who], copies, strict=True)
                    if ref["image_id"] != sample["image_id"] and ref["dup_group"] not in held and not copy]
    return out


def near_copies(phash: str | None, others: list[str | None], dup_hamming: int) -> np.ndarray:
    """Per other phash: within `dup_hamming` bits of `phash` (False where either is missing)."""
    keys, present = hex_keys([phash, *others])
    return present[0] & present[1:] & (np.bitwise_count(keys[1:] ^ keys[0]) <= dup_hamming)


def export_format(dup_hamming: int) -> Format:
    """The format under the run's near-duplicate rule (`verify.dup_hamming`): a new rule exports again."""
    return Format("multiid", LAYOUT, outputs, write_shard, partial(finish, dup_hamming=dup_hamming),
                  settings=json.dumps({"dup_hamming": dup_hamming}))
