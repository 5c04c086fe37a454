"""The apply button: `python -m pipeline decide --apply --out RUN` in a child process, its output kept as
progress. One at a time; the child takes the run's lock like any writing command."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.core.rundir import RunDir

LINES = 200  # the output lines kept for the page


@dataclass
class ApplyJob:
    run: RunDir
    on_done: Callable[[], None]  # called when the child has ended, before `running` turns false
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LINES))
    returncode: int | None = None
    started: int = 0  # applies started, so a page can tell a finished apply from the previous one
    _process: subprocess.Popen | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def running(self) -> bool:
        return self._process is not None and self.returncode is None

    def start(self) -> bool:
        """Start an apply; False when one is running."""
        with self._lock:
            if self.running:
                return False
            self.lines.clear()
            self.returncode, self.started = None, self.started + 1
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "decide", "--apply", "--out", self.run.uri],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
        threading.Thread(target=self._follow, args=(self._process,), daemon=True).start()
        return True

    def _follow(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:  # progress bars redraw with \r: keep the last state of each line
            self.lines.append(line.rstrip("\n").rsplit("\r", 1)[-1])
        code = process.wait()
        self.lines.append("reading the changed identities' parts again")
        try:
            self.on_done()
        finally:
            self.returncode = code

    def stop(self) -> None:
        """End a running apply (the app is closing); its finished tasks are kept, as after any interruption."""
        if self.running and self._process is not None:
            self._process.terminate()
            self._process.wait()

    def status(self) -> dict:
        return {"running": self.running, "returncode": self.returncode, "started": self.started,
                "lines": list(self.lines)}
