"""A PyTorch map-style dataset over the shards: PhotoMaker-style training samples.

One item per target row: the target crop with its person mask, caption and class word, plus 1-4
reference crops of the same identity, each from another near-duplicate group than the target (and
than each other), so the ID images never show the target photo, even resized or re-encoded, and
none whose face is more alike than `copy_paste_max` (its shoot, not the person: it would teach
copy-paste); photos whose head turns away from the target's pose are drawn more often
(pipeline/core/pairs.py has the rules).

```python
from torch.utils.data import DataLoader
from pipeline.training import IdentityDataset, collate_references

dataset = IdentityDataset("runs/default/shards", num_refs=(1, 4), image_size=512, seed=epoch)
loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=4, collate_fn=collate_references)
```

Only small columns (identity, image_id, dup_group, the faces) are read when the dataset is built, and
only each row's yaw and its too-alike pairs are kept from the faces; image bytes
are read per item, one Parquet row group at a time, with a few row groups cached per worker (an
identity's rows are contiguous, so a target and its references usually share one). No file stays
open between reads, so the dataset pickles cheaply into DataLoader workers under any start method.
This module imports torch; nothing on the CLI's path imports it, so `python -m pipeline` stays light.
"""

from __future__ import annotations

import io
import json
import random
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.core.config import TrainingSection
from pipeline.core.pairs import pair_difficulty, pose_weights, too_similar, weighted_sample
from pipeline.core.rundir import RunDir
from pipeline.dataset.pair_index import PAIRS
from stages.imaging import PILLOW_MAX_PIXELS, decode_upright

INDEX_FILE = "_index.parquet"
PLAN_COLUMNS = ["identity", "image_id", "dup_group", "faces", "target_face", "calibration"]
ITEM_COLUMNS = ["identity", "image_id", "crop_image", "mask", "caption", "class_word", "class_word_tokens",
                "faces", "target_face", "page_url", "phash"]  # the last four: each pair's difficulty
TOKEN_PAD = -1  # never a valid token position

Item = dict[str, Any]
# (similarity, pose_difference with NaN where unmeasured, same_scene) of stored pairs -> their draw weights (> 0)
PairWeights = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class IdentityDataset(Dataset):
    """Target rows of the shards with references of the same identity, sampled reproducibly.

    Item keys:
      image              uint8 tensor 3xHxW (RGB; uint8 so workers pass 4x fewer bytes: divide by 255
                         on the device)
      mask               bool tensor HxW, True on the person (the ID region)
      caption, class_word, identity, image_id   str
      class_word_tokens  int64 tensor: the class word's indices in SDXL's CLIP input_ids
      references         uint8 tensor Kx3xHxW, 1 <= num_refs[0] <= K <= num_refs[1]
      reference_ids      list of K image_ids
      reference_difficulty  float32 tensor Kx3, per reference (pipeline/core/pairs.py: Difficulty): the cosine of
                         the two target faces, their head-pose difference in degrees (NaN: unmeasured), and 1.0
                         where both photos share a scene (source page or near-identical whole image); a trainer
                         weights or filters hard pairs with it

    H = W = `image_size` when given, else the stored crop side (one per run: `crop.size`).
    References come from K distinct `dup_group`s other than the target's, never with a target face
    more alike than `copy_paste_max` (None: `training.copy_paste_max`'s default for the shards' face
    backend), drawn with weights that grow with the yaw difference to the target, from a generator
    seeded by (seed, index): the same shards and arguments give the same epoch in any worker and
    any order; pass a new seed per epoch for new references. A target with fewer than num_refs[0]
    groups left under these rules cannot be served and is skipped: such rows are counted in
    `skipped_rows`, identities none of whose rows can be served are listed in `skipped_identities`.
    `transform`, when given, maps each finished item (a dict) to the item returned.

    With `pair_weights` (e.g. `pipeline.core.pairs.hard_pair_weights`), references come from the stored pair index
    (shards/pairs/, written by the shard step under the same rules, at most `shard.pairs_per_target` per target)
    instead, drawn with the weights it gives each pair's difficulty, one photo per group: hard pairs more often.
    The index's pairs are kept in memory: 8 bytes each.
    """

    def __init__(
        self,
        shards_dir: str | Path,
        num_refs: tuple[int, int] = (1, 4),
        image_size: int | None = None,
        seed: int = 0,
        transform: Callable[[Item], Item] | None = None,
        *,
        copy_paste_max: float | None = None,
        cached_row_groups: int = 4,
        pair_weights: PairWeights | None = None,
    ) -> None:
        low, high = num_refs
        if not 1 <= low <= high:
            raise ValueError(f"num_refs must satisfy 1 <= low <= high, got {num_refs}")
        self.num_refs, self.image_size, self.seed, self.transform = (low, high), image_size, seed, transform
        self._rules = TrainingSection(copy_paste_max=copy_paste_max)
        self._root = RunDir(str(shards_dir))  # local path or any pyarrow URI (s3://...); pickles by URI
        self._cached_row_groups = cached_row_groups
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._pair_starts: np.ndarray | None = None  # with pair_weights: row -> its first pair (CSR)
        self._pair_refs, self._pair_draw = np.zeros(0, np.int32), np.zeros(0, np.float32)
        # pair_weights is used here and not kept: a lambda would not pickle into spawned DataLoader workers
        self._plan(pq.read_table(self._root.path(INDEX_FILE), filesystem=self._root.fs), pair_weights)

    def _plan(self, index: pa.Table, pair_weights: PairWeights | None) -> None:
        """Per row: shard, row in shard, duplicate-group code, identity; then the servable targets."""
        entries = sorted(index.to_pylist(), key=lambda entry: (entry["shard"], entry["row_start"]))
        by_shard: dict[str, list[dict]] = {}
        for entry in entries:
            by_shard.setdefault(entry["shard"], []).append(entry)
        self._shards = list(by_shard)
        shard_of, row_of, group_of, image_ids, yaws, offsets, total = [], [], [], [], [], {}, 0
        self._row_group_starts: list[list[int]] = []
        self._blocked: dict[int, np.ndarray] = {}  # target row -> rows too alike to serve it (only where any)
        for number, shard in enumerate(self._shards):
            offsets[shard] = total
            table, starts = self._read_plan_columns(shard, by_shard[shard])
            self._row_group_starts.append(starts)
            shard_of.append(np.full(table.num_rows, number, dtype=np.int32))
            row_of.append(np.arange(table.num_rows, dtype=np.int64))
            # codes only need to differ within an identity; a row without a group is a group of its own
            key = pc.coalesce(table["dup_group"], table["image_id"]).combine_chunks()
            group_of.append(key.dictionary_encode().indices.to_numpy().astype(np.int64))
            image_ids.append(table["image_id"].combine_chunks())
            yaws.append(self._plan_faces(table, group_of[-1], by_shard[shard], total))
            total += table.num_rows
        self._shard_of = np.concatenate(shard_of) if shard_of else np.zeros(0, np.int32)
        self._row_of = np.concatenate(row_of) if row_of else np.zeros(0, np.int64)
        self._group_of = np.concatenate(group_of) if group_of else np.zeros(0, np.int64)
        self._yaw = np.concatenate(yaws) if yaws else np.zeros(0, np.float32)
        self._image_ids = pa.chunked_array(image_ids, pa.string()).combine_chunks()
        self._spans = [(offsets[e["shard"]] + e["row_start"], e["num_rows"], e["identity"]) for e in entries]
        if pair_weights is not None:
            self._read_pairs(pair_weights)
        self._select_targets()

    def _read_plan_columns(self, shard: str, entries: list[dict]) -> tuple[pa.Table, list[int]]:
        """The shard's small columns and row-group starts, checked against what the index says of it."""
        with self._root.fs.open_input_file(self._root.path(shard)) as handle:
            parquet = pq.ParquetFile(handle)
            # calibration: shards made before verify recorded it have none (training.copy_paste_max must then be set)
            table = parquet.read(columns=[name for name in PLAN_COLUMNS if name in parquet.schema_arrow.names])
            sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        ends = np.cumsum([entry["num_rows"] for entry in entries]).tolist()
        layout = [entry["identity"] for entry in entries for _ in range(entry["num_rows"])]
        if [entry["row_start"] for entry in entries] != [0, *ends[:-1]] or table["identity"].to_pylist() != layout:
            raise ValueError(f"{shard} does not hold the rows {INDEX_FILE} lists; re-run `pipeline run --stage shard`")
        return table, [0, *np.cumsum(sizes).tolist()]

    def _plan_faces(self, table: pa.Table, groups: np.ndarray, entries: list[dict], offset: int) -> np.ndarray:
        """The shard's target-face yaws (NaN where unmeasured); records each identity's too-alike pairs."""
        vectors, yaws = target_faces(table)
        recorded = table["calibration"].to_pylist() if "calibration" in table.schema.names else [None] * table.num_rows
        for entry in entries:
            rows = np.arange(entry["row_start"], entry["row_start"] + entry["num_rows"])
            limit = self._rules.resolved((recorded[rows[0]] or {}).get("copy_paste_max"))
            blocked = too_similar(vectors[rows], groups[rows], limit)
            for target, mask in zip(rows, blocked, strict=True):
                if mask.any():
                    self._blocked[offset + int(target)] = offset + rows[mask]
        return yaws

    def _read_pairs(self, pair_weights: PairWeights) -> None:
        """The stored pair index of every shard: per target row (sorted), its references and their draw weights."""
        identities = np.repeat([identity for _, _, identity in self._spans], [count for _, count, _ in self._spans])
        keys = pc.binary_join_element_wise(pa.array(identities, pa.string()), self._image_ids, "/")
        found = [self._read_shard_pairs(shard, keys, pair_weights) for shard in self._shards]
        target, references, weights = (np.concatenate(column) for column in zip(*found)) if found else ([],) * 3
        order = np.argsort(target, kind="stable")
        self._pair_refs = np.asarray(references, dtype=np.int32)[order]
        self._pair_draw = np.asarray(weights, dtype=np.float32)[order]
        self._pair_starts = np.searchsorted(np.asarray(target)[order], np.arange(len(self._row_of) + 1))

    def _read_shard_pairs(self, shard: str, keys: pa.Array, pair_weights: PairWeights) -> tuple[np.ndarray, ...]:
        """One shard's pairs as global (target, reference) rows and draw weights, less those above our own cut."""
        if not self._root.exists(f"{PAIRS}/{shard}"):
            raise ValueError(f"{shard} has no pair index ({PAIRS}/{shard}); re-run `pipeline run --stage shard` "
                             "with shard.pairs_per_target above 0")
        pairs = pq.read_table(self._root.path(PAIRS, shard), filesystem=self._root.fs)
        rows = [pc.index_in(pc.binary_join_element_wise(pairs["identity"], pairs[column], "/"), value_set=keys)
                for column in ("image_id", "reference_id")]
        if any(found.null_count for found in rows):
            raise ValueError(f"{PAIRS}/{shard} names rows {shard} does not hold; re-run `pipeline run --stage shard`")
        similarity = pairs["similarity"].to_numpy()
        pose = pairs["pose_difference"].to_numpy(zero_copy_only=False)  # null -> NaN
        weights = np.asarray(pair_weights(similarity, pose, pairs["same_scene"].to_numpy(zero_copy_only=False)))
        if not (np.isfinite(weights) & (weights > 0)).all():
            raise ValueError("pair_weights must give every pair a finite weight above 0")
        limit = self._rules.copy_paste_max  # the index applied the run's cut; a stricter one of ours applies too
        keep = similarity <= limit if limit is not None else np.ones(len(similarity), dtype=bool)
        return rows[0].to_numpy()[keep], rows[1].to_numpy()[keep], weights[keep]

    def _select_targets(self) -> None:
        """Keep the rows with at least num_refs[0] duplicate groups the reference rules allow them."""
        targets, self.skipped_identities, self.skipped_rows = [], [], 0
        self._span_of = np.zeros(len(self._row_of), dtype=np.int32)
        for number, (start, count, identity) in enumerate(self._spans):
            self._span_of[start : start + count] = number
            rows = np.arange(start, start + count)
            served = [row for row in rows if len(np.unique(self._group_of[self._candidates(row)])) >= self.num_refs[0]]
            targets.append(np.asarray(served, dtype=np.int64))
            self.skipped_rows += count - len(served)
            if not served:
                self.skipped_identities.append(identity)
        self._targets = np.concatenate(targets) if targets else np.zeros(0, np.int64)

    def _candidates(self, target: int) -> np.ndarray:
        """Global rows that may serve `target` as references: its identity's, another group, not too alike (with
        pair_weights: its pairs in the stored index)."""
        if self._pair_starts is not None:
            return self._pair_refs[self._pair_starts[target] : self._pair_starts[target + 1]].astype(np.int64)
        start, count, _ = self._spans[self._span_of[target]]
        rows = np.arange(start, start + count)
        usable = self._group_of[rows] != self._group_of[target]
        if target in self._blocked:
            usable &= ~np.isin(rows, self._blocked[target])
        return rows[usable]

    def __len__(self) -> int:
        return len(self._targets)

    def __getitem__(self, index: int) -> Item:
        index = range(len(self))[index]  # normalises negatives and raises IndexError past the end
        target = int(self._targets[index])
        row = self._read_row(target)
        references = [self._read_row(reference) for reference in self.reference_rows(index)]
        item = {
            "image": decode_image(row["crop_image"], self.image_size),
            "mask": decode_mask(row["mask"], self.image_size),
            "caption": row["caption"],
            "class_word": row["class_word"],
            "class_word_tokens": torch.tensor(row["class_word_tokens"], dtype=torch.int64),
            "identity": row["identity"],
            "image_id": row["image_id"],
            "references": torch.stack([decode_image(ref["crop_image"], self.image_size) for ref in references]),
            "reference_ids": [ref["image_id"] for ref in references],
            "reference_difficulty": torch.tensor([pair_difficulty(row, ref).as_list() for ref in references],
                                                 dtype=torch.float32),
        }
        return self.transform(item) if self.transform else item

    def reference_rows(self, index: int) -> list[int]:
        """Global rows of item `index`'s references: one photo from each of some allowed groups, seeded,
        groups whose photo turns away from the target's pose drawn more often (with pair_weights: photos
        drawn by their pair's weight, skipping a group already drawn)."""
        index = range(len(self))[index]
        target = int(self._targets[index])
        rng = random.Random(f"{self.seed}:{index}")  # str seeds hash the same in every process
        if self._pair_starts is not None:
            return self._draw_pairs(target, rng)
        candidates = self._candidates(target)
        groups = self._group_of[candidates]
        photos = [int(rng.choice(candidates[groups == group])) for group in np.unique(groups)]
        count = rng.randint(self.num_refs[0], min(self.num_refs[1], len(photos)))
        weights = pose_weights(self._yaw[photos], float(self._yaw[target]))
        return [photos[i] for i in weighted_sample(rng, weights.tolist(), count)]

    def _draw_pairs(self, target: int, rng: random.Random) -> list[int]:
        """The stored pairs of `target` in a weighted draw order, the first photo of each group, seeded."""
        span = slice(self._pair_starts[target], self._pair_starts[target + 1])
        references, weights = self._pair_refs[span], self._pair_draw[span].tolist()
        photos: dict[int, int] = {}  # group -> its photo drawn first
        for position in weighted_sample(rng, weights, len(weights)):
            photos.setdefault(int(self._group_of[references[position]]), int(references[position]))
        count = rng.randint(self.num_refs[0], min(self.num_refs[1], len(photos)))
        return list(photos.values())[:count]

    def _read_row(self, row: int) -> dict[str, Any]:
        shard, local = int(self._shard_of[row]), int(self._row_of[row])
        starts = self._row_group_starts[shard]
        group = bisect_right(starts, local) - 1
        values = self._row_group(shard, group).slice(local - starts[group], 1).to_pylist()[0]
        if values["image_id"] != self._image_ids[row].as_py():  # rewritten since this dataset was built
            raise RuntimeError(f"{self._shards[shard]} changed since the dataset was built; build it again")
        return values

    def _row_group(self, shard: int, group: int) -> pa.Table:
        """One row group's item columns, from a small per-process LRU cache."""
        key = (shard, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with self._root.fs.open_input_file(self._root.path(self._shards[shard])) as handle:
            table = pq.ParquetFile(handle).read_row_group(group, columns=ITEM_COLUMNS)
        self._cache[key] = table
        if len(self._cache) > self._cached_row_groups:
            self._cache.popitem(last=False)
        return table

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # workers read their own rows; don't ship image bytes to them
        return state


def target_faces(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Each row's target-face embedding, L2-normalised (rows x dim), and yaw (NaN where unmeasured), in arrow."""
    faces = table["faces"].combine_chunks()
    offsets = faces.offsets.to_numpy()
    targets = faces.flatten().take(pa.array(offsets[:-1] - offsets[0] + table["target_face"].to_numpy()))
    vectors = targets.field("embedding").flatten().to_numpy().reshape(len(targets), -1).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    has_yaw = targets.type.get_field_index("yaw") >= 0  # shards written before filter measured pose lack it
    yaws = targets.field("yaw").to_numpy(zero_copy_only=False) if has_yaw else np.full(len(targets), np.nan)
    return vectors, np.asarray(yaws, dtype=np.float32)


def decode_image(data: bytes, size: int | None) -> torch.Tensor:
    """Encoded crop -> uint8 3xHxW RGB in sRGB, resized to size x size (crops are square) when given."""
    image = decode_upright(data, PILLOW_MAX_PIXELS, at_least=size)  # JPEG decodes at 1/2..1/8 scale: much faster
    if size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def decode_mask(data: bytes, size: int | None) -> torch.Tensor:
    """1-bit PNG mask -> bool HxW, resized with nearest neighbour (no grey edges) when size is given."""
    with Image.open(io.BytesIO(data)) as encoded:
        image = encoded.convert("L")
    if size:
        image = image.resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(image) > 127)  # 0 or 255 after convert("L")


def collate_references(items: list[Item]) -> Item:
    """Batch items whose reference counts differ (for `DataLoader(collate_fn=...)`).

    `references` is zero-padded to the batch's largest K: Bx K_max x3xHxW (`reference_difficulty` to Bx K_max x3),
    with `num_references` (int64, B) saying how many are real (`arange(K_max) < num_references[:, None]` is the mask).
    `class_word_tokens` is padded with -1 to BxT. Other tensors are stacked (same shapes); every
    other value (strings, `reference_ids`) becomes a list of B values.
    """
    batch: Item = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in ("references", "reference_difficulty"):
            batch[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True)
            batch.setdefault("num_references", torch.tensor([len(value) for value in values], dtype=torch.int64))
        elif key == "class_word_tokens":
            batch[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=TOKEN_PAD)
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


class MultiIdentityDataset(Dataset):
    """Group photos for multi-identity training, over an `export --format multiid` folder (docs/multi-identity.md).

    One item per sample of its train.jsonl: the whole photo (uint8 3xHxW, its long side at `image_size` when
    given) and, per labelled person left to right, `boxes` (float Nx4, in the item's pixels), `masks` (bool
    NxHxW), `identities`, their class words in `caption` (the caption of the crop the sample came from, not of the
    whole photo): `class_word_spans` ([start, end) characters, None where the caption does not mark that person)
    and `class_word_tokens` (a list of N int64 tensors, empty where unmarked), and `references`: a list of N uint8
    Kx3xSxS stacks (S = `reference_size`) drawn from that person's pool, which already leaves out this photo's
    near-duplicates. `other_boxes` (float Mx4) are the faces no identity was given (a bystander, a face too
    uncertain to name). As in IdentityDataset, no reference whose face is more alike than `copy_paste_max` to the
    person's face in this photo; a sample where a person has fewer than num_refs[0] such references is skipped.
    """

    def __init__(self, export_dir: str | Path, num_refs: tuple[int, int] = (1, 2), image_size: int | None = None,
                 reference_size: int = 224, seed: int = 0, copy_paste_max: float | None = None) -> None:
        self.root = Path(export_dir)
        self.num_refs, self.image_size, self.reference_size, self.seed = num_refs, image_size, reference_size, seed
        rules = TrainingSection(copy_paste_max=copy_paste_max)
        self.samples, self.skipped = [], 0
        for line in (self.root / "train.jsonl").read_text().splitlines():
            sample = json.loads(line)
            people = [k for k, who in enumerate(sample["name"]) if who]
            allowed = [self._allowed(sample, k, rules.resolved(sample.get("copy_paste_max"))) for k in people]
            if min(len(pool) for pool in allowed) >= num_refs[0]:
                self.samples.append({**sample, "people": people, "allowed": allowed})
            else:
                self.skipped += 1

    def _allowed(self, sample: dict, box: int, limit: float) -> list[str]:
        """The pool of the person in box `box` less the photos whose face is too alike to theirs here (copy-paste)."""
        pool = sample["references"][sample["name"][box]]
        if not pool:
            return []
        vectors = np.stack([np.load(self.root / Path(path).with_suffix(".npy")) for path in pool])
        return [pool[k] for k in np.flatnonzero(~copy_pasted(np.asarray(sample["embeddings"][box]), vectors, limit))]

    def __len__(self) -> int:
        return len(self.samples)

    def reference_files(self, index: int) -> list[list[str]]:
        """Item `index`'s references, per labelled person left to right: drawn from their allowed pool, seeded."""
        sample = self.samples[range(len(self))[index]]
        rng = random.Random(f"{self.seed}:{index}")
        return [draw_references(pool, self.num_refs, rng) for pool in sample["allowed"]]

    def __getitem__(self, index: int) -> Item:
        index = range(len(self))[index]
        sample = self.samples[index]
        image = decode_upright((self.root / sample["image_file"]).read_bytes(), PILLOW_MAX_PIXELS)
        scale = self.image_size / max(image.size) if self.image_size else 1.0
        size = (round(image.width * scale), round(image.height * scale))
        people = sample["people"]
        masks = [decode_whole_mask(self.root / path, size) if path else torch.zeros(size[::-1], dtype=torch.bool)
                 for path in (sample["mask_files"][k] for k in people)]
        words = {person["box"]: person for person in sample["caption_people"]}
        files = self.reference_files(index)
        boxes = torch.tensor(sample["bboxes"], dtype=torch.float32).reshape(-1, 4) * scale
        others = [k for k in range(len(sample["name"])) if k not in people]
        return {
            "image": torch.from_numpy(np.array(image.resize(size, Image.Resampling.BICUBIC))).permute(2, 0, 1),
            "boxes": boxes[people],
            "masks": torch.stack(masks),
            "identities": [sample["name"][k] for k in people],
            "caption": sample["caption"],
            "class_word_spans": [words.get(k, {}).get("class_word_span") for k in people],
            "class_word_tokens": [torch.tensor(words.get(k, {}).get("class_word_tokens") or [], dtype=torch.int64)
                                  for k in people],
            "other_boxes": boxes[others],
            "image_id": sample["image_id"],
            "reference_files": files,
            "references": [torch.stack([decode_image((self.root / path).read_bytes(), self.reference_size)
                                        for path in chosen]) for chosen in files],
        }


def draw_references(allowed: list[str], num_refs: tuple[int, int], rng: random.Random) -> list[str]:
    """Between num_refs[0] and num_refs[1] distinct references (fewer where fewer are allowed), seeded."""
    count = rng.randint(min(num_refs[0], len(allowed)), min(num_refs[1], len(allowed)))
    return rng.sample(allowed, count)


def copy_pasted(face: np.ndarray, references: np.ndarray, limit: float) -> np.ndarray:
    """Per reference: its face more alike than `limit` to this face (the same shoot: it would teach copy-paste)."""
    face = face / max(np.linalg.norm(face), 1e-12)
    references = references / np.maximum(np.linalg.norm(references, axis=1, keepdims=True), 1e-12)
    return references @ face > limit


def decode_whole_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    with Image.open(path) as encoded:
        image = encoded.convert("L").resize(size, Image.Resampling.NEAREST)
    return torch.from_numpy(np.array(image) > 127)
