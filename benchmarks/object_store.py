"""The engine on an object store: S3 requests per command, and a resume at 100k identities behind latency.

An S3 server (moto) on loopback, wrapped in a WSGI layer that counts every request and can hold each
one for a fixed delay (a stand-in for a real store's round trip). Measured:

- a whole CLI run of a few identities (cpu profile, local photos): requests per identity, then its
  resume and `status`;
- a finished run's resume (every stage planned, the shard step's currency checked) and `status` at N
  and 3N identities of synthetic markers: how the request count grows with the run;
- a resume at 100k synthetic identities with `delay` seconds per request, against the same on local disk.

`python -m benchmarks.object_store [--quick]` writes benchmarks/results/object_store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from benchmarks.common import REPO, identity_tree, write_names
from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.markers import Marker, read_markers, record_markers, write_marker_file
from pipeline.engine.registry import STAGES
from pipeline.engine.runner import name_digest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
RESULTS = REPO / "benchmarks" / "results" / "object_store.json"
BUCKET = "run-bucket"


@dataclass
class RequestLog:
    """WSGI middleware: records each request (method, path, query) and holds it `delay` seconds."""

    app: Any
    delay: float = 0.0
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        with self.lock:
            self.requests.append((environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "").split("=")[0]))
        if self.delay:
            time.sleep(self.delay)
        return self.app(environ, start_response)

    def count(self) -> int:
        return len(self.requests)

    def kinds_since(self, start: int) -> dict[str, int]:
        return dict(Counter(f"{method} {query}".strip() for method, query in self.requests[start:]))


@contextmanager
def s3_server() -> Iterator[tuple[str, RequestLog]]:
    """A bucket on a threaded moto server on 127.0.0.1; yields the URI query string and the request log."""
    os.environ.update(CREDENTIALS)
    log = RequestLog(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, log, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    options = f"endpoint_override=127.0.0.1:{server.server_port}&scheme=http&region=us-east-1"
    try:
        import pyarrow.fs as pafs

        pafs.FileSystem.from_uri(f"s3://{BUCKET}?{options}&allow_bucket_creation=true")[0].create_dir(BUCKET)
        yield options, log
    finally:
        server.shutdown()
        thread.join()


def cpu_config(overrides: tuple[str, ...] = ()) -> PipelineConfig:
    return load_config(resolve_profile("cpu"), list(overrides))


def synthetic_run(run: RunDir, config: PipelineConfig, count: int, files: bool = True) -> list[Identity]:
    """A finished run of `count` identities as its markers say (no parts): every stage done, current.
    `files`: each task's marker file, then the index built from them; else the marker indexes alone."""
    from concurrent.futures import ThreadPoolExecutor

    identities = [Identity(f"person_{i:06d}", f"Person {i}") for i in range(count)]
    run.write_json("run.json", {"profile": "cpu", "stage_hashes": {s.name: s.fingerprint(config) for s in STAGES},
                                "identities": [[i.slug, i.name] for i in identities]})
    with ThreadPoolExecutor(16) as pool:
        for stage_markers in synthetic_markers(config, identities):
            if files:
                list(pool.map(lambda m: write_marker_file(run, m), stage_markers))
                read_markers(run, stage_markers[0].stage)  # a finished run has every stage's marker index
            else:
                record_markers(run, stage_markers[0].stage, stage_markers)
    mark_whole_run_steps_current(run, config, identities)
    return identities


def synthetic_markers(config: PipelineConfig, identities: list[Identity]) -> Iterator[list[Marker]]:
    """Per stage, one marker per identity, each consuming its upstream marker's output."""
    digests = {i.slug: name_digest(i.name) for i in identities}
    for stage in STAGES:
        markers = [Marker(stage.name, slug, stage.fingerprint(config), digest, f"{stage.name}-{slug}", 3, 3,
                          {"ok": 2, "dropped": 1}, {"blurry": 1}) for slug, digest in digests.items()]
        digests = {m.task: m.output_digest for m in markers}
        yield markers


def mark_whole_run_steps_current(run: RunDir, config: PipelineConfig, identities: list[Identity]) -> None:
    """The verify and hygiene steps' and the shard step's done files, as a finished run leaves them."""
    from pipeline.core.markers import read_markers
    from pipeline.dataset import shards
    from stages import hygiene, hygiene_run, verify, verify_run
    from stages.cross_identity import DECISION_SCHEMA
    from stages.identity_choice import CHOICE_SCHEMA

    steps = [(verify.VerifyStage, verify.FILES, verify_run, CHOICE_SCHEMA),
             (hygiene.HygieneStage, hygiene.FILES, hygiene_run, DECISION_SCHEMA)]
    for stage, files, step, schema in steps:
        inputs = read_markers(run, STAGES[STAGES.index(stage) - 1].name)
        run.write_table(files.decisions, schema.empty_table())
        run.write_json(files.done, {"fingerprint": step.run_fingerprint(config, inputs)})
    plan = shards.plan_shards(config, identities, read_markers(run, STAGES[-1].name))
    run.write_json(shards.DONE, {"fingerprint": plan.fingerprint, "shards": len(plan.shards), "rows": 0})


def resume(run: RunDir, config: PipelineConfig, identities: list[Identity]) -> None:
    """What `run` does on a finished run, less the model check: plan every stage, check the shards are current."""
    from pipeline.engine.driver import run_stages
    from pipeline.core.markers import read_markers
    from pipeline.dataset.shards import is_current, plan_shards

    summaries = run_stages(STAGES, config, run, identities, force=False, retry_failed=False)
    assert all(not s.tasks_total for s in summaries), "a synthetic finished run should have nothing to do"
    assert is_current(run, plan_shards(config, identities, read_markers(run, STAGES[-1].name)))


def status(uri: str) -> None:
    from pipeline.__main__ import main

    with redirect_stderr(StringIO()):
        assert main(["status", "--config", "cpu", "--out", uri]) == 0


def measured(log: RequestLog, action: Any) -> dict[str, Any]:
    start, started = log.count(), time.perf_counter()
    action()
    return {"requests": log.count() - start, "seconds": round(time.perf_counter() - started, 3),
            "kinds": log.kinds_since(start)}


def scaling(options: str, log: RequestLog, n: int) -> dict[str, Any]:
    """Requests of a resume and of `status` on finished synthetic runs of N and 3N identities."""
    config, figures = cpu_config(), {}
    for count in (n, 3 * n):
        uri = f"s3://{BUCKET}/synthetic_{count}?{options}"
        identities = synthetic_run(RunDir(uri), config, count)
        figures[count] = {"resume": measured(log, lambda uri=uri, ids=identities: resume(RunDir(uri), config, ids)),
                          "status": measured(log, lambda uri=uri: status(uri))}
    small, large = figures[n], figures[3 * n]
    return {"identities": [n, 3 * n], **{f"{k}_{c}": v for c, f in figures.items() for k, v in f.items()},
            "resume_growth_3n_over_n": round(large["resume"]["requests"] / small["resume"]["requests"], 2),
            "status_growth_3n_over_n": round(large["status"]["requests"] / small["status"]["requests"], 2)}


def whole_run(options: str, log: RequestLog, root: Path, count: int) -> dict[str, Any]:
    """A real CLI run of `count` identities to the store, its resume and `status`: requests per identity."""
    photos = root / "photos"
    names = write_names(root / "names.txt", identity_tree(photos, 1, count))
    uri = f"s3://{BUCKET}/whole?{options}"
    args = ["--config", "cpu", "--names", str(names), "--out", uri, "--set", "crawl.source=local",
            "--set", f"crawl.local_root={photos}", "--set", "filter.min_face_size=80"]
    figures = {}
    for label, command in (("first", ["run", *args]), ("resume", ["run", *args]),
                           ("status", ["status", "--config", "cpu", "--out", uri])):
        figures[label] = measured(log, lambda command=command: cli(command))
    per_identity = {f"{label}_per_identity": round(f["requests"] / count, 1) for label, f in figures.items()}
    return {"identities": count, **per_identity, **figures}


def large_resume(options: str, log: RequestLog, root: Path, count: int, delay: float) -> dict[str, Any]:
    """A finished run's resume at `count` identities: on the store with `delay` added to every request, and on
    local disk. On the store the run holds each stage's marker index only: a resume reads no marker file
    that its index holds (the request count shows it), and 1M small objects would take moto an hour to
    write. On local disk, where a resume also lists the marker files, they are all there."""
    config = cpu_config()
    uri = f"s3://{BUCKET}/large?{options}"
    identities = synthetic_run(RunDir(uri), config, count, files=False)
    log.delay = delay
    try:
        store = measured(log, lambda: resume(RunDir(uri), config, identities))
    finally:
        log.delay = 0.0
    local = root / "large"
    synthetic_run(RunDir(str(local)), config, count)
    started = time.perf_counter()
    resume(RunDir(str(local)), config, identities)
    disk = round(time.perf_counter() - started, 3)
    return {"identities": count, "delay_seconds": delay, "store": store, "local_disk_seconds": disk,
            "store_over_disk": round(store["seconds"] / disk, 2)}


def cli(args: list[str]) -> None:
    env = {**os.environ, **CREDENTIALS, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    if done.returncode:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="identities of the N in N vs 3N")
    parser.add_argument("--whole", type=int, default=2, help="identities of the whole CLI run (0: skip it)")
    parser.add_argument("--large", type=int, default=0, help="identities of the latency resume (0: skip it)")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added to every S3 request")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with s3_server() as (options, log), tempfile.TemporaryDirectory() as tmp:
        results["scaling"] = scaling(options, log, args.n)
        if args.whole:
            results["whole_run"] = whole_run(options, log, Path(tmp), args.whole)
        if args.large:
            results["large_resume"] = large_resume(options, log, Path(tmp), args.large, args.delay)
    print(json.dumps(results, indent=1))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
