"""Exports as trainers meet them: WebDataset tars read by the webdataset package, JSONL read by DuckDB,
both holding every kept row once with the shards' bytes and metadata; re-exports write only what changed.
A copy of the shared run (tests/shared_run.py: several shards) and its two exports are made once; tests
that change them work on a copy."""

from __future__ import annotations

import io
import json
import shutil
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from tests.conftest import run_cli
from tests.shared_run import KEPT, SharedRun


@pytest.fixture(scope="module")
def root(shared_run: SharedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/run: a copy of the shared run with its webdataset export in the default place; root/jsonl: its
    JSONL export."""
    root = tmp_path_factory.mktemp("export")
    shared_run.copy(root / "run")
    assert shard_count(root) >= 3  # one changed, one touched, one left as it was
    export(root, "webdataset")
    export(root, "jsonl")
    return root


def shard_count(root: Path) -> int:
    return len(list((root / "run" / "shards").glob("train-*.parquet")))


def export(root: Path, fmt: str) -> str:
    """`python -m pipeline export` into root/run/exports/webdataset, or root/jsonl (--dest); its summary line."""
    dest = ["--dest", str(root / "jsonl")] if fmt == "jsonl" else []
    result = run_cli("export", "--format", fmt, "--config", "cpu", "--out", str(root / "run"), *dest)
    assert result.returncode == 0, result.stderr
    return result.stdout


def dest_of(root: Path, fmt: str) -> Path:
    return root / "jsonl" if fmt == "jsonl" else root / "run" / "exports" / "webdataset"


def shard_rows(run: Path) -> dict[str, dict]:
    """Every shard row, read by pyarrow alone, by image_id."""
    table = pq.read_table(sorted(str(path) for path in (run / "shards").glob("train-*.parquet")))
    return {row["image_id"]: row for row in table.to_pylist()}


def target(row: dict) -> dict:
    return row["crop_faces"][row["target_face"]]


def embedding(row: dict) -> np.ndarray:
    return np.asarray(row["faces"][row["target_face"]]["embedding"], dtype=np.float32)


def assert_metadata_matches(record: dict, row: dict) -> None:
    for key in ("identity", "name", "image_id", "dup_group", "caption", "class_word", "class_word_span",
                "class_word_tokens", "source", "url", "page_url", "license", "crop_box", "crop_size"):
        assert record[key] == row[key], key
    assert record["bbox"] == target(row)["box"]
    flat = target(row)["landmarks"]
    assert record["landmarks"] == [[flat[i], flat[i + 1]] for i in range(0, 10, 2)]  # 5 points, crop pixels
    assert record["caption"][slice(*record["class_word_span"])] == record["class_word"]
    fetched = record["fetched_at"]  # ISO text in JSON; DuckDB gives a datetime
    assert (datetime.fromisoformat(fetched) if isinstance(fetched, str) else fetched) == row["fetched_at"]


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under `folder` -> its mtime: what a re-export rewrote."""
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_webdataset_reads_every_kept_row_once_with_the_shards_bytes(root: Path) -> None:
    rows, dest = shard_rows(root / "run"), dest_of(root, "webdataset")
    tars = sorted(str(path) for path in dest.glob("*.tar"))
    assert len(tars) == shard_count(root)
    seen, runs = [], defaultdict(list)  # runs: per tar, identities in order
    for sample in wds.WebDataset(tars, shardshuffle=False):
        record, row = json.loads(sample["json"]), rows[sample["__key__"].split("/")[1]]
        assert sample["__key__"] == f"{row['identity']}/{row['image_id']}"
        assert sample["jpg"] == row["crop_image"] and sample["mask.png"] == row["mask"]
        assert_metadata_matches(record, row)
        assert np.array_equal(np.load(io.BytesIO(sample["npy"])), embedding(row))
        assert np.array_equal(np.asarray(record["embedding"], dtype=np.float32), embedding(row))
        seen.append(row["image_id"])
        tar_runs = runs[Path(sample["__url__"]).name]
        if not tar_runs or tar_runs[-1] != row["identity"]:
            tar_runs.append(row["identity"])
    assert sorted(seen) == sorted(rows)  # every kept row, exactly once
    identities = [identity for tar_runs in runs.values() for identity in tar_runs]
    assert sorted(identities) == sorted(KEPT)  # each identity one consecutive run in one tar

    index = json.loads((dest / "index.json").read_text())
    assert sorted(index["identities"]) == sorted(KEPT)
    for identity, entry in index["identities"].items():
        assert identity in runs[entry["tar"]]
        assert entry["keys"] == [f"{identity}/{r['image_id']}" for r in rows.values() if r["identity"] == identity]
        assert entry["dup_groups"] == [rows[key.split("/")[1]]["dup_group"] for key in entry["keys"]]


@pytest.mark.slow
def test_duckdb_reads_jsonl_lines_whose_files_are_the_shards_bytes(root: Path) -> None:
    rows, dest = shard_rows(root / "run"), dest_of(root, "jsonl")
    relation = duckdb.sql(f"SELECT * FROM read_json_auto('{dest / 'train.jsonl'}')")
    lines = [dict(zip(relation.columns, values, strict=True)) for values in relation.fetchall()]
    assert sorted(line["image_id"] for line in lines) == sorted(rows)  # every kept row, exactly once
    for line in lines:
        row = rows[line["image_id"]]
        assert_metadata_matches(line, row)
        assert (dest / line["image_file"]).read_bytes() == row["crop_image"]  # paths relative to the JSONL
        assert (dest / line["mask_file"]).read_bytes() == row["mask"]
        assert np.array_equal(np.load(dest / line["id_embed_file"]), embedding(row))
        # the keys InstantID's and IP-Adapter-FaceID's training scripts read
        assert line["file_name"] == line["image_file"] and line["insightface_feature_file"] == line["id_embed_file"]
        assert line["text"] == line["additional_feature"] == row["caption"]
    per_shard = sum(len(path.read_text().splitlines()) for path in dest.glob("train-*.jsonl"))
    assert per_shard == len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["webdataset", "jsonl"])
def test_a_second_export_writes_nothing(root: Path, fmt: str) -> None:
    before = snapshot(dest_of(root, fmt))
    assert f"0 shards written, {shard_count(root)} unchanged, 0 removed" in export(root, fmt)
    assert snapshot(dest_of(root, fmt)) == before


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["webdataset", "jsonl"])
def test_only_the_changed_shard_is_exported_again(root: Path, tmp_path: Path, fmt: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(root / "run", copy / "run")
    shutil.copytree(root / "jsonl", copy / "jsonl")
    shards = sorted((copy / "run" / "shards").glob("train-*.parquet"))
    table = pq.read_table(shards[0])
    first = pc.equal(table["image_id"], table["image_id"][0])
    captions = pc.if_else(first, "a photo of a changed woman", table["caption"])
    pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", captions), shards[0])
    shards[1].touch()  # a new mtime, the same bytes: only its marker is refreshed
    before = snapshot(dest_of(copy, fmt))

    assert f"1 shards written, {shard_count(copy) - 1} unchanged, 0 removed" in export(copy, fmt)
    changed = {name for name, mtime in snapshot(dest_of(copy, fmt)).items() if before.get(name) != mtime}
    stem = shards[0].stem
    assert {name for name in changed if not name.startswith(("_done", "index.json", "train.jsonl"))} == (
        {f"{stem}.tar"} if fmt == "webdataset" else {name for name in before if name.startswith(stem)})
    assert "a photo of a changed woman" in (dest_of(copy, fmt) / (f"{stem}.tar" if fmt == "webdataset" else
                                                                   "train.jsonl")).read_bytes().decode(errors="replace")


@pytest.mark.slow
def test_outputs_of_shards_gone_from_the_index_are_removed(root: Path, resharded: Path, tmp_path: Path) -> None:
    """The exports of root/run, then its shard step run again into one shard (the resharded copy, whose exports/
    is root/run's: a reshard leaves exports alone)."""
    copy = tmp_path / "copy"
    shutil.copytree(resharded, copy / "run")
    shutil.copytree(root / "run" / "exports", copy / "run" / "exports")
    shutil.copytree(root / "jsonl", copy / "jsonl")
    for fmt in ("webdataset", "jsonl"):
        assert f"1 shards written, 0 unchanged, {shard_count(root)} removed" in export(copy, fmt)
        left = {path.name for path in dest_of(copy, fmt).iterdir()} - {"_done", "_done.json", "index.json",
                                                                         "train.jsonl"}
        one = "train-00000-of-00001"
        assert left == ({f"{one}.tar"} if fmt == "webdataset" else {f"{one}.jsonl", one})
        assert sorted(path.stem for path in (dest_of(copy, fmt) / "_done").iterdir()) == [one]
    lines = (dest_of(copy, "jsonl") / "train.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["image_id"] for line in lines) == sorted(shard_rows(root / "run"))


def test_a_run_without_shards_is_one_error_line(tmp_path: Path) -> None:
    result = run_cli("export", "--format", "jsonl", "--config", "cpu", "--out", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no shards in") and len(result.stderr.splitlines()) == 1


def test_a_destination_holding_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run" / "shards").mkdir(parents=True)  # a run whose shard step kept nothing
    pq.write_table(pa.table({"identity": pa.array([], pa.string()), "shard": pa.array([], pa.string())}),
                   tmp_path / "run" / "shards" / "_index.parquet")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = run_cli("export", "--format", "webdataset", "--config", "cpu", "--out", str(tmp_path / "run"),
                     "--dest", str(tmp_path / "mine"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "--dest" in result.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
