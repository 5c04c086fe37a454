"""Two Ray hosts on one machine, and one of them lost in the middle of a model stage.

The hosts are two network namespaces joined by a veth pair: the head (Ray's head node, the S3
server holding the run directory, the driver) and a worker node. The worker node is SIGKILLed,
raylet and workers, once the filter stage has finished a task on it; the run must end, by itself
or resumed by the same command, with the same rows and shards as a single-host run. Needs root
(CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2's `ip`: where namespaces cannot be made the test fails,
since a skip would hide that it never ran.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.core.rundir import RunDir
from pipeline.core.markers import read_markers
from pipeline.engine.registry import STAGE_NAMES
from tests.conftest import REPO
from tests.test_object_store import CREDENTIALS
from tests.test_resume import (  # noqa: F401  (reference and tree: session fixtures, built once)
    IDENTITIES,
    args,
    image_ids,
    reference,
    shard_rows,
    tree,
)

# RFC 2544's benchmarking range, on the veth pair only: it exists inside the test's namespaces alone.
HEAD_IP, WORKER_IP = "198.18.0.1", "198.18.0.2"
RAY_PORT, S3_PORT = 6379, 9000  # fixed: each namespace has ports of its own
S3_OPTIONS = f"endpoint_override={HEAD_IP}:{S3_PORT}&scheme=http&region=us-east-1"
RAY = str(Path(sys.executable).with_name("ray"))
KILLED_IN = "filter"  # the first model stage; its tasks take seconds, so the kill lands mid-stage
RUN_SECONDS = 600  # the whole run takes ~90 s on 2 busy cores


def cluster_env() -> dict[str, str]:
    """Every process's environment. `ray start --head` on a real address turns on Ray's token
    authentication when ~/.ray/auth_token exists: say so for all, with a token of this cluster's own,
    so whether the user has that file plays no part. Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: the CLI
    sets it to 0 for its private instance, and a 0 left in the environment refuses a second node."""
    inherited = {key: value for key, value in os.environ.items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    return {**inherited, **CREDENTIALS, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@dataclass
class Hosts:
    head: str  # namespace names
    worker: str
    logs: Path
    started: list[subprocess.Popen] = field(default_factory=list)
    address: str = f"{HEAD_IP}:{RAY_PORT}"
    out: str = f"s3://two-hosts/run?{S3_OPTIONS}"
    env: dict[str, str] = field(default_factory=cluster_env)

    def start(self, namespace: str, log: str, *command: str) -> subprocess.Popen:
        """`command` inside `namespace`, its output in `logs/<log>.log`."""
        with open(self.logs / f"{log}.log", "w") as output:
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *command],
                cwd=REPO,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def run(self, timeout: float, *command: str) -> str:
        """`command` inside the head namespace, to its end; returns its output."""
        done = subprocess.run(["ip", "netns", "exec", self.head, *command], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def helper(self, timeout: float, *args: str) -> str:
        return self.run(timeout, sys.executable, "-m", "tests.in_namespace", *args)

    def tail(self, log: str) -> str:
        return (self.logs / f"{log}.log").read_text(errors="replace")[-3000:]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


def make_namespaces(head: str, worker: str) -> None:
    """Two namespaces with loopback up, joined by a veth pair made inside them (never in the host's)."""
    if shutil.which("ip") is None:
        pytest.fail("iproute2's `ip` is not installed: the two hosts are network namespaces made with it")
    try:
        for namespace in (head, worker):
            ip("netns", "add", namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", head, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", worker)
        for namespace, address in ((head, HEAD_IP), (worker, WORKER_IP)):
            ip("-n", namespace, "addr", "add", f"{address}/30", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"cannot make network namespaces (needs CAP_NET_ADMIN, CAP_SYS_ADMIN): {exc.stderr.strip()}")


def namespace_pids(namespace: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return [int(pid) for pid in listed.stdout.split()]


def kill_namespace(namespace: str) -> None:
    """SIGKILL every process in `namespace`, again until none is left (a dying raylet may still spawn)."""
    deadline = time.monotonic() + 30
    while (pids := namespace_pids(namespace)) and time.monotonic() < deadline:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def ray_start(temp: Path, *role: str) -> list[str]:
    """One CPU a node, so each stage's actor pool has one actor on each host; a small object store."""
    return [RAY, "start", "--block", *role, "--num-cpus=1", "--object-store-memory=300000000",
            "--disable-usage-stats", f"--temp-dir={temp}"]  # fmt: skip


def raylet_log(temp: Path) -> str:
    """The end of a node's raylet log, where it says why it could not join."""
    logs = sorted(temp.glob("session_*/logs/raylet.out"))
    return logs[-1].read_text(errors="replace")[-3000:] if logs else f"no raylet log in {temp}"


@pytest.fixture
def hosts(tmp_path) -> Iterator[Hosts]:
    """The head namespace (S3 server, Ray head) and the worker namespace (a Ray node), removed afterwards
    with every process in them, also when the test fails."""
    tag = os.getpid()
    hosts = Hosts(f"idp-head-{tag}", f"idp-worker-{tag}", tmp_path / "logs")
    hosts.logs.mkdir()
    temps = [Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")) for prefix in ("rh", "rw")]  # short: socket paths
    try:
        make_namespaces(hosts.head, hosts.worker)
        hosts.start(hosts.head, "s3", sys.executable, "-m", "moto.server", "-H", HEAD_IP, "-p", str(S3_PORT))
        hosts.helper(60, "create-bucket", f"s3://two-hosts?{S3_OPTIONS}&allow_bucket_creation=true")
        head = ray_start(temps[0], "--head", f"--port={RAY_PORT}", f"--node-ip-address={HEAD_IP}",
                         "--include-dashboard=false")  # fmt: skip
        hosts.start(hosts.head, "ray-head", *head)
        worker = ray_start(temps[1], f"--address={hosts.address}", f"--node-ip-address={WORKER_IP}")
        hosts.start(hosts.worker, "ray-worker", *worker)
        try:
            hosts.helper(300, "wait-nodes", hosts.address, "2")
        except subprocess.TimeoutExpired:
            logs = [hosts.tail("ray-head"), hosts.tail("ray-worker"), *map(raylet_log, temps)]
            pytest.fail("the worker node never joined:\n" + "\n".join(logs))
        yield hosts
    finally:
        for namespace in (hosts.head, hosts.worker):
            kill_namespace(namespace)
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
        for process in hosts.started:  # killed above; this reaps them (and ends one that never got in)
            process.kill()
            process.wait()
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def start_run(hosts: Hosts, folders: dict, log: str) -> subprocess.Popen:
    """The CLI run on the cluster, from the head host (the driver reaches the S3 server there)."""
    return hosts.start(hosts.head, log, sys.executable, "-m", "pipeline", "run", "--stage", "all",
                       *args(folders, hosts.out), "--address", hosts.address)  # fmt: skip


def lose_worker_mid_stage(hosts: Hosts, run: subprocess.Popen) -> int:
    """Once KILLED_IN has finished a task on the worker host, SIGKILL all of that host; returns how
    many of the stage's tasks were finished then."""
    watcher = hosts.start(hosts.head, "watcher", sys.executable, "-m", "tests.in_namespace", "wait-marker",
                          hosts.out, KILLED_IN, WORKER_IP)  # fmt: skip
    deadline = time.monotonic() + 600
    while watcher.poll() is None and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watcher.poll() == 0, f"no {KILLED_IN} task finished on the worker host:\n{hosts.tail('first')}"
    kill_namespace(hosts.worker)
    assert not namespace_pids(hosts.worker), "every process of the worker host is gone"
    return int(hosts.tail("watcher").split()[-1])


def finish(hosts: Hosts, run: subprocess.Popen, log: str) -> int:
    """The run's exit code; a run still going after RUN_SECONDS hangs on the lost host, a failure."""
    try:
        return run.wait(timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run hangs {RUN_SECONDS} s after the worker host was lost:\n{hosts.tail(log)}")


def nodes_of_tasks(out: Path) -> dict[str, set[str]]:
    """Per stage, the hosts its finished tasks ran on, as the done-markers record them (a task without
    input rows runs nowhere)."""
    run = RunDir(str(out))
    return {stage: {marker.node for marker in read_markers(run, stage).values() if marker.part}
            for stage in STAGE_NAMES[:-1]}  # fmt: skip


@pytest.mark.slow
def test_a_run_on_two_hosts_survives_losing_one(hosts, tree, reference, tmp_path) -> None:  # noqa: F811
    first = start_run(hosts, tree, "first")
    done_at_kill = lose_worker_mid_stage(hosts, first)
    assert 0 < done_at_kill < IDENTITIES, "the kill must land mid-stage"
    if finish(hosts, first, "first") != 0:  # a run may stop on a lost host: the same command resumes it
        assert finish(hosts, start_run(hosts, tree, "second"), "second") == 0, hosts.tail("second")

    copy = tmp_path / "copy"  # the test's own process cannot reach the S3 server: a local copy to compare
    hosts.helper(120, "download", hosts.out, str(copy))
    for stage in STAGE_NAMES[:-1]:
        assert image_ids(copy, stage) == image_ids(reference, stage), stage
    assert shard_rows(copy) == shard_rows(reference)
    nodes = nodes_of_tasks(copy)
    assert nodes[KILLED_IN] == {HEAD_IP, WORKER_IP}, "both hosts ran tasks; the lost host's finished ones are kept"
    later = STAGE_NAMES[STAGE_NAMES.index(KILLED_IN) + 1 : -1]
    assert all(nodes[stage] == {HEAD_IP} for stage in later), f"after the loss, the head alone: {nodes}"
