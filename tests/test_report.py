"""The QA report: units of its parts, then the report of a copy of the shared cpu-profile run (tests/shared_run.py)
with hostile text added, in headless Chromium (Qt WebEngine from PyPI, tests/browser.py)."""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.markers import Marker, write_marker
from pipeline.core.names import identity_slug
from pipeline.core.rundir import RunDir
from pipeline.report import write_report
from pipeline.report.generator import read_records, render
from pipeline.report.guidance import Guidance
from pipeline.report.hist import Histogram
from pipeline.report.html import link
from pipeline.report.thumbs import Thumbs
from stages.faces.sface_backend import SFaceBackend
from tests import browser
from tests.conftest import image_bytes, run_cli, stage_rows
from tests.shared_run import HOSTILE_NAME, NAMES, SharedRun, SharedTree
from tests.test_any_image import APPLE_NAME, encode, in_mode, small_photo
from tests.test_object_store import CREDENTIALS, bucket  # noqa: F401 (bucket: a fixture)

HOSTILE_CAPTION = """a photo of a woman "x" </td></table><script>alert('caption')</script> & 'y'"""
HOSTILE_URL = "javascript:alert('url')"
SECTIONS = ["overview", "funnel", "governance", "identities", "distributions", "guidance", "curation", "sheets",
            "generator"]
# Appended to a copy of the page: the browser itself lists images that did not decode.
PROBE = """<script>window.addEventListener('load', () => {
  const bad = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
  document.body.dataset.broken = JSON.stringify(bad); document.body.dataset.images = document.images.length;
});</script>"""


def test_histogram_zoom_keeps_every_count_and_shows_the_threshold() -> None:
    hist = Histogram("t", "x", -1.0, 1.0, 1600)
    hist.add("kept", [0.95, 0.96, 0.99, 1.0, None])
    hist.add("dropped", [0.80, 0.90])
    edges, counts = hist.zoomed(max_bins=10, include=0.5)
    assert len(edges) == len(counts["kept"]) + 1 <= 11
    assert counts["kept"].sum() == 4 and counts["dropped"].sum() == 2
    assert edges[0] <= 0.5 and edges[-1] >= 1.0
    assert hist.summary()["kept"] == {"count": 4, "mean": pytest.approx(0.975), "min": 0.95, "max": 1.0}


def test_guidance_keeps_the_lowest_kept_and_the_highest_dropped() -> None:
    guidance = Guidance(limit=2)
    for i, sim in enumerate([0.99, 0.95, 0.97, 0.96]):
        for kept in (True, False):
            row = {"identity": "a", "image_id": f"{i}{kept}", "sim_to_centroid": sim, "raw_path": None,
                   "target_face": None, "faces": None, "detail": None}
            guidance.offer(row, kept=kept)
    assert [c.sim for c in guidance.lowest_kept()] == [0.95, 0.96]
    assert [c.sim for c in guidance.highest_dropped()] == [0.99, 0.97]


def test_only_web_addresses_become_links() -> None:
    assert link("https://example.org/a?b=1&c=2", "source") == (
        '<a href="https://example.org/a?b=1&amp;c=2" rel="noreferrer noopener">source</a>')
    assert "href" not in link(HOSTILE_URL, "source") and "&#x27;url&#x27;" in link(HOSTILE_URL, "source")


def write_generation(run: RunDir, run_id: str, image: bytes, reference: bytes) -> None:
    """What `python -m pipeline generate` leaves (pipeline/generator/record.py), with hostile text
    and paths that try to leave the run's generate/ folder."""
    folder = f"generate/{run_id}"
    run.write_bytes(f"{folder}/images/000.png", image)
    run.write_bytes(f"{folder}/references/abc.jpg", reference)
    run.write_json(f"{folder}/record.json", {
        "prompt": HOSTILE_CAPTION, "mix": "pool", "seed": 7,
        "identities": [{"identity": HOSTILE_NAME, "photos": 1, "weight": None,
                        "references": [{"image_id": "abc", "file": "references/abc.jpg"}]}],
        "images": [{"file": "images/000.png", "seed": 7, "face_found": True, "face_box": [4, 4, 40, 40],
                    "sim_to_centroid": {HOSTILE_NAME: 0.61}},
                   {"file": "../../raw/x.jpg", "seed": 8, "face_found": False, "face_box": "<b>"}],
        "summary": {"images": 2, "images_with_face": 1, "mean_sim_to_centroid": {HOSTILE_NAME: 0.61}},
    })


def test_generator_results_render_escaped_or_say_not_run(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    assert "Not run yet" in render(read_records(run), Thumbs(run))
    write_generation(run, "20260101-000000-aaaaaa", image_bytes((64, 64), "PNG"), image_bytes((48, 48)))
    run.write_bytes("generate/20260102-000000-bbbbbb/record.json", b"{not json")
    records = read_records(run)
    assert [run_id for run_id, _ in records] == ["20260102-000000-bbbbbb", "20260101-000000-aaaaaa"]
    page = render(records, Thumbs(run))
    assert html.escape(HOSTILE_CAPTION) in page and html.escape(HOSTILE_NAME) in page and "<script>" not in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 2 and all((tmp_path / "report" / src).is_file() for src in sources)
    assert "unreadable" in page and "no face found" in page


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "I;16", "I", "F", "CMYK", "RGBA", "YCbCr", "LAB"])
def test_a_raw_thumbnail_draws_its_box_on_any_image_mode(tmp_path: Path, mode: str) -> None:
    run = RunDir(str(tmp_path))
    run.write_bytes("raw/x/photo.tif", encode(in_mode(small_photo(), mode), "TIFF"))
    thumbs = Thumbs(run)
    row = {"image_id": "ab" * 32, "raw_path": "raw/x/photo.tif"}

    def greenness(box: list[float] | None) -> np.ndarray:
        rel = thumbs.raw(row, box)
        assert rel is not None
        with Image.open(tmp_path / "report" / rel) as thumb:
            rgb = np.asarray(thumb.convert("RGB"), dtype=int)
        return rgb[..., 1] - np.maximum(rgb[..., 0], rgb[..., 2])

    assert ((greenness([100, 40, 300, 240]) - greenness(None)) > 40).sum() > 300  # the box's outline, in colour


def test_report_without_a_run_says_how_to_make_one(tmp_path: Path) -> None:
    result = run_cli("report", "--out", str(tmp_path / "nothing"))
    assert result.returncode == 2 and result.stderr.startswith("error: no run in") and "Traceback" not in result.stderr


def _make_hostile(out: Path) -> None:
    """A model that wrote markup as a caption, and a crawl that recorded a `javascript:` URL; their markers
    pin the parts as they now are, as the stages that wrote them would have (a part changed under its
    marker is not done, and the report would not read it)."""
    slug = identity_slug(HOSTILE_NAME)
    caption = out / "stages" / "caption" / f"part-{slug}.parquet"
    table = pq.read_table(caption)
    table = table.set_column(table.schema.get_field_index("caption"), "caption",
                             pa.array([HOSTILE_CAPTION] * table.num_rows))
    pq.write_table(table, caption)
    filtered = out / "stages" / "filter" / f"part-{slug}.parquet"
    table = pq.read_table(filtered)
    dropped = pc.not_equal(table["status"], "ok")
    for column, value in (("url", HOSTILE_URL), ("detail", HOSTILE_CAPTION)):
        index = table.schema.get_field_index(column)
        table = table.set_column(index, column, pc.if_else(dropped, value, table[column]))
    pq.write_table(table, filtered)
    for stage in ("caption", "filter"):
        marker = json.loads((out / "stages" / stage / "_done" / f"{slug}.json").read_text())
        write_marker(RunDir(str(out)), Marker.from_json(marker))


@pytest.fixture(scope="module")
def report_run(shared_run: SharedRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the shared run with hostile text in its tables and a generation, and its report."""
    out = shared_run.copy(tmp_path_factory.mktemp("report") / "run")
    _make_hostile(out)
    crop = pq.read_table(out / "stages" / "caption" / "part-matt_damon.parquet")["crop_image"][0].as_py()
    write_generation(RunDir(str(out)), "20260101-000000-aaaaaa", crop, crop)
    report = run_cli("report", "--out", str(out))
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip() == f"{out}/report/index.html"
    return out, json.loads((out / "report" / "summary.json").read_text())


def rendered_dom(report: Path) -> str:
    """The page's DOM after loading from disk, with the probe's verdict on every image."""
    probe = report / "probe.html"
    probe.write_text((report / "index.html").read_text().replace("</body>", PROBE + "</body>"))
    try:
        return browser.render(probe, until="'broken' in document.body.dataset")
    finally:
        probe.unlink()


def assert_renders(report: Path) -> str:
    dom = rendered_dom(report)
    broken = re.search(r'data-broken="([^"]*)"', dom)
    assert broken and json.loads(html.unescape(broken.group(1))) == [], "the browser found broken images"
    sources = [html.unescape(src) for src in re.findall(r'<img [^>]*src="([^"]+)"', dom)]
    assert int(re.search(r'data-images="(\d+)"', dom).group(1)) == len(sources) > 0
    for src in sources:
        assert not re.match(r"[a-z]+:|/", src) and (report / src).is_file(), src  # relative, inside the folder
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in dom
    return dom


@pytest.mark.slow
def test_report_renders_in_chromium_with_every_image(report_run, faces) -> None:
    out, summary = report_run
    dom = assert_renders(out / "report")
    thumbs = [src for src in re.findall(r'<img [^>]*src="([^"]+)"', dom) if src.startswith("thumbs/")]
    assert len(thumbs) >= 20 and len(summary["contact_sheets"]) == len(NAMES)
    assert [generation["run_id"] for generation in summary["generations"]] == ["20260101-000000-aaaaaa"]
    impostor = hashlib.sha256((faces["images"] / "img39.jpg").read_bytes()).hexdigest()
    assert impostor in [face["image_id"] for face in summary["guidance"]["highest_dropped"]]
    assert impostor[:16] in " ".join(thumbs)  # its face is shown
    assert '<code class="id" title="image_id' in dom and f">{impostor}</code>" in dom  # its image_id, to copy
    shot = out / "report-screenshot.png"
    browser.render(out / "report" / "index.html", size=(1400, 5000), screenshot=shot)
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 1000, "a blank screenshot"
    print(f"screenshot: {shot}")


@pytest.mark.slow
def test_odd_images_end_as_rows_and_in_the_report(report_run, shared_tree: SharedTree) -> None:
    """The run over odd images finishes with its report; each is a row kept to the shards or dropped with a reason."""
    out, _ = report_run
    odd = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
           for path in (shared_tree.photos / "angelina_jolie").glob("odd-*")}
    rows = [row for stage in ("crawl", "filter", "verify", "hygiene", "safety_scores", "safety", "crop", "segment",
                              "caption") for row in stage_rows(out, stage) if row["image_id"] in odd.values()]
    shards = [row for path in (out / "shards").glob("train-*.parquet")
              for row in pq.read_table(path, columns=["image_id", "icc_profile"]).to_pylist()]
    kept = {row["image_id"]: row["icc_profile"] for row in shards if row["image_id"] in odd.values()}
    dropped = {row["image_id"]: row["reason"] for row in rows if row["status"] != "ok"}
    assert all(reason for reason in dropped.values()) and set(kept) | set(dropped) == set(odd.values())
    assert dropped == {odd["odd-grey-impostor.jpg"]: "not_target_identity"}
    assert kept[odd["odd-apple-display.png"]] == APPLE_NAME and kept[odd["odd-grey.jpg"]] is None
    assert list((out / "report" / "thumbs").glob(f"{odd['odd-grey-impostor.jpg']}-raw-*.jpg"))  # boxed, in colour


@pytest.mark.slow
def test_hostile_name_caption_and_url_come_out_as_text(report_run) -> None:
    out, _ = report_run
    page = (out / "report" / "index.html").read_text()
    for text in (HOSTILE_NAME, HOSTILE_CAPTION, HOSTILE_URL):
        assert html.escape(text) in page
    assert page.count("<script") == 1 and page.count("<table") == page.count("</table>")
    dom = rendered_dom(out / "report")
    assert dom.count("<script") == 2  # the page's sort and the test's probe: none from data
    assert html.escape(HOSTILE_NAME, quote=False) in dom and html.escape(HOSTILE_CAPTION, quote=False) in dom
    assert not re.search(r'href="javascript:', dom)


@pytest.mark.slow
def test_summary_agrees_with_the_stage_tables(report_run) -> None:
    out, summary = report_run
    previous_kept = len(NAMES)  # crawl's input rows are the names
    for stage in summary["stages"]:
        rows = stage_rows(out, stage["stage"])
        statuses = Counter(row["status"] for row in rows)
        reasons = Counter(row["reason"] or "unknown" for row in rows if row["status"] != "ok")
        assert [stage["kept"], stage["dropped"], stage["failed"]] == [statuses[s] for s in ("ok", "dropped", "failed")]
        assert stage["reasons"] == reasons and stage["rows_in"] == previous_kept and stage["status"] == "done"
        previous_kept = stage["kept"]
    assert summary["missing_stages"] == [] and summary["shards"]["rows"] == previous_kept
    assert summary["governance"]["dataset_rows"] == previous_kept and summary["governance"]["ledger"]["requests"] == 0
    verify, caption, crawl = (stage_rows(out, name) for name in ("verify", "caption", "crawl"))
    for identity in summary["identities"]:
        mine = [row for row in verify if row["identity"] == identity["slug"] and row["status"] == "ok"]
        assert identity["crawled"] == sum(r["identity"] == identity["slug"] and r["status"] == "ok" for r in crawl)
        assert identity["kept"] == sum(r["identity"] == identity["slug"] and r["status"] == "ok" for r in caption)
        if identity["kept"]:  # training pairs are counted over the same photos as the identity table
            assert summary["training_pairs"][identity["slug"]]["photos"] == identity["kept"]
        if mine:
            assert identity["sim_min"] == pytest.approx(min(r["sim_to_centroid"] for r in mine))
            assert identity["purity"] == pytest.approx(mine[0]["identity_purity"])
            spread = summary["pose_spread"][identity["slug"]]  # no verify.max_images: nothing left out
            assert spread["photos_before"] == spread["photos_after"] == len(mine)
            assert spread["degrees_before"] == spread["degrees_after"] > 0
    sims = summary["distributions"]["sim_to_centroid"]
    assert sims["kept"]["count"] == sum(row["status"] == "ok" for row in verify)
    impostors = Counter(row["reason"] for row in verify)["not_target_identity"]
    assert sims["dropped: wrong person"]["count"] == impostors >= 1  # verify's (no curator decisions here)
    assert summary["verify_threshold"] == SFaceBackend.calibration.threshold  # the cpu profile's, as verify recorded it


@pytest.mark.slow
def test_thumbnails_are_made_once(report_run) -> None:
    out, _ = report_run
    thumbs = {path.name: path.stat().st_mtime_ns for path in (out / "report" / "thumbs").iterdir()}
    write_report(RunDir(str(out)))
    assert {path.name: path.stat().st_mtime_ns for path in (out / "report" / "thumbs").iterdir()} == thumbs


@pytest.mark.slow
def test_the_report_of_a_run_on_an_object_store(report_run, bucket) -> None:  # noqa: F811 (the fixture)
    out, local = report_run
    uri = f"s3://run-bucket/runs/one?{bucket}"
    run = RunDir(uri)
    for entry in ("run.json", "config.yaml", "raw", "stages", "shards", "generate"):  # not report/: no cache
        pafs.copy_files(str(out / entry), run.path(entry), destination_filesystem=run.fs)
    result = run_cli("report", "--out", uri, env=CREDENTIALS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"s3://run-bucket/runs/one/report/index.html?{bucket}"
    remote = run.read_json("report/summary.json")
    assert {**remote, "run": "", "generated_at": ""} == {**local, "run": "", "generated_at": ""}
    assert run.list_files("report/thumbs") == sorted(path.name for path in (out / "report" / "thumbs").iterdir())
    assert "thumbs/" in run.read_bytes("report/index.html").decode()


@pytest.mark.slow
def test_a_partial_run_renders_and_lists_what_is_missing(report_run, tmp_path) -> None:
    """Crawl done, filter current for all but one identity (its marker is of another config),
    verify done for one identity only, nothing later."""
    full, _ = report_run
    out = tmp_path / "partial"
    later = ("hygiene", "safety_scores", "safety", "crop", "segment", "caption", "shards", "report", "generate")
    shutil.copytree(full, out, ignore=shutil.ignore_patterns(*later))
    for marker in sorted((out / "stages" / "verify" / "_done").glob("*.json"))[1:]:
        marker.unlink()
    stale = out / "stages" / "filter" / "_done" / "katy_perry.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "config_hash": "another-config"}))

    summary = write_report(RunDir(str(out)))
    stages = {stage["stage"]: stage for stage in summary["stages"]}
    assert summary["missing_stages"] == ["filter", "verify", "hygiene", "safety_scores", "safety", "crop", "segment",
                                        "caption", "shard"]
    assert (stages["filter"]["tasks_done"], stages["filter"]["tasks_stale"]) == (len(NAMES) - 1, 1)
    assert stages["verify"]["status"] == "partial" and stages["crop"]["status"] == "missing"
    dom = assert_renders(out / "report")
    # verify done: one identity, and the name without photos (an empty task, in the marker index only)
    assert "crop (not run yet)" in dom and f"verify (2/{len(NAMES)} identities)" in dom and "Not run yet" in dom
    assert "no data: needs caption, and it has not run yet" in dom
