"""The shards as a trainer meets them: generic readers (pyarrow, pandas, DuckDB, HF datasets) and the
PyTorch dataset that samples references, on the shards of the shared run (tests/shared_run.py)."""

from __future__ import annotations

import io
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.core.config import TrainingSection
from pipeline.core.pairs import pair_difficulty
from pipeline.training import IdentityDataset, collate_references
from stages.faces.sface_backend import SFaceBackend
from tests.conftest import REPO
from tests.shared_run import KEPT, ROW_GROUP_ROWS, SharedRun


@pytest.fixture(scope="module")
def shards(shared_run: SharedRun) -> Path:
    return shared_run.out / "shards"


@pytest.fixture(scope="module")
def index(shards: Path) -> list[dict]:
    return pq.read_table(shards / "_index.parquet").to_pylist()


@pytest.fixture(scope="module")
def rows(shards: Path) -> dict[str, dict]:
    """Every shard row, read by pyarrow alone, by image_id."""
    table = pq.read_table(shard_files(shards))
    return {row["image_id"]: row for row in table.to_pylist()}


def shard_files(shards: Path) -> list[str]:
    return sorted(str(path) for path in shards.glob("train-*.parquet"))


def counts(index: list[dict]) -> dict[str, int]:
    return {row["identity"]: row["num_rows"] for row in index}


def groups_per_identity(rows: dict[str, dict]) -> dict[str, int]:
    groups = {identity: set() for identity in KEPT}
    for row in rows.values():
        groups[row["identity"]].add(row["dup_group"])
    return {identity: len(found) for identity, found in groups.items()}


def decoded(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.slow
def test_pyarrow_and_pandas_read_the_shards_unchanged(shards: Path, index: list[dict]) -> None:
    # by file list: the folder also holds the dataset card (README.md), which folder readers take for a shard
    table = ds.dataset(shard_files(shards), format="parquet").to_table()
    assert table.num_rows == sum(counts(index).values())
    assert table.schema == pq.read_schema(shard_files(shards)[0])
    frame = pd.read_parquet(shard_files(shards))
    assert frame.groupby("identity").size().to_dict() == counts(index)
    assert isinstance(frame["crop_image"].iloc[0], bytes) and frame["caption"].notna().all()


@pytest.mark.slow
def test_duckdb_counts_per_identity_match_the_index(shards: Path, index: list[dict]) -> None:
    query = f"SELECT identity, count(*) FROM read_parquet('{shards}/train-*.parquet') GROUP BY identity"
    assert dict(duckdb.sql(query).fetchall()) == counts(index)


@pytest.mark.slow
def test_hugging_face_datasets_loads_the_shards(shards: Path, rows: dict, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets  # here: it reads the offline switches when first imported

    loaded = datasets.load_dataset("parquet", data_files=shard_files(shards), split="train", cache_dir=str(tmp_path))
    assert loaded.num_rows == len(rows)
    assert loaded.column_names == pq.read_schema(shard_files(shards)[0]).names
    first = loaded[0]
    assert first["crop_image"] == rows[first["image_id"]]["crop_image"]  # bytes come through untouched


@pytest.mark.slow
def test_the_index_agrees_with_the_shards(shards: Path, index: list[dict]) -> None:
    assert sorted(row["identity"] for row in index) == sorted(KEPT)  # each identity whole, in one shard
    assert sorted({row["shard"] for row in index}) == [Path(f).name for f in shard_files(shards)]
    for name in {row["shard"] for row in index}:
        parquet = pq.ParquetFile(shards / name)
        ranges = sorted((row["row_start"], row["num_rows"]) for row in index if row["shard"] == name)
        ends = [start + count for start, count in ranges]
        assert [start for start, _ in ranges] == [0, *ends[:-1]] and ends[-1] == parquet.metadata.num_rows  # tiled
        sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        assert max(sizes) <= ROW_GROUP_ROWS
        table = parquet.read(columns=["identity"])
        for row in index:
            if row["shard"] == name:
                assert set(table["identity"].slice(row["row_start"], row["num_rows"]).to_pylist()) == {row["identity"]}
    assert len(index) > len({row["shard"] for row in index}) > 1  # the run exercises several shards, shared ones


@pytest.mark.slow
def test_each_item_is_its_target_with_references_of_other_photos_of_its_identity(shards: Path, rows: dict) -> None:
    dataset = IdentityDataset(shards)
    assert len(dataset) == len(rows) and dataset.skipped_identities == [] and dataset.skipped_rows == 0
    # the run holds near-duplicates (a photo and its reflection), so their exclusion is really tested
    assert any(n > 1 for n in Counter(row["dup_group"] for row in rows.values()).values())
    seen = []
    for item in dataset:
        target = rows[item["image_id"]]
        seen.append(item["image_id"])
        assert (item["identity"], item["caption"], item["class_word"]) == (
            target["identity"], target["caption"], target["class_word"])
        assert item["class_word_tokens"].tolist() == target["class_word_tokens"]
        assert torch.equal(item["image"], decoded(target["crop_image"]))
        assert item["mask"].dtype == torch.bool and item["mask"].shape == item["image"].shape[1:]
        assert 0 < item["mask"].float().mean() < 1
        references = [rows[ref] for ref in item["reference_ids"]]
        assert 1 <= len(references) <= 4 and item["references"].shape[0] == len(references)
        assert all(ref["identity"] == target["identity"] for ref in references)
        assert all(ref["dup_group"] != target["dup_group"] for ref in references)  # not the target, nor its copies
        assert all(similarity(ref, target) <= TrainingSection().resolved(SFaceBackend.calibration.copy_paste_max) for ref in references)  # its shoot
        assert len({ref["dup_group"] for ref in references}) == len(references)  # nor twice the same photo
        for tensor, ref in zip(item["references"], references, strict=True):
            assert torch.equal(tensor, decoded(ref["crop_image"]))
        difficulty = item["reference_difficulty"]  # similarity, pose difference, same scene: one row per reference
        assert difficulty.shape == (len(references), 3)
        assert difficulty[:, 0].tolist() == pytest.approx([similarity(ref, target) for ref in references], abs=1e-5)
    assert sorted(seen) == sorted(rows)  # every row is a target once


@pytest.mark.slow  # reads the session's shared run, which takes a minute to build
def test_pair_difficulty_reads_pose_and_scene_from_the_stored_rows(rows: dict) -> None:
    target, reference = sorted(rows.values(), key=lambda row: row["image_id"])[:2]
    found = pair_difficulty(target, reference)
    faces = [row["faces"][row["target_face"]] for row in (target, reference)]
    turned = [np.array([face["yaw"], face["pitch"]]) for face in faces]
    assert found.similarity == pytest.approx(similarity(target, reference), abs=1e-5)
    assert found.pose_difference == pytest.approx(float(np.linalg.norm(turned[0] - turned[1])), abs=1e-3)
    assert found.pose_difference > 0  # two real photos never hold one pose exactly
    page = "https://example.org/gallery"
    assert pair_difficulty({**target, "page_url": page}, {**reference, "page_url": page}).same_scene
    apart = {**target, "page_url": None}
    far = f"{int(target['phash'], 16) ^ (2**64 - 1):016x}"  # every bit flipped
    assert not pair_difficulty(apart, {**reference, "page_url": None, "phash": far}).same_scene
    assert pair_difficulty(apart, {**reference, "page_url": None, "phash": target["phash"]}).same_scene


def similarity(a: dict, b: dict) -> float:
    """Cosine of two rows' target faces."""
    x, y = (np.asarray(row["faces"][row["target_face"]]["embedding"]) for row in (a, b))
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def reference_ids(dataset: IdentityDataset, order: list[int]) -> dict[int, list[str]]:
    return {i: dataset[i]["reference_ids"] for i in order}


@pytest.mark.slow
def test_references_depend_only_on_seed_and_index(shards: Path) -> None:
    first = IdentityDataset(shards, seed=7, image_size=32)
    forward = reference_ids(first, list(range(len(first))))
    backward = reference_ids(IdentityDataset(shards, seed=7, image_size=32), list(reversed(range(len(first)))))
    assert forward == backward
    other = reference_ids(IdentityDataset(shards, seed=8, image_size=32), list(range(len(first))))
    assert other != forward


@pytest.mark.slow
def test_num_refs_bounds_hold_and_identities_that_cannot_meet_them_are_skipped(shards: Path, rows: dict) -> None:
    groups = groups_per_identity(rows)
    exact = IdentityDataset(shards, num_refs=(4, 4), image_size=32, copy_paste_max=1.0)  # no copy-paste rule here
    short = [identity for identity in KEPT if groups[identity] - 1 < 4]
    assert short and exact.skipped_identities == short  # the run has one: the test must see a skip
    assert exact.skipped_rows == sum(1 for row in rows.values() if row["identity"] in short)
    assert len(exact) == len(rows) - exact.skipped_rows
    assert {len(exact[i]["reference_ids"]) for i in range(len(exact))} == {4}
    assert not {exact[i]["identity"] for i in range(len(exact))} & set(short)
    ranged = IdentityDataset(shards, num_refs=(2, 3), image_size=32, copy_paste_max=1.0)
    assert {len(ranged[i]["reference_ids"]) for i in range(len(ranged))} == {2, 3}


@pytest.mark.slow
def test_a_dataloader_with_two_workers_yields_padded_batches(shards: Path) -> None:
    dataset = IdentityDataset(shards, image_size=64)
    expected = reference_ids(dataset, list(range(len(dataset))))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_references)
    got = []
    for batch in loader:
        size = len(batch["image_id"])
        assert batch["image"].shape == (size, 3, 64, 64) and batch["image"].dtype == torch.uint8
        assert batch["mask"].shape == (size, 64, 64) and batch["mask"].dtype == torch.bool
        assert batch["num_references"].tolist() == [len(ids) for ids in batch["reference_ids"]]
        assert batch["references"].shape[:2] == (size, max(batch["num_references"]))
        for refs, count in zip(batch["references"], batch["num_references"], strict=True):
            assert not refs[count:].any() and all(ref.any() for ref in refs[:count])
        got += batch["reference_ids"]
    assert got == [expected[i] for i in range(len(dataset))]  # workers sample what the main process does


@pytest.mark.slow
def test_the_dataset_pickles_without_image_bytes_or_open_files(shards: Path) -> None:
    dataset = IdentityDataset(shards, image_size=32)
    item = dataset[0]
    payload = pickle.dumps(dataset)
    assert len(payload) < 64_000  # a few row groups of 1024 px crops are megabytes
    assert pickle.loads(payload)[0]["reference_ids"] == item["reference_ids"]


@pytest.mark.slow
def test_shards_that_disagree_with_the_index_are_refused(shards: Path, index: list[dict], tmp_path: Path) -> None:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    dataset = IdentityDataset(copy, image_size=32)
    name = index[0]["shard"]
    table = pq.read_table(copy / name)
    pq.write_table(table.take(list(reversed(range(table.num_rows)))), copy / name)  # rewritten under the reader
    with pytest.raises(RuntimeError, match="changed since"):
        [dataset[i] for i in range(len(dataset))]
    moved = [{**row, "row_start": row["row_start"] + 1} if row["shard"] == name else row for row in index]
    pq.write_table(pa.Table.from_pylist(moved), copy / "_index.parquet")
    with pytest.raises(ValueError, match="does not hold the rows"):
        IdentityDataset(copy)


def fake_item(references: int, tokens: list[int]) -> dict:
    return {
        "image": torch.ones(3, 8, 8, dtype=torch.uint8),
        "mask": torch.ones(8, 8, dtype=torch.bool),
        "caption": "a photo of a man",
        "class_word_tokens": torch.tensor(tokens),
        "references": torch.ones(references, 3, 8, 8, dtype=torch.uint8),
        "reference_ids": [f"r{i}" for i in range(references)],
        "reference_difficulty": torch.ones(references, 3),
    }


def test_collate_pads_references_and_class_word_tokens() -> None:
    batch = collate_references([fake_item(1, [5]), fake_item(3, [4, 5])])
    assert batch["references"].shape == (2, 3, 3, 8, 8)
    assert batch["num_references"].tolist() == [1, 3]
    assert not batch["references"][0, 1:].any() and batch["references"][1].all()
    assert batch["class_word_tokens"].tolist() == [[5, -1], [4, 5]]
    assert batch["image"].shape == (2, 3, 8, 8) and batch["caption"] == ["a photo of a man"] * 2
    assert batch["reference_ids"] == [["r0"], ["r0", "r1", "r2"]]
    assert batch["reference_difficulty"].shape == (2, 3, 3) and not batch["reference_difficulty"][0, 1:].any()


def test_num_refs_must_be_ordered_and_positive(tmp_path: Path) -> None:
    for bad in [(0, 2), (3, 2)]:
        with pytest.raises(ValueError, match="num_refs"):
            IdentityDataset(tmp_path, num_refs=bad)


def test_the_cli_never_imports_torch() -> None:
    """pipeline.training imports torch at the top; the CLI must not import it, so `--help` stays light."""
    code = "import sys, pipeline.__main__ as cli; cli.build_parser(); print('torch' in sys.modules)"
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
