"""What an export format is to the planner: its outputs per source shard, a writer, and a finisher."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.core.rundir import RunDir

# A sample as the planner keeps it in a shard's marker: enough for an index, no image bytes.
Sample = dict[str, str]


@dataclass(frozen=True)
class Format:
    name: str
    layout: int  # bump when what a shard's outputs hold changes: every shard is then exported again
    outputs: Callable[[str], list[str]]  # a source shard's stem -> its outputs (a trailing "/" is a folder)
    write_shard: Callable[[RunDir, RunDir, str], list[Sample]]  # (run, dest, shard file name) -> its samples
    finish: Callable[[RunDir, list[dict]], None]  # (dest, every current marker in shard order): files over all shards
    settings: str = ""  # what else a shard's outputs depend on (a release's options); part of the fingerprint

    @property
    def fingerprint(self) -> str:
        """The export settings a shard's outputs depend on (the source shard's digest is kept beside it)."""
        extra = {"settings": self.settings} if self.settings else {}  # none: an export's fingerprint as before
        text = json.dumps({"format": self.name, "layout": self.layout, **extra})
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def stem(shard: str) -> str:
    """`train-00000-of-00003.parquet` -> `train-00000-of-00003`: a source shard's outputs share its name."""
    return shard.removesuffix(".parquet")
