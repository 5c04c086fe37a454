"""Takedowns: the ledger's matching, the crawl's and the shard step's checks, and `remove` end to end on
a cpu-profile run crawled from a URL list on the loopback server (nothing but 127.0.0.1 is reached)."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.names import Identity, identity_slug
from pipeline.core.removals import TAKEN_DOWN, Ledger, load_ledger, new_removal, record
from pipeline.core.rundir import RunDir
from pipeline.dataset import governance
from pipeline.dataset.governance_card import card_section
from pipeline.core.markers import Marker, part_path, write_marker
from pipeline.dataset.shards import write_shard
from pipeline.engine.stats import StageCounts
from pipeline.dataset.takedown_parts import pending, take_down
from pipeline.dataset.takedown_shards import rewrite_shard
from pipeline.remove import requested
from pipeline.report.state import RunState
from stages.crawl import CrawlStage
from tests.conftest import FACES, ONE_ACTOR, run_cli, stage_rows
from benchmarks.fixtures.http_server import LocalServer, serving

PHOTOS = {  # identity -> (photo, page host): every photo at least 512 px on its short side
    "angelina_jolie": [("img1.jpg", "fans.example"), ("img2.jpg", "fans.example"), ("img4.jpg", "fans.example")],
    "matt_damon": [("img29.jpg", "news.agency.example"), ("img30.jpg", "news.agency.example"),
                   ("img31.jpg", "fans.example"), ("img32.jpg", "fans.example"), ("img33.jpg", "fans.example")],
    "leonardo_dicaprio": [("img34.jpg", "fans.example"), ("img35.jpg", "fans.example"),
                          ("img36.jpg", "fans.example"), ("img37.jpg", "fans.example")],
    "george_clooney": [("img38.jpg", "fans.example"), ("img39.jpg", "fans.example"), ("img40.jpg", "fans.example")],
}
# Each identity keeps verify.min_images (3) photos, so no decision made over a whole identity or the whole run
# (hygiene's) changes with the takedowns, and a resume has nothing to do. No more than that where nothing is
# taken down (george_clooney) or everything is (angelina_jolie): each photo costs every stage's work.
REMOVED_PHOTO = "img35.jpg"  # leonardo_dicaprio's, taken down by its sha256
ON_AGENCY = {"img29.jpg", "img30.jpg"}  # pages on a subdomain of agency.example


def sha(photo: str) -> str:
    return hashlib.sha256((FACES / "images" / photo).read_bytes()).hexdigest()


def removal(kind: str, value: str, **more: object):
    return new_removal(kind, value, "test", "tester", **more)


# -- units ---------------------------------------------------------------------------------------------
def test_the_ledger_matches_identities_bytes_urls_and_hosts_with_their_subdomains() -> None:
    ledger = Ledger([removal("identity", "jane_doe"), removal("image", "a" * 64, image_ids=("a" * 64,)),
                     removal("url", "http://x.example.org/1.jpg", image_ids=("b" * 64,)), removal("domain", "agency.example.com")])
    assert ledger.match("jane_doe", None, None, None).kind == "identity"
    assert ledger.match("bob", "a" * 64, "http://elsewhere.example.com/", None).kind == "image"
    assert ledger.match("bob", "b" * 64, "http://mirror.example.com/1.jpg", None).kind == "url"  # the same bytes elsewhere
    assert ledger.match("bob", None, "http://x.example.org/1.jpg", None).kind == "url"
    assert ledger.match("bob", None, "HTTP://IMG.News.Agency.Example.COM:8080/p.jpg", None).kind == "domain"
    assert ledger.match("bob", None, "http://cdn.example.com/p.jpg", "https://agency.example.com/page").kind == "domain"
    for url in ("http://notagency.example.com/p.jpg", "http://agency.example.net/p.jpg", "http://[bad/", "", None):
        assert ledger.match("bob", "c" * 64, url, None) is None


def test_the_ledger_is_one_file_per_request_and_reads_back(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    first, second = removal("domain", "agency.example"), removal("image", "a" * 64, image_ids=("a" * 64,))
    record(run, first)
    record(run, second)
    assert len(list((tmp_path / "governance" / "removals").glob("*.json"))) == 2
    assert load_ledger(run).entries == [first, second] and load_ledger(run).find("domain", "agency.example") == first


def test_the_crawl_never_stores_or_searches_what_was_removed(tmp_path: Path) -> None:
    folder = tmp_path / "photos" / "george_clooney"
    folder.mkdir(parents=True)
    for photo in ("img38.jpg", "img39.jpg"):
        shutil.copy(FACES / "images" / photo, folder / photo)
    run = RunDir(str(tmp_path / "run"))
    record(run, removal("image", sha("img38.jpg"), image_ids=(sha("img38.jpg"),)))
    record(run, removal("identity", "jane_doe"))
    config = load_config(resolve_profile("cpu"), ["crawl.source=local", f"crawl.local_root={tmp_path / 'photos'}"])
    stage = CrawlStage(config, run)
    stage.setup()
    names = pa.table({"identity": ["george_clooney", "jane_doe"], "name": ["george_clooney", "Jane Doe"]})
    rows = {(row["identity"], row["image_id"]): row for row in stage.process(names).to_pylist()}
    assert rows[("george_clooney", sha("img38.jpg"))]["reason"] == TAKEN_DOWN
    assert rows[("george_clooney", sha("img39.jpg"))]["status"] == "ok"
    assert rows[("jane_doe", None)]["reason"] == TAKEN_DOWN and len(rows) == 3  # not even searched for
    assert [path.name for path in (tmp_path / "run" / "raw" / "george_clooney").iterdir()] == [f"{sha('img39.jpg')}.jpg"]


def test_a_shard_is_rewritten_identity_by_identity_in_the_shard_steps_row_groups(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    table = pa.table({"identity": ["a"] * 3 + ["b"] * 2 + ["c"] * 3, "image_id": list("01234567"),
                      "url": [None] * 8, "page_url": [None] * 8, "source": ["urls"] * 8, "license": [None] * 8})
    with run.open_atomic("shards/train-00000-of-00001.parquet") as stream, pq.ParquetWriter(stream, table.schema) as w:
        for identity in "abc":
            w.write_table(table.filter(pc.equal(table["identity"], identity)), row_group_size=2)
    result = rewrite_shard(run, "train-00000-of-00001.parquet",
                           Ledger([removal("identity", "b"), removal("image", "1", image_ids=("1",))]), 2)
    assert [(r["identity"], r["row_start"], r["num_rows"]) for r in result["index"]] == [("a", 0, 2), ("c", 2, 3)]
    shard = pq.ParquetFile(tmp_path / "shards" / "train-00000-of-00001.parquet")
    assert [shard.metadata.row_group(i).num_rows for i in range(shard.num_row_groups)] == [2, 2, 1]
    assert shard.read()["image_id"].to_pylist() == ["0", "2", "5", "6", "7"]


def test_the_shard_step_leaves_out_and_counts_what_got_past_a_takedown(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    run.write_table("stages/caption/part-a.parquet", pa.table({
        "identity": ["a"] * 3, "image_id": ["0", "1", "2"], "status": ["ok", "ok", "dropped"], "reason": [None] * 3,
        "detail": [None] * 3, "url": [None] * 3, "page_url": [None] * 3, "source": ["urls"] * 3, "license": [None] * 3}))
    record(run, removal("image", "1", image_ids=("1",)))
    result = write_shard(run, "caption", "shards/train-00000-of-00001.parquet", ["a"], 64)
    assert result["opted_out"] == {TAKEN_DOWN: 1} and result["index"][0]["num_rows"] == 1
    assert pq.read_table(tmp_path / "shards" / "train-00000-of-00001.parquet")["image_id"].to_pylist() == ["0"]


def test_a_removed_persons_photos_merged_into_another_identity_go_too(tmp_path: Path) -> None:
    """hygiene.merge pulls identity a's rows into b's parts from the hygiene stage on (merged_from = a)."""
    run = RunDir(str(tmp_path))
    keys = {"status": ["ok", "ok"], "reason": [None, None], "detail": [None, None], "url": ["u0", "u1"],
            "page_url": [None, None]}
    run.write_table("stages/crawl/part-b.parquet", pa.table({"identity": ["b"], "name": ["b"], "image_id": ["0"],
                                                             "raw_path": [None], **{k: v[:1] for k, v in keys.items()}}))
    for stage in ("hygiene", "caption"):
        run.write_table(f"stages/{stage}/part-b.parquet", pa.table({
            "identity": ["b", "b"], "image_id": ["0", "1"], "merged_from": [None, "a"], **keys}))
    ledger = Ledger([removal("identity", "a")])
    assert pending(run, ledger, "b")
    take_down(run, ledger, "b")
    for stage in ("hygiene", "caption"):
        assert pq.read_table(tmp_path / "stages" / stage / "part-b.parquet")["image_id"].to_pylist() == ["0"]
    assert not pending(run, ledger, "b")


def test_remove_finds_an_identity_by_any_spelling_also_one_an_earlier_names_list_crawled(tmp_path: Path) -> None:
    """A run.json written before names were normalised holds an NFD name; `Jane Doe` was only in an earlier list."""
    run, nfd = RunDir(str(tmp_path)), "Zoe\u0308 Test"
    run.write_table(part_path("crawl", "jane_doe-0123456789"), pa.table({"identity": ["jane_doe-0123456789"],
                                                                        "name": ["Jane Doe"]}))
    state = RunState(run.uri, [Identity(identity_slug(nfd), nfd)], load_config(resolve_profile("cpu")), [], None)

    def identity(given: str) -> argparse.Namespace:
        return argparse.Namespace(identity=given, image=None, url=None, domain=None)

    assert requested(identity("Zo\u00eb Test"), state, run) == ("identity", identity_slug(nfd), nfd)
    assert requested(identity("jane doe"), state, run) == ("identity", "jane_doe-0123456789", "Jane Doe")
    with pytest.raises(UserError, match="no identity 'Jane Do' .*; close: 'Jane Doe'"):
        requested(identity("Jane Do"), state, run)


def governance_run(tmp_path: Path, columns: dict[str, list]) -> tuple[RunDir, list[str]]:
    """A run directory holding only an index and one shard of two rows, with these extra columns."""
    run = RunDir(str(tmp_path))
    base = {"identity": ["a", "a"], "image_id": ["0", "1"], "source": ["urls", "local"], "license": ["CC0-1.0", None]}
    run.write_table("shards/train-00000-of-00001.parquet", pa.table({**base, **columns}))
    run.write_table("shards/_index.parquet", pa.table({"identity": ["a"], "shard": ["train-00000-of-00001.parquet"],
                                                       "row_start": [0], "num_rows": [2]}))
    return run, ["train-00000-of-00001.parquet"]


@pytest.mark.parametrize("newer", [False, True])
def test_the_governance_section_says_what_it_cannot_tell_and_lights_up_with_the_columns(tmp_path, newer) -> None:
    consent = [json.dumps({"training_metadata": "absent", "robots_txt": "pass"}), None]
    extra = {"consent": consent, "safety_age": [34.0, None], "nsfw_score": [0.01, 0.3]} if newer else {}
    run, shards = governance_run(tmp_path, extra)
    crawl, safety = StageCounts("crawl"), StageCounts("safety")
    crawl.add(5, {"ok": 2, "dropped": 3}, {"robots_disallowed": 2, TAKEN_DOWN: 1})
    if newer:  # one photo the safety stage dropped as a minor's
        safety.add(3, {"ok": 2, "dropped": 1}, {"minor": 1})
        run.write_table("stages/safety/part-a.parquet", pa.table({"reason": [None, "minor"], "safety_age": [30.0, 9.0]}))
        write_marker(run, Marker("safety", "a", "h", "i", "o", 2, 2, {"ok": 1, "dropped": 1}, {"minor": 1}))
    config = load_config(resolve_profile("cpu"))
    facts = governance.gather(run, config, [crawl, safety], Ledger([removal("domain", "agency.example.com")]), shards)
    card = card_section(facts)
    checks = {check["name"]: check for check in facts.checks}
    assert checks["robots.txt"]["dropped"] == 2 and facts.reasons[TAKEN_DOWN] == 1
    assert "1 removal requests" in card and "images without a licence recorded" in card and "1 of 2" in card
    if newer:
        assert checks["robots.txt"]["evidence"] == {"robots_txt": {"pass": 1, "not recorded": 1}}
        assert facts.distributions["age"].column == "safety_age" and facts.distributions["age"].missing == 1
        assert facts.distributions["nsfw"].series["in the dataset"].sum() == 2 and "Not measured" not in card
        assert facts.distributions["age"].series["dropped: minor"].tolist() == [1, 0, 0, 0, 0, 0, 0]
        assert "| 0–13 | 0 | 1 |" in card and "| 65 and over |" in card
    else:
        assert checks["robots.txt"]["evidence"] == {"robots_txt": {"not recorded": 2}}
        assert card.count("Not measured in this run") == 2  # neither age nor NSFW
    assert governance.gather(run, config, [crawl], Ledger([]), None).dataset_rows is None  # no shards: not known


# -- end to end --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with serving() as running:
        yield running


def run_args(root: Path, out: Path) -> list[str]:
    return ["--config", "cpu", "--names", str(root / "names.txt"), "--out", str(out),
            "--set", "crawl.source=urls", "--set", f"crawl.urls_file={root / 'urls.tsv'}",
            "--set", "crawl.allowed_networks=[127.0.0.1/32]", "--set", "crawl.download.retries=0",
            "--set", "filter.min_face_size=80", "--set", "shard.max_rows=1", *ONE_ACTOR]


def fake_generation(out: Path, run_id: str, identity: str, photo: str) -> None:
    """What `generate` leaves, reduced to what a takedown reads (the record's identities and references)."""
    folder = out / "generate" / run_id
    (folder / "references").mkdir(parents=True)
    (folder / "references" / f"{sha(photo)}.jpg").write_bytes(b"a crop")
    references = [{"image_id": sha(photo), "file": f"references/{sha(photo)}.jpg"}]
    (folder / "record.json").write_text(json.dumps({"identities": [{"identity": identity, "references": references}]}))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, server) -> dict:
    """A finished run with a report and two generations, before any takedown."""
    root = tmp_path_factory.mktemp("takedown")
    (root / "names.txt").write_text("\n".join(PHOTOS) + "\n")
    lines = [f"{name}\t{server.url('/img/' + photo)}\thttps://{host}/{name}/{photo}\tCC-BY-4.0"
             for name, photos in PHOTOS.items() for photo, host in photos]
    (root / "urls.tsv").write_text("\n".join(lines) + "\n")
    out = root / "run"
    result = run_cli("run", "--stage", "all", *run_args(root, out), timeout=600)
    assert result.returncode == 0, result.stderr  # a whole run writes its report (`report` is test_report's)
    fake_generation(out, "20260101-000000-aaaaaa", "angelina_jolie", "img1.jpg")  # a removed person
    fake_generation(out, "20260101-000000-bbbbbb", "george_clooney", "img38.jpg")  # stays
    fake_generation(out, "20260101-000000-cccccc", "leonardo_dicaprio", REMOVED_PHOTO)  # a removed photo
    return {"root": root, "out": out}


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((out / "shards").glob("train-*.parquet"))}


def shard_rows(out: Path) -> list[dict]:
    """The dataset's rows as the index names them (no image bytes)."""
    rows = []
    for entry in pq.read_table(out / "shards" / "_index.parquet").to_pylist():
        table = pq.read_table(out / "shards" / entry["shard"], columns=["identity", "image_id", "page_url"])
        rows += table.slice(entry["row_start"], entry["num_rows"]).to_pylist()
    return rows


@pytest.fixture(scope="module")
def removed(finished) -> dict:
    out = finished["out"]
    index = {row["identity"]: row["shard"] for row in pq.read_table(out / "shards" / "_index.parquet").to_pylist()}
    before = shard_bytes(out)
    before_pairs = {path.name: path.read_bytes() for path in (out / "shards" / "pairs").glob("train-*.parquet")}
    thumbs = {path.name.split("-")[0] for path in (out / "report" / "thumbs").iterdir()}
    calls = [("--identity", "angelina_jolie", "subject request"), ("--image", sha(REMOVED_PHOTO), "copyright"),
             ("--domain", "agency.example", "copyright")]
    said = []
    for flag, value, reason in calls:
        result = run_cli("remove", "--out", str(out), flag, value, "--reason", reason, "--by", "legal team")
        assert result.returncode == 0, result.stderr
        said.append(result.stdout)
    return {**finished, "index": index, "before": before, "before_pairs": before_pairs, "thumbs": thumbs, "said": said}


@pytest.mark.slow
def test_the_shards_no_longer_hold_what_was_removed_and_the_others_are_untouched(removed) -> None:
    out, index, before = removed["out"], removed["index"], removed["before"]
    rows = shard_rows(out)
    gone = {sha(REMOVED_PHOTO), *(sha(photo) for photo in ON_AGENCY)}
    assert rows and not [row for row in rows if row["identity"] == "angelina_jolie" or row["image_id"] in gone]
    assert not [row for row in rows if "agency.example" in (row["page_url"] or "")]
    after = shard_bytes(out)
    assert sorted(after) == sorted(before)  # an emptied shard stays (empty), so the -of-N names still hold
    assert after[index["george_clooney"]] == before[index["george_clooney"]]  # byte for byte
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {index[name] for name in ("angelina_jolie", "matt_damon", "leonardo_dicaprio")}
    assert pq.read_table(out / "shards" / index["angelina_jolie"]).num_rows == 0
    done = json.loads((out / "shards" / "_done.json").read_text())
    assert done["rows"] == len(rows) and done["shards"] == len(before)


@pytest.mark.slow
def test_the_pair_index_loses_the_removed_photos_and_untouched_shards_keep_theirs(removed) -> None:
    out, index = removed["out"], removed["index"]
    gone = {sha(REMOVED_PHOTO), *(sha(photo) for photo in ON_AGENCY)}
    held = {(row["identity"], row["image_id"]) for row in shard_rows(out)}
    pairs = pq.read_table(sorted((out / "shards" / "pairs").glob("train-*.parquet"))).to_pylist()
    named = {(pair["identity"], pair[column]) for pair in pairs for column in ("image_id", "reference_id")}
    assert pairs and named <= held
    assert not [p for p in pairs if {p["image_id"], p["reference_id"]} & gone or p["identity"] == "angelina_jolie"]
    clooney = removed["before_pairs"][index["george_clooney"]]
    assert clooney and (out / "shards" / "pairs" / index["george_clooney"]).read_bytes() == clooney


@pytest.mark.slow
def test_raw_bytes_and_every_derived_copy_are_gone(removed) -> None:
    out = removed["out"]
    gone = {sha(REMOVED_PHOTO), *(sha(photo) for photo in ON_AGENCY), *(sha(p) for p, _ in PHOTOS["angelina_jolie"])}
    angelina = out / "raw" / "angelina_jolie"
    assert not angelina.exists() or not list(angelina.iterdir())
    assert not [path for path in (out / "raw").rglob("*.jpg") if path.stem in gone]
    for stage in ("filter", "verify", "crop", "segment", "caption"):
        rows = stage_rows(out, stage)
        assert rows and not [row for row in rows if row["image_id"] in gone or row["identity"] == "angelina_jolie"]
    crawl = stage_rows(out, "crawl")
    assert [row["reason"] for row in crawl if row["identity"] == "angelina_jolie"] == [TAKEN_DOWN]
    taken = [row for row in crawl if row["image_id"] in gone]
    assert len(taken) == 3 and {(row["reason"], row["raw_path"]) for row in taken} == {(TAKEN_DOWN, None)}
    thumbs = {path.name.split("-")[0] for path in (out / "report" / "thumbs").iterdir()}
    assert removed["thumbs"] & gone and not thumbs & gone  # the report had some; none is left
    assert sorted(path.name for path in (out / "generate").iterdir()) == ["20260101-000000-bbbbbb"]


@pytest.mark.slow
def test_markers_stay_consistent_so_a_resume_does_nothing(removed, server) -> None:
    out = removed["out"]
    shards = shard_bytes(out)
    markers = {path: path.read_bytes() for path in (out / "stages").rglob("_done/*.json")}
    asked = len(server.requests)
    result = run_cli("run", "--stage", "all", *run_args(removed["root"], out))
    assert result.returncode == 0, result.stderr
    assert server.requests[asked:] == [] and shard_bytes(out) == shards
    assert {path: path.read_bytes() for path in (out / "stages").rglob("_done/*.json")} == markers


@pytest.mark.slow
def test_the_same_request_again_adds_no_entry_and_mistakes_are_one_line(removed) -> None:
    out = removed["out"]
    again = run_cli("remove", "--out", str(out), "--domain", "Agency.Example.")
    assert again.returncode == 0 and "already in the ledger" in again.stdout
    assert len(load_ledger(RunDir(str(out))).entries) == 3
    for args, message in ((["--image", "abc"], "is not a sha256"), (["--identity", "Nobody"], "no identity"),
                          (["--url", "http://127.0.0.1:9/none.jpg"], "nothing in"),
                          (["--domain", "https://x.example.org"], "is not a host name")):
        result = run_cli("remove", "--out", str(out), *args)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_status_report_and_card_count_the_removals(removed) -> None:
    out = removed["out"]
    person, photo, _ = removed["said"]
    assert person.startswith("recorded removal") and "kept other photos" not in person  # nothing left to recompute
    assert "note: leonardo_dicaprio kept other photos" in photo and "--stage verify --force" in photo
    status = run_cli("status", "--out", str(out))
    text = " ".join((status.stdout + status.stderr).split())
    assert "3 requests (identity 1, image 1, domain 1); by reason: copyright 2, subject request 1" in text
    assert "4 rows taken down" in text  # angelina's one row, the photo, the two agency pages
    summary = json.loads((out / "report" / "summary.json").read_text())["governance"]
    assert summary["ledger"]["by_reason"] == {"copyright": 2, "subject request": 1}
    assert summary["reasons"]["taken_down"] == 4 and summary["dataset_rows"] == len(shard_rows(out))
    columns = pq.read_schema(next((out / "shards").glob("train-*.parquet"))).names
    age = next(column for column in ("safety_age", "estimated_age") if column in columns)
    nsfw = "nsfw_score" if "nsfw_score" in columns else None
    assert (summary["distributions"]["age"]["column"], summary["distributions"]["nsfw"]["column"]) == (age, nsfw)
    page = (out / "report" / "index.html").read_text()
    assert '<section id="governance">' in page and "legal team" in page
    card = (out / "shards" / "README.md").read_text()
    assert "## Governance" in card and "3 removal requests" in card and "by reason: copyright 2, subject request 1" in card
    assert f"Column `{age}`" in card and ("Not measured in this run" in card) == (nsfw is None)


def digests(out: Path, slug: str) -> dict[str, tuple[str, str]]:
    """Per stage after crawl, what the identity's task consumed and made."""
    markers = {path.parts[-3]: json.loads(path.read_text()) for path in (out / "stages").glob(f"*/_done/{slug}.json")}
    return {stage: (m["input_digest"], m["output_digest"]) for stage, m in markers.items() if stage != "crawl"}


@pytest.fixture(scope="module")
def rerun(removed, server, tmp_path_factory) -> dict:
    """A copy of the run after the takedowns, crawled again with --force, then run to the end."""
    out = tmp_path_factory.mktemp("rerun") / "run"
    shutil.copytree(removed["out"], out)
    args = run_args(removed["root"], out)
    untouched = digests(out, "george_clooney")
    asked = len(server.requests)
    crawl = run_cli("run", "--stage", "crawl", "--force", *args, timeout=300)
    assert crawl.returncode == 0, crawl.stderr
    rest = run_cli("run", "--stage", "all", *args, timeout=600)
    assert rest.returncode == 0, rest.stderr
    return {"out": out, "requests": server.requests[asked:], "untouched": untouched}


@pytest.mark.slow
def test_a_forced_recrawl_does_not_bring_anything_back(rerun) -> None:
    out = rerun["out"]
    gone = {sha(REMOVED_PHOTO), *(sha(photo) for photo in ON_AGENCY)}
    assert not [r for r in shard_rows(out) if r["identity"] == "angelina_jolie" or r["image_id"] in gone]
    assert not [r for r in rerun["requests"] if any(p in r for p, _ in PHOTOS["angelina_jolie"])]  # never searched
    assert not (out / "raw" / "angelina_jolie").exists() or not list((out / "raw" / "angelina_jolie").iterdir())
    assert not [path for path in (out / "raw").rglob("*.jpg") if path.stem in gone]
    crawl = stage_rows(out, "crawl")
    assert sum(row["reason"] == TAKEN_DOWN for row in crawl) == 4
    # an identity the takedowns did not touch was crawled again to the same bytes: nothing after crawl changed
    assert digests(out, "george_clooney") == rerun["untouched"]
