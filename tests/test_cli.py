"""The CLI end to end on the shared local tree of real photos and generated bad files (tests/shared_run.py)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import pytest

from pipeline.__main__ import main
from pipeline.engine.registry import STAGES
from tests.conftest import run_cli, stage_rows
from tests.shared_run import NAMES, NOBODY, SLUGS, SharedRun, SharedTree


def outcomes(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(identity, file name) -> `ok` or the drop reason."""
    return {
        (row["identity"], PurePosixPath(unquote(urlparse(row["url"]).path)).name): row["reason"] or row["status"]
        for row in rows
        if row["url"]
    }


@pytest.mark.slow
def test_every_file_ends_kept_or_dropped_with_its_reason(shared_run: SharedRun) -> None:
    crawl, filtered = stage_rows(shared_run.out, "crawl"), stage_rows(shared_run.out, "filter")
    got = {**outcomes(crawl), **{key: value for key, value in outcomes(filtered).items()}}
    expected = {(identity, name): outcome for identity, files in shared_run.tree.expected.items()
                for name, outcome in files.items()}
    assert got == expected
    nobody = [row for row in crawl if row["name"] == NOBODY]
    assert [(row["status"], row["reason"]) for row in nobody] == [("dropped", "no_source_folder")]
    rotated = next(row for row in filtered if row["url"].endswith("rotated.jpg"))
    assert (rotated["width"], rotated["height"]) == (600, 1000)


@pytest.mark.slow
def test_provenance_and_content_addressed_raw_files(shared_run: SharedRun) -> None:
    finished = shared_run.out
    for row in stage_rows(finished, "crawl"):
        if row["status"] == "ok":
            assert row["source"] == "local" and row["url"].startswith("local:")
            assert row["raw_path"] == f"raw/{row['identity']}/{row['image_id']}.{row['raw_path'].rsplit('.', 1)[1]}"
            assert (finished / row["raw_path"]).is_file() and row["fetched_at"] is not None


@pytest.mark.slow
def test_a_second_run_does_no_work(shared_run: SharedRun, tmp_path: Path) -> None:
    """Not a task, not a part, not a shard, and not the report (it reads every identity's rows)."""
    finished = shared_run.copy(tmp_path / "run")
    report = finished / "report" / "index.html"
    parts = {path: path.stat().st_mtime_ns for path in [report, *(finished / "stages").rglob("*.parquet")]}
    shards = len(list((finished / "shards").glob("train-*.parquet")))
    result = run_cli("run", "--stage", "all", *shared_run.tree.args(finished))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"+{len(NAMES)} done") == len(STAGES)
    assert f"+{shards} done" in next(line for line in result.stderr.splitlines() if line.startswith("│ shard"))
    assert {path: path.stat().st_mtime_ns for path in parts} == parts


@pytest.mark.slow
def test_the_console_shows_our_lines_and_the_log_the_libraries(shared_run: SharedRun) -> None:
    """Not a terminal: no ANSI escapes. Ray's and OpenCV's lines are in the run's log, not on the console; the
    summary names the shards, the report, the names without photos, the next command and the log."""
    finished, seen = shared_run.out, shared_run.console
    assert "\x1b" not in seen
    for noise in ("core_worker", "setPreferableTarget", "UserWarning", "site-packages", "Traceback"):
        assert noise not in seen, noise
    lines = seen.splitlines()
    assert f"shards: {finished}/shards/ (" in seen and f"QA report: {finished}/report/index.html" in lines
    assert f"no photo found for 1 of {len(NAMES)} names: {NOBODY}" in lines
    assert f"next: python -m pipeline export --format webdataset --out {finished}" in lines
    log = Path(next(line for line in lines if line.startswith("log: ")).removeprefix("log: "))
    assert log.parent == finished / "logs" and log.name.startswith("run-")
    assert "setPreferableTarget" in log.read_text()


@pytest.mark.slow
def test_a_whole_run_writes_the_qa_report(shared_run: SharedRun) -> None:
    assert (shared_run.out / "report" / "index.html").is_file()


def crawl_files(out: Path) -> dict[Path, int]:
    """Each file of the crawl stage -> its modification time."""
    return {path: path.stat().st_mtime_ns for path in (out / "stages" / "crawl").rglob("*") if path.is_file()}


@pytest.mark.slow
def test_a_run_that_keeps_nothing_says_so(shared_run: SharedRun, tmp_path: Path) -> None:
    """A whole run again with a filter threshold no photo meets: filter and what follows run again, crawl
    does not (its files stay as they were), and the empty dataset says so."""
    out = shared_run.copy(tmp_path / "run")
    crawled = crawl_files(out)
    result = run_cli("run", "--stage", "all", *shared_run.tree.args(out, "--set", "filter.min_short_side=100000"))
    assert result.returncode == 0, result.stderr
    assert crawl_files(out) == crawled
    assert {row["status"] for row in stage_rows(out, "filter")} == {"dropped"}
    assert "warning: the dataset is empty" in result.stderr
    assert "This dataset is empty" in (out / "shards" / "README.md").read_text()


@pytest.mark.slow
def test_a_new_filter_threshold_reruns_filter_only(shared_run: SharedRun, tmp_path: Path) -> None:
    """Only the filter stage: that a whole run with a new filter threshold leaves crawl's files as they were
    is test_a_run_that_keeps_nothing_says_so's."""
    out = shared_run.copy(tmp_path / "run")
    result = run_cli("run", "--stage", "filter", *shared_run.tree.args(out, "--set", "filter.min_short_side=256"))
    assert result.returncode == 0, result.stderr
    before = outcomes(stage_rows(shared_run.out, "filter"))
    after = outcomes(stage_rows(out, "filter"))
    was_low = {key for key, reason in before.items() if reason == "low_resolution"}
    assert {key for key in was_low if after[key] == "ok"}, "some photos between 256 and 512 px come back"
    assert all(after[(identity, "tiny.jpg")] == "low_resolution" for identity in SLUGS)
    assert all(after[key] == before[key] for key in before.keys() - was_low)


@pytest.mark.slow
def test_a_model_no_worker_can_load_is_one_error_line_and_exit_2(shared_run: SharedRun, tmp_path: Path) -> None:
    """Every actor's setup fails on a broken model file: the run ends with one line naming it (after the
    workers' tracebacks), and the earlier filter output stays as it was."""
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "det.onnx").write_bytes(b"not an onnx model")
    out = shared_run.copy(tmp_path / "run")
    markers = {path: path.read_bytes() for path in (out / "stages" / "filter" / "_done").iterdir()}
    broken = ["--set", "face.backend=insightface", "--set", f"face.model={pack}"]
    result = run_cli("run", "--stage", "filter", *shared_run.tree.args(out, *broken))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the filter stage could not start: InvalidProtobuf"), last
    assert str(pack / "det.onnx") in last and "face settings" in last
    assert {path: path.read_bytes() for path in (out / "stages" / "filter" / "_done").iterdir()} == markers


@pytest.mark.slow
def test_status_counts_what_the_run_holds(shared_run: SharedRun) -> None:
    finished = shared_run.out
    result = run_cli("status", "--config", "cpu", "--out", str(finished))
    assert result.returncode == 0, result.stderr
    crawl_line = next(line for line in result.stderr.splitlines() if line.startswith("│ crawl"))
    kept = sum(row["status"] == "ok" for row in stage_rows(finished, "crawl"))
    assert f"{len(NAMES)}/{len(NAMES)}" in crawl_line and f" {kept} " in crawl_line
    assert "decompression_bomb" in result.stderr or "low_resolution" in result.stderr


def test_filter_without_crawl_output_says_what_to_run(shared_tree: SharedTree, tmp_path: Path) -> None:
    result = run_cli("run", "--stage", "filter", *shared_tree.args(tmp_path / "empty"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: no crawl output")
    assert "--stage crawl" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--names", "/nonexistent/names.txt"], "error: names file not found"),
        (["--set", "filter.min_short_sid=3"], "error: unknown config key 'filter.min_short_sid'"),
        (["--set", "filter.min_short_side=big"], "error: bad value for 'filter.min_short_side'"),
        (["--config", "no-such-profile"], "error: config file not found"),
        (["--set", "crawl.local_root=/nonexistent"], "error: crawl.local_root is not a folder"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(shared_tree: SharedTree, tmp_path: Path, extra: list[str],
                                               message: str) -> None:
    result = run_cli("run", *shared_tree.args(tmp_path / "run"), *extra)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_every_command_has_help() -> None:
    for command in ([], ["run"], ["status"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout


@pytest.mark.parametrize("name", ["trial #1", "@foo", "null", "2024-01-01"])
def test_out_is_a_path_as_given(tmp_path, monkeypatch, capsys, name: str) -> None:
    """Not YAML: "#1" is no comment, "@foo" no syntax error, "null" no default, a date no date."""
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--config", "cpu", "--out", name]) == 2
    assert capsys.readouterr().err.startswith(f"error: no run in {tmp_path / name} (")


def test_an_error_line_is_cut_to_a_readable_length(tmp_path, capsys) -> None:
    long = tmp_path.joinpath(*["x" * 200] * 10)
    assert main(["status", "--config", "cpu", "--out", str(long)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and len(err.strip()) <= 500 and err.strip().endswith("...")
