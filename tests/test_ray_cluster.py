"""`--address` joins a Ray cluster the test starts with `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import cpu_run_args, labelled_tree, run_cli, stage_rows

# Ray maps 127.0.0.1 to the machine's network address unless told it is no multi-node cluster;
# both the head and the driver get this so every connection stays on loopback.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"ray head did not listen on {port}")


@pytest.fixture(scope="module")
def ray_head():
    """A head node on loopback, with its own temp dir (short: Ray's socket paths are limited)."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        env={**os.environ, **LOOPBACK_ONLY}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, 60)
        time.sleep(2)  # the raylet registers right after the GCS listens
        yield {"address": f"127.0.0.1:{port}", "logs": temp / "session_latest" / "logs"}
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)  # `ray start --block` can outlive SIGTERM by minutes; its group is killed then
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_run_joins_an_existing_cluster(ray_head, faces, tmp_path) -> None:
    names = labelled_tree(tmp_path, faces, ["matt_damon"])
    out = tmp_path / "run"
    args = cpu_run_args(names, out, tmp_path / "photos", "--address", ray_head["address"])
    result = run_cli("run", *args, env=LOOPBACK_ONLY)
    assert result.returncode == 0, result.stderr
    kept = [row for row in stage_rows(out, "filter") if row["status"] == "ok"]
    assert len(kept) == 5
    worker_logs = [path.name for path in ray_head["logs"].glob("worker-*")]
    assert worker_logs, "the tasks ran on the cluster's own workers"


def test_unreachable_cluster_is_a_user_error(tmp_path) -> None:
    (tmp_path / "names.txt").write_text("someone\n")
    (tmp_path / "photos").mkdir()
    result = run_cli(
        "run", "--config", "cpu", "--names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "run"),
        "--set", "crawl.source=local", "--set", f"crawl.local_root={tmp_path / 'photos'}",
        "--address", f"127.0.0.1:{free_port()}", env=LOOPBACK_ONLY, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot join the Ray cluster")
