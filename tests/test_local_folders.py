"""The `local` source: folders found by any spelling of the name, sub-folders taken, links kept inside the root,
the driver told which names had no folder and which folders no name, and URLs that name no builder's folder."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.removals import TAKEN_DOWN
from stages.sources.local import LocalSource, url_forms
from tests.conftest import FACES, run_cli, stage_rows

ZOE_NFC, ZOE_NFD = "Zo\u00eb Test", "Zoe\u0308 Test"
TREE = {  # file under the root -> labelled photo
    "Jack-Dorsey/img16.jpg": "img16.jpg",
    "Jack_Dorsey/img17.jpg": "img17.jpg",  # one person's photos over two spellings: both taken
    "katy perry/img26.jpg": "img26.jpg",
    "MATT_DAMON/img30.jpg": "img30.jpg",
    "MATT_DAMON/2019/img29.jpg": "img29.jpg",
    "MATT_DAMON/.thumbnails/img31.jpg": "img31.jpg",  # hidden: skipped
    f"{ZOE_NFC}/img38.jpg": "img38.jpg",
    "Zoe Test/img39.jpg": "img39.jpg",  # the name without its accent: only when no folder keeps it
    "Rene Aubry/img40.jpg": "img40.jpg",
    "zhou_jie_lun/img41.jpg": "img41.jpg",  # 周杰伦's readable slug
    "Unlisted Person/img34.jpg": "img34.jpg",
}
NAMES = ["Jack Dorsey", "Katy Perry", "Matt Damon", ZOE_NFD, "René Aubry", "周杰伦", "Jeff Bezos"]


def build(root: Path) -> Path:
    for rel, photo in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FACES / "images" / photo, root / rel)
    (root / "MATT_DAMON" / ".DS_Store").write_bytes(b"\0")
    return root


def source(root: Path, names: Path | None = None) -> LocalSource:
    overrides = ["crawl.source=local", f"crawl.local_root={root}", *([f"run.names={names}"] if names else [])]
    return LocalSource.load(load_config(resolve_profile("cpu"), overrides))


@pytest.mark.parametrize(("name", "files"), [
    ("Jack Dorsey", ["Jack-Dorsey/img16.jpg", "Jack_Dorsey/img17.jpg"]),
    ("Katy Perry", ["katy perry/img26.jpg"]),
    ("Matt Damon", ["MATT_DAMON/img30.jpg", "MATT_DAMON/2019/img29.jpg"]),  # a folder's files, then its sub-folders'
    (ZOE_NFD, [f"{ZOE_NFC}/img38.jpg"]),
    ("Zoe Test", ["Zoe Test/img39.jpg"]),
    ("René Aubry", ["Rene Aubry/img40.jpg"]),
    ("周杰伦", ["zhou_jie_lun/img41.jpg"]),
])
def test_a_name_finds_its_folders_by_any_spelling_and_their_sub_folders(tmp_path: Path, name: str,
                                                                        files: list[str]) -> None:
    root = build(tmp_path / "photos")
    found = list(source(root).fetch(name))
    assert [item.url for item in found] == [f"local:{rel}" for rel in files]
    assert [item.data for item in found] == [(root / rel).read_bytes() for rel in files]


def test_a_name_without_a_folder_is_a_row_with_its_reason(tmp_path: Path) -> None:
    [row] = source(build(tmp_path / "photos")).fetch("Jeff Bezos")
    assert (row.status, row.reason) == ("dropped", "no_source_folder")


def test_the_driver_says_which_names_have_no_folder_and_which_folders_no_name(tmp_path: Path, caplog) -> None:
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    config = load_config(resolve_profile("cpu"), ["crawl.source=local", f"crawl.local_root={build(tmp_path / 'p')}",
                                                   f"run.names={tmp_path / 'names.txt'}"])
    with caplog.at_level(logging.WARNING):
        LocalSource.check(config)
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 3 and all(record.levelname == "WARNING" for record in caplog.records)
    assert "1 names have no folder" in said[0] and "'Jeff Bezos'" in said[0]
    assert "1 names take several folders" in said[1] and "'Jack Dorsey' ('Jack-Dorsey', 'Jack_Dorsey')" in said[1]
    assert "2 folders match no name" in said[2] and "'Unlisted Person', 'Zoe Test'" in said[2]  # Zoë has her own


def test_links_are_not_followed_out_of_the_root(tmp_path: Path) -> None:
    root, outside = build(tmp_path / "photos"), tmp_path / "elsewhere"
    (outside / "album").mkdir(parents=True)
    for photo in ("img1.jpg", "img2.jpg"):
        shutil.copy(FACES / "images" / photo, outside / "album" / photo)
    os.symlink(outside / "album" / "img1.jpg", root / "MATT_DAMON" / "escape.jpg")
    os.symlink(outside / "album", root / "MATT_DAMON" / "album")
    os.symlink(outside / "album", root / "Angelina Jolie")  # a name's folder that is a link out
    os.symlink(root / "katy perry" / "img26.jpg", root / "MATT_DAMON" / "zz-inside.jpg")  # stays inside: taken
    local = source(root)
    assert [item.url for item in local.fetch("Matt Damon")] == [
        "local:MATT_DAMON/img30.jpg", "local:MATT_DAMON/zz-inside.jpg", "local:MATT_DAMON/2019/img29.jpg"]
    assert [item.reason for item in local.fetch("Angelina Jolie")] == ["no_source_folder"]


def test_a_file_name_that_is_not_utf8_is_a_row_with_its_reason(tmp_path: Path) -> None:
    root = build(tmp_path / "photos")
    shutil.copy(FACES / "images" / "img31.jpg", os.fsdecode(os.fsencode(root / "MATT_DAMON") + b"/caf\xe9.jpg"))
    found = list(source(root).fetch("Matt Damon"))
    assert [(item.url, item.reason) for item in found] == [
        ("local:MATT_DAMON/caf\\xe9.jpg", "bad_file_name"), ("local:MATT_DAMON/img30.jpg", None),
        ("local:MATT_DAMON/2019/img29.jpg", None)]


def test_a_retry_reads_local_and_file_urls_inside_the_root_only(tmp_path: Path) -> None:
    root = build(tmp_path / "photos")
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    old = (root / "MATT_DAMON" / "img30.jpg").absolute().as_uri()  # how runs before `local:` stored it
    urls = ["local:MATT_DAMON/2019/img29.jpg", old, "local:../secret.jpg", (tmp_path / "secret.jpg").as_uri()]
    found = list(source(root).refetch((url, None, None) for url in urls))
    assert [(item.status, item.reason) for item in found] == [("ok", None), ("ok", None), ("dropped", "bad_url"),
                                                              ("dropped", "bad_url")]
    assert found[1].data == (root / "MATT_DAMON" / "img30.jpg").read_bytes()


def test_a_local_file_has_a_url_in_both_forms_and_other_urls_one(tmp_path: Path) -> None:
    root = build(tmp_path / "photos")
    file = root / "katy perry" / "img26.jpg"
    assert url_forms(file.as_uri(), root) == ["local:katy perry/img26.jpg", file.as_uri()]
    assert url_forms("local:katy perry/img26.jpg", root) == ["local:katy perry/img26.jpg", file.as_uri()]
    assert url_forms("https://example.org/a.jpg", root) == url_forms("https://example.org/a.jpg", None)
    assert url_forms("local:../x.jpg", root) == ["local:../x.jpg"]


# -- end to end: the CLI's crawl, its warnings, opt-out and takedown by any form of a name or a file's URL ------
@pytest.fixture(scope="module")
def crawled(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("local")
    photos = build(root / "photos")
    (root / "names.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8-sig")  # a BOM, and Zoë in NFD
    (root / "optout.txt").write_text(f"name:{ZOE_NFC}\n")  # in NFC
    out = root / "run"
    result = run_cli("run", "--stage", "crawl", "--config", "cpu", "--names", str(root / "names.txt"),
                     "--out", str(out), "--set", "crawl.source=local", "--set", f"crawl.local_root={photos}",
                     "--set", f"governance.optout=[{root / 'optout.txt'}]")
    assert result.returncode == 0, result.stderr
    return {"root": root, "photos": photos, "out": out, "stderr": result.stderr}


def as_old_run(out: Path, photos: Path, dest: Path) -> Path:
    """A copy of the run as it was crawled before `local:` URLs: each crawl row's url the file's file:// URI."""
    shutil.copytree(out, dest)
    for part in (dest / "stages" / "crawl").glob("part-*.parquet"):
        table = pq.read_table(part)
        urls = [(photos / url.removeprefix("local:")).absolute().as_uri() if url else url
                for url in table["url"].to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls, pa.string())), part)
    return dest


@pytest.mark.slow
def test_a_local_crawl_by_any_spelling_its_warnings_and_takedowns_by_either_url(crawled) -> None:
    out, photos = crawled["out"], crawled["photos"]
    warnings = " ".join(crawled["stderr"].split())
    assert "warning: 1 names have no folder" in warnings and "'Jeff Bezos'" in warnings
    assert "warning: 2 folders match no name" in warnings and "'Unlisted Person', 'Zoe Test'" in warnings
    rows = stage_rows(out, "crawl")
    assert sorted({row["name"] for row in rows}) == sorted(NAMES[:3] + [ZOE_NFC] + NAMES[4:])  # NFC, no BOM
    assert [row["reason"] for row in rows if row["name"] == ZOE_NFC] == ["opted_out_identity"]
    kept = {row["url"] for row in rows if row["status"] == "ok"}
    assert "local:MATT_DAMON/2019/img29.jpg" in kept and len(kept) == 7
    assert not [row for row in rows if str(photos) in f"{row['url']} {row['detail']}"]  # the builder's folders
    old = as_old_run(out, photos, crawled["root"] / "old-run")
    taken = run_cli("remove", "--out", str(out), "--url", (photos / "MATT_DAMON/2019/img29.jpg").as_uri())
    assert taken.returncode == 0, taken.stderr
    taken_old = run_cli("remove", "--out", str(old), "--url", "local:MATT_DAMON/2019/img29.jpg")
    assert taken_old.returncode == 0, taken_old.stderr
    for run in (out, old):
        matt = [row for row in stage_rows(run, "crawl") if row["name"] == "Matt Damon"]
        assert [row["reason"] for row in matt] == [None, TAKEN_DOWN], run
    person = run_cli("remove", "--out", str(out), "--identity", "JACK DORSEY")
    assert person.returncode == 0, person.stderr
    assert [row["reason"] for row in stage_rows(out, "crawl") if row["name"] == "Jack Dorsey"] == [TAKEN_DOWN]
