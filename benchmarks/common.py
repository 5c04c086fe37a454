"""Shared pieces of the benchmark suite: figures with targets, photo trees, process-tree memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
FACES = REPO / "tests" / "data" / "faces"


@dataclass
class Figure:
    """One ratio measured in one run; `target` with `op` ('>=' or '<='), or None for report-only."""

    name: str
    value: float | None
    target: float | None = None
    op: str | None = None
    unit: str = "x"
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    @property
    def miss_by(self) -> float | None:
        """How far from the target, as a share of it (0 when met)."""
        if self.passed is None or self.passed:
            return None if self.passed is None else 0.0
        assert self.target is not None and self.value is not None
        return abs(self.value - self.target) / self.target

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "miss_by": self.miss_by}


def labels() -> dict[str, list[str]]:
    return json.loads((FACES / "identities.json").read_text())["identities"]


def identity_tree(root: Path, repeat: int, limit: int | None = None) -> list[str]:
    """`root/<identity>_<round>/` of symlinks to the labelled photos, `repeat` rounds; returns the names.

    Each round is a different identity to the pipeline, so work scales with `repeat` while the
    photos (and so the per-image cost) stay the same.
    """
    people = list(labels().items())[:limit]
    names = []
    for round_ in range(repeat):
        for identity, photos in people:
            folder = root / f"{identity}_{round_}"
            folder.mkdir(parents=True)
            for photo in photos:
                (folder / photo).symlink_to(FACES / "images" / photo)
            names.append(folder.name)
    return names


def write_names(path: Path, names: list[str]) -> Path:
    path.write_text("\n".join(names) + "\n")
    return path


class TreeMemory:
    """Samples the summed RSS of a process and all its descendants (driver, raylet, Ray workers), or
    of the process alone (`children` false)."""

    def __init__(self, pid: int, interval: float = 0.2, children: bool = True) -> None:
        self.root = psutil.Process(pid)
        self.children = children
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def _sample(self) -> int:
        total = 0
        try:
            processes = [self.root, *(self.root.children(recursive=True) if self.children else [])]
        except psutil.NoSuchProcess:
            return 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue  # a worker that just exited
        return total


@dataclass
class CliRun:
    seconds: float
    peak_rss: int
    returncode: int
    stderr_tail: str


def run_cli(args: list[str], timeout: float = 600) -> CliRun:
    """`python -m pipeline ...` as a user runs it, timed, with the process tree's peak RSS."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(process.pid)
    memory.start()
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        memory.stop()
    return CliRun(time.perf_counter() - started, memory.peak, process.returncode, stderr[-2000:])
