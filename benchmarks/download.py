"""Download: the crawl stage (source=urls) vs img2dataset on the same URL list from 127.0.0.1.

Both download the same N small JPEGs from one loopback server with the same parallelism: our crawl
as `workers` actors with `threads` downloads in flight each (per-host limit raised to match, since
every URL is on one host), img2dataset as `workers` processes with `threads` threads each, images
kept as they are (no resizing: our crawl stores raw bytes). Rates are images per second of the
download phase, the same span for both: first task's start to last task's end (ours, from the
task results; worker start-up excluded) and first shard's start to last shard's end (img2dataset's
own stats; process spawn excluded). Both wall times, start-up included, are in the context. The
server runs in a process of its own, so neither side's driver competes with it for a core's GIL.
The two sides take turns, `rounds` times, each into a fresh folder; the figure compares medians.
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import REPO, Figure
from pipeline.core.config import load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.engine.driver import connect, execute
from pipeline.engine.runner import plan_stage
from stages.crawl import CrawlStage

I2D_VENV = Path("/tmp/i2d-venv")
PER_NAME = 50  # images per identity (one crawl task)


def write_jpegs(folder: Path, count: int, side: int = 128) -> list[str]:
    """Distinct small JPEGs (random noise over a gradient: no two share bytes)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = np.linspace(0, 200, side, dtype=np.float32)[None, :, None]
    names = []
    for i in range(count):
        pixels = np.clip(base + rng.normal(0, 25, (side, side, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        names.append(f"{i:05d}.jpg")
        (folder / names[-1]).write_bytes(buffer.getvalue())
    return names


def ours(out: Path, urls_file: Path, names: list[str], workers: int, threads: int) -> dict:
    overrides = ["crawl.source=urls", f"crawl.urls_file={urls_file}", "crawl.allow_private_addresses=true",
                 f"crawl.max_per_name={PER_NAME}", f"crawl.resources.concurrency={workers}",
                 f"crawl.download.max_concurrency={threads}", f"crawl.download.per_host_concurrency={threads}"]
    config = load_config(resolve_profile("cpu"), overrides)
    run = RunDir(str(out))
    people = [Identity(name, name) for name in names]
    connect(None)
    started = time.perf_counter()
    counts = execute(CrawlStage, None, config, run, plan_stage(CrawlStage, None, config, run, people))
    return {"ok": counts.statuses.get("ok", 0), "seconds": counts.work_seconds, "wall_seconds": time.perf_counter() - started}


def img2dataset(root: Path, out: Path, urls: list[str], workers: int, threads: int) -> dict:
    """img2dataset in its own venv, as a separate process; its shard stats give the download span."""
    binary = I2D_VENV / "bin" / "img2dataset"
    if not binary.exists():
        return {"error": f"{binary} missing: python -m venv {I2D_VENV} && {I2D_VENV}/bin/pip install img2dataset"}
    url_list = root / "i2d_urls.txt"
    shard = -(-len(urls) // workers)  # one shard per process: its per-shard set-up costs least
    url_list.write_text("\n".join(urls) + "\n")
    command = [str(binary), f"--url_list={url_list}", f"--output_folder={out}", "--output_format=files",
               "--resize_mode=no", "--disable_all_reencoding=True", f"--processes_count={workers}",
               f"--thread_count={threads}", f"--number_sample_per_shard={shard}", "--timeout=10"]
    started = time.perf_counter()
    env = {"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"}  # its venv only, no update check
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - started
    stats = [json.loads(path.read_text()) for path in out.glob("*_stats.json")]
    if done.returncode or not stats:
        return {"error": f"exit {done.returncode}: {done.stderr[-1500:]}"}
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    return {"ok": sum(s["successes"] for s in stats), "seconds": span, "wall_seconds": wall}


@contextmanager
def serving_apart(folder: Path) -> Iterator[str]:
    """The tests' HTTP server on 127.0.0.1 in its own process; yields its origin."""
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.fixtures.http_server", str(folder)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        yield server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait()


def bench_download(root: Path, count: int, rounds: int = 3, workers: int = 2, threads: int = 16) -> Figure:
    names = [f"host_{i:03d}" for i in range((count + PER_NAME - 1) // PER_NAME)]
    files = write_jpegs(root / "jpegs", count)
    peers, mine = [], []
    with serving_apart(root / "jpegs") as origin:
        urls = [f"{origin}/img/{name}" for name in files]
        urls_file = root / "urls.tsv"
        urls_file.write_text("".join(f"{names[i // PER_NAME]}\t{url}\n" for i, url in enumerate(urls)))
        for turn in range(rounds):
            peers.append(img2dataset(root, root / f"i2d_{turn}", urls, workers, threads))
            mine.append(ours(root / f"ours_{turn}", urls_file, names, workers, threads))
    context = {"images": count, "workers": workers, "threads_per_worker": threads, "rounds": rounds,
               "ours": summary(mine), "img2dataset": summary(peers)}
    if "error" in context["img2dataset"]:
        return Figure("download: ours / img2dataset images/s", None, 1.0, ">=", context=context)
    ratio = context["ours"]["images_per_s"] / context["img2dataset"]["images_per_s"]
    return Figure("download: ours / img2dataset images/s", ratio, 1.0, ">=", context=context)


def summary(turns: list[dict]) -> dict:
    """Median rate over the rounds, each round's figures beside it (or the first error)."""
    if errors := [turn for turn in turns if "error" in turn]:
        return errors[0]
    rates = [turn["ok"] / turn["seconds"] for turn in turns]
    return {"images_per_s": round(statistics.median(rates), 1), "ok": [turn["ok"] for turn in turns],
            "seconds": [round(turn["seconds"], 2) for turn in turns],
            "wall_seconds": [round(turn["wall_seconds"], 2) for turn in turns]}
