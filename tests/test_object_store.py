"""The run directory on an object store (`--out s3://...`), against an S3 server on 127.0.0.1."""

from __future__ import annotations

import urllib.request

import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from pipeline.core.rundir import RunDir
from pipeline.core.markers import read_markers
from tests.conftest import cpu_run_args, labelled_tree, run_cli

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def bucket(monkeypatch):
    """An empty bucket on a local S3-compatible server; yields the query string that reaches it."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    # moto keeps its buckets per process, not per server: start empty whatever an earlier test of this
    # process (a pytest-xdist worker runs several files) left in run-bucket
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    filesystem, _ = pafs.FileSystem.from_uri(f"s3://run-bucket?{options}&allow_bucket_creation=true")
    filesystem.create_dir("run-bucket")
    yield options
    server.stop()


@pytest.mark.slow
def test_a_run_writes_and_resumes_on_an_object_store(bucket, faces, tmp_path) -> None:
    names = labelled_tree(tmp_path, faces, ["matt_damon"])
    out = f"s3://run-bucket/runs/one?{bucket}"
    args = cpu_run_args(names, out, tmp_path / "photos")

    first = run_cli("run", *args, env=CREDENTIALS)
    assert first.returncode == 0, first.stderr
    run = RunDir(out)
    assert read_markers(run, "verify")["matt_damon"].kept == 5
    assert len(run.list_files("raw/matt_damon")) == 5
    assert not (tmp_path / "runs").exists()

    again = run_cli("run", *args, env=CREDENTIALS)
    assert again.returncode == 0 and "+1 done" in again.stderr
    status = run_cli("status", "--config", "cpu", "--out", out, env=CREDENTIALS)
    assert status.returncode == 0 and "1/1" in status.stderr
