"""What tests/test_two_hosts.py runs inside its head namespace: the S3 server and the Ray head
listen on that namespace's address only, which the test's own process cannot reach.

    python -m tests.in_namespace create-bucket BUCKET_URI
    python -m tests.in_namespace wait-nodes ADDRESS COUNT
    python -m tests.in_namespace wait-marker URI STAGE NODE   (then prints the stage's finished tasks)
    python -m tests.in_namespace download URI FOLDER

Each waits until it succeeds; the test bounds it with a timeout.
"""

from __future__ import annotations

import logging
import sys
import time

import pyarrow.fs as pafs

from pipeline.core.rundir import RunDir


def create_bucket(uri: str) -> None:
    """Create the bucket `s3://BUCKET?...&allow_bucket_creation=true`, retrying while the freshly
    started server does not answer yet."""
    filesystem, bucket = pafs.FileSystem.from_uri(uri)
    while True:
        try:
            filesystem.create_dir(bucket)
            return
        except OSError:
            time.sleep(0.2)


def wait_nodes(address: str, count: int) -> None:
    """Until the cluster has `count` live nodes: a run sizes its actor pools by the cluster at its start."""
    import ray

    ray.init(address=address, logging_level=logging.ERROR, include_dashboard=False)
    while sum(node["Alive"] for node in ray.nodes()) < count:
        time.sleep(0.5)
    ray.shutdown()


def wait_marker(uri: str, stage: str, node: str) -> None:
    """Until `stage` has a task done on `node`; prints how many of its tasks were done then. Reads the
    marker files the workers write, not the index: the driver rewrites that only now and then."""
    run, folder = RunDir(uri), f"stages/{stage}/_done"
    while True:
        markers = [run.read_json(f"{folder}/{name}") for name in run.list_files(folder, ".json")]
        if any(marker["node"] == node for marker in markers):
            print(len(markers), flush=True)
            return
        time.sleep(0.1)


def download(uri: str, folder: str) -> None:
    filesystem, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(path, folder, source_filesystem=filesystem)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "create-bucket":
        create_bucket(args[0])
    elif command == "wait-nodes":
        wait_nodes(args[0], int(args[1]))
    elif command == "wait-marker":
        wait_marker(*args)
    elif command == "download":
        download(*args)
    else:
        sys.exit(f"unknown command {command}")
