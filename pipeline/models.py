"""The model files a profile needs, from the backends it picks, and `models list|fetch|verify` over them.

A run calls `ensure_models` before its stage preflights: what the chosen stages need and the cache
lacks is fetched first, unless offline (`--offline`, `models.offline`, or HF_HUB_OFFLINE=1), where
a missing file is one error line naming `models fetch`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.fetch import Fetcher
from pipeline.core.models import ModelFile, manifest
from pipeline.engine.progress import console
from stages.backends import Backend
from stages.base import Stage
from stages.captioners import CAPTIONERS, ESTIMATORS, pick_estimator
from stages.classifiers import CLASSIFIERS
from stages.faces import FACES
from stages.faces.insightface_backend import DEFAULT_ROOT
from stages.segmenters import SEGMENTERS

FAMILIES = (FACES, SEGMENTERS, CAPTIONERS, CLASSIFIERS)  # estimators too, through pick_estimator (`auto` is no backend name)
TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of HF_HUB_OFFLINE

out = Console()  # `list`'s tables, on stdout; the rest on the run's console (stderr)
if not out.is_terminal:
    out.width = 160  # logs and CI: one row per file


def _backends(config: PipelineConfig) -> list[tuple[str, type[Backend]]]:
    """(config section, backend) of every model-loading backend the config picks."""
    chosen = [(registry.key.partition(".")[0], registry.selected(config)) for registry in FAMILIES]
    if (estimator := pick_estimator(config)) is not None:
        chosen.append(("caption", ESTIMATORS.get(estimator)))
    return chosen


def needed_models(config: PipelineConfig, sections: Iterable[str] | None = None) -> list[ModelFile]:
    """The manifest entries the config's backends load (those of backends picked in `sections`, if given)."""
    wanted = None if sections is None else set(sections)
    entries = manifest()
    needed: dict[str, ModelFile] = {}
    for section, backend in _backends(config):
        if wanted is not None and section not in wanted:
            continue
        for name in backend.model_names(config):
            if name not in entries:
                raise ValueError(f"backend {backend.name} loads {name!r}, which manifests/models.yaml lacks")
            needed[name] = entries[name]
    return list(needed.values())


def is_offline(config: PipelineConfig) -> bool:
    return config.models.offline or os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE


def fetch_command(profile_arg: str | None, accept: bool = False) -> str:
    return " ".join(["python -m pipeline models fetch", *(["--config", profile_arg] if profile_arg else []),
                     *(["--accept-licenses"] if accept else [])])


def fetcher(config: PipelineConfig) -> Fetcher:
    """A Fetcher for the config; its downloads show as progress bars on stderr."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console)
    models = config.models
    return Fetcher(models.cache_dir, models.index_url, models.mirror, roots(config), progress)


def roots(config: PipelineConfig) -> dict[str, str]:
    """What the manifest's `unpack.into` placeholders stand for under this config."""
    return {"insightface_root": str(config.face.model_root or DEFAULT_ROOT)}


def where(entry: ModelFile, config: PipelineConfig) -> str:
    if entry.hub is not None:
        return f"{entry.file} (Hugging Face cache)"
    if entry.unpack is not None:
        return f"{entry.file} → {entry.destination(roots(config))}"
    return entry.file


def table(title: str, entries: list[ModelFile], config: PipelineConfig, states: list[str]) -> Table:
    grid = Table(title=title)
    for column in ("name", "backend", "file", "size", "licence", "source", "state"):
        grid.add_column(column, overflow="fold")
    for entry, state in zip(entries, states, strict=True):
        size = decimal(entry.size) if entry.size is not None else "?"
        source = entry.describe_source()
        grid.add_row(entry.name, entry.backend, where(entry, config), size, entry.license, source, state)
    return grid


def confirm_licenses(entries: list[ModelFile], accepted: bool, profile_arg: str | None) -> None:
    """Entries whose licence must be accepted need --accept-licenses, or a yes at an interactive prompt."""
    pending = [entry for entry in entries if entry.accept]
    if not pending or accepted:
        return
    listed = "; ".join(f"{entry.name}: {entry.license}" for entry in pending)
    if sys.stdin.isatty() and console.input(f"Accept these licences? {listed} [y/N] ").strip().lower() in ("y", "yes"):
        return
    raise UserError(f"model files under licences to accept first: {listed}",
                    f"read them, then run `{fetch_command(profile_arg, accept=True)}`")


def fetch_missing(config: PipelineConfig, entries: list[ModelFile], accepted: bool, profile_arg: str | None) -> int:
    """Fetch the entries the cache lacks; how many were fetched. Offline, a missing one is a UserError."""
    fetch = fetcher(config)
    missing = [entry for entry in entries if not fetch.present(entry)]
    if not missing:
        return 0
    if is_offline(config):
        listed = ", ".join(f"{entry.name} ({where(entry, config)})" for entry in missing)
        raise UserError(f"model files missing from {config.models.cache_dir} and offline, so not downloaded: {listed}",
                        f"run `{fetch_command(profile_arg)}` where the internet or a --mirror is reachable")
    console.print(table("to download", missing, config, ["missing"] * len(missing)))
    confirm_licenses(missing, accepted, profile_arg)
    fetch.fetch(missing)
    return len(missing)


def ensure_models(config: PipelineConfig, stages: Iterable[type[Stage]], profile_arg: str | None,
                  accepted: bool = False) -> None:
    """A run's first step: the model files of the chosen stages' backends, fetched when missing."""
    sections = {section for stage in stages for section in stage.sections}
    fetched = fetch_missing(config, needed_models(config, sections), accepted, profile_arg)
    if fetched:
        console.print(f"fetched {fetched} model files into place")


def models_command(action: str, config: PipelineConfig, accepted: bool, profile_arg: str | None) -> int:
    """`models list|fetch|verify`: 0, or 1 when `verify` finds a bad file (bad files are never deleted)."""
    entries = needed_models(config)
    if action == "fetch":
        fetched = fetch_missing(config, entries, accepted, profile_arg)
        console.print(f"{fetched} fetched, {len(entries) - fetched} already present")
        return 0
    fetch = fetcher(config)
    if action == "list":
        states = ["present" if fetch.present(entry) else "missing" for entry in entries]
        out.print(table(f"model files for this profile (cache {config.models.cache_dir})", entries, config, states))
        return 0
    checks = [fetch.check(entry) for entry in entries]
    out.print(table("verify", entries, config, [state for state, _ in checks]))
    return 1 if any(bad for _, bad in checks) else 0
