"""The benchmark suite: every figure a ratio measured in this run, against its target.

    python benchmarks/run.py [--quick]

Writes benchmarks/results/latest.json and prints a table. Absolute times are context only: the
machines are shared and noisy. --quick keeps the required sizes small (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a private Ray on loopback
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

import pipeline.engine.driver
from benchmarks.common import REPO, Figure
from benchmarks.cost import cost_model, markdown
from benchmarks.download import bench_download
from benchmarks.overhead import bench_stages
from benchmarks.wholerun import bench_memory, bench_resume

RESULTS = REPO / "benchmarks" / "results" / "latest.json"
# size knobs: (download images, photo-set repeats for overhead, identities for resume, identities N for memory, memory stages)
SIZES = {
    "quick": {"download": 2000, "repeat": 1, "resume": 1, "memory": 2, "memory_stages": ("crawl", "filter")},
    "default": {"download": 4000, "repeat": 3, "resume": 6, "memory": 4, "memory_stages": ("all",)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about 3 minutes")
    args = parser.parse_args()
    mode = "quick" if args.quick else "default"
    size = SIZES[mode]
    pipeline.engine.driver.console.quiet = True  # no progress bars between the figures
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        download = bench_download(root / "download", size["download"])
        figures, timings = bench_stages(root / "stages", size["repeat"])
        ray.shutdown()  # the CLI runs below start their own Ray; two would share the 2 cores
        figures = [download, *figures,
                   bench_resume(root / "resume", size["resume"]),
                   bench_memory(root / "memory", size["memory"], size["memory_stages"])]
    rate = download.context["ours"]["images_per_s"]
    cost = cost_model(timings, rate, os.cpu_count() or 1)
    report = {
        "mode": mode,
        "sizes": {key: list(value) if isinstance(value, tuple) else value for key, value in size.items()},
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "note": "cores shared with other work while measured; GPU stages not measured"},
        "figures": [figure.as_dict() for figure in figures],
        "cost_model": cost,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(table(figures))
    print(f"\ncost model, {cost['images']:,} images (bound by {cost['bounding_stage']}):\n{markdown(cost)}")
    print(f"\n{RESULTS.relative_to(REPO)} written in {report['seconds']} s ({mode})")


def table(figures: list[Figure]) -> str:
    rows = [f"{'figure':<48} {'value':>7} {'target':>9}  result"]
    for figure in figures:
        value = "n/a" if figure.value is None else f"{figure.value:.3f}"
        target = f"{figure.op} {figure.target}" if figure.target is not None else "-"
        verdict = verdict_of(figure)
        rows.append(f"{figure.name:<48} {value:>7} {target:>9}  {verdict}")
    return "\n".join(rows)


def verdict_of(figure: Figure) -> str:
    if figure.value is None:
        return "not measured: see JSON"
    if figure.passed is None:
        return "report only"
    return "pass" if figure.passed else f"MISS by {figure.miss_by:.0%}"


if __name__ == "__main__":
    main()
