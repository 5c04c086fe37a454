"""Typed configuration: defaults live in these models, YAML profiles and `--set` only override.

Unknown keys are errors naming their full path; the resolved config is saved with the run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(Section):
    """How a stage is scheduled. Never part of a stage's fingerprint: it changes speed, not rows."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(None, ge=1, description="actors; None = what the cluster's CPUs allow")
    batch_size: int = Field(16, ge=1, description="images per model call inside a task")


class RunSection(Section):
    names: Path = Path("manifests/names/example.txt")
    out: str | None = Field(None, description="run directory; default runs/<config name>")
    address: str | None = Field(None, description="Ray cluster to join; default a local instance")


class CrawlSection(Section):
    source: Literal["bing", "baidu", "google", "flickr", "urls", "local"] = "bing"
    urls_file: Path | None = None
    local_root: Path | None = None
    max_per_name: int = Field(100, ge=1)
    allow_private_addresses: bool = False
    resources: Resources = Resources()


class FilterSection(Section):
    min_short_side: int = Field(512, ge=1, description="the paper's value")
    max_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb limit (Pillow's default)")
    max_aspect_ratio: float = Field(3.0, ge=1.0, description="long side / short side")
    resources: Resources = Resources()


class PipelineConfig(Section):
    run: RunSection = RunSection()
    crawl: CrawlSection = CrawlSection()
    filter: FilterSection = FilterSection()

    def fingerprint(self, sections: tuple[str, ...], version: int) -> str:
        """Hash of the config sections a stage reads (scheduling resources excluded)."""
        payload = {name: getattr(self, name).model_dump(mode="json", exclude={"resources"}) for name in sections}
        text = json.dumps({"sections": payload, "version": version}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def resolve_profile(config: str | None) -> Path:
    """A profile is a path, or a bare name looked up in configs/ (`cpu` -> configs/cpu.yaml)."""
    if config is None:
        return CONFIG_DIR / "default.yaml"
    path = Path(config)
    if path.exists():
        return path
    named = CONFIG_DIR / f"{config}.yaml"
    if named.exists():
        return named
    profiles = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise UserError(f"config file not found: {config}", f"pass a YAML path or one of: {profiles}")


def load_config(path: Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML profile, apply `section.key=value` overrides, validate."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config {path} is not valid YAML: {exc}".replace("\n", " "), "fix the file") from exc
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of sections", "see configs/default.yaml")
    for override in overrides or []:
        _apply_override(data, override)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise _user_error(exc, path) from exc


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise UserError(f"bad --set {override!r}", "write --set section.key=value, e.g. --set filter.min_short_side=256")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"bad --set {override!r}: {part} is not a section", "set a leaf key")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _user_error(exc: ValidationError, path: Path) -> UserError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        parent = _model_at(first["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return UserError(f"unknown config key '{where}' (in {path} or --set)", f"valid keys here: {valid}")
    return UserError(f"bad value for '{where}': {first['msg']} (got {first.get('input')!r})", f"fix it in {path} or --set")


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
