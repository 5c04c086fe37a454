"""One registry per backend family (faces, segmenters, captioners, estimators, sources).

A backend is one class in one file of its family's package. It registers itself with
`@REGISTRY.register`, declares its name, the config fields it reads, the model files it needs
(`model_names`, entries of manifests/models.yaml) and how it loads once per worker (`load`). The
registry imports every module of the package on first use, so adding a backend touches that one file:
config validation, the preflight and `models list|fetch` all read the registry.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pipeline.core.errors import ModelNotFound, UserError
from pipeline.core.models import locate

if TYPE_CHECKING:
    from pipeline.core.config import PipelineConfig


class Backend:
    """What every backend declares. Heavy imports happen in `load`, so registering stays cheap."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()  # keys of its family's config section that it reads

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        """The manifest entries `load` reads under this config."""
        return []

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        """Raise ModelNotFound (what, where, how to get it) unless `load` can find everything; loads nothing."""
        for name in cls.model_names(config):
            locate(name, config.models.cache_dir)

    @classmethod
    def load(cls, config: PipelineConfig) -> Backend:
        """The backend ready to run: called once per worker, in the stage's `setup`."""
        raise NotImplementedError


B = TypeVar("B", bound=type[Backend])


class Registry(Generic[B]):
    """The backends of one family, by name; `key` is the config field that picks one ("face.backend")."""

    def __init__(self, key: str, package: str) -> None:
        self.key = key
        self.package = package
        self._backends: dict[str, B] = {}
        self._discovered = False

    def register(self, cls: B, name: str | None = None) -> B:
        """Register `cls` under its `name` (or `name`: one class may serve several, e.g. search engines)."""
        name = name or cls.name
        if name in self._backends and self._backends[name] is not cls:
            raise ValueError(f"two {self.key} backends named {name!r}")
        self._backends[name] = cls
        return cls

    def _discover(self) -> None:
        if not self._discovered:
            self._discovered = True
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._backends)

    def get(self, name: str) -> B:
        self._discover()
        if name not in self._backends:
            raise UserError(f"unknown {self.key} {name!r}", f"choose one of: {', '.join(self.names())}")
        return self._backends[name]

    def selected(self, config: PipelineConfig) -> B:
        section, field = self.key.split(".")
        return self.get(getattr(getattr(config, section), field))

    def preflight(self, config: PipelineConfig) -> None:
        """The driver's check before any task: one user error line when the chosen backend cannot load."""
        backend = self.selected(config)
        try:
            backend.check(config)
        except ModelNotFound as missing:
            section, field = self.key.split(".")
            raise missing.user_error(f"{self.key}={getattr(getattr(config, section), field)}") from missing


def cpu_threads() -> int:
    """Threads a model library may use in this process: the CPUs Ray gave the actor, which Ray says in
    OMP_NUM_THREADS (as may a user); 0, the library's own default (a thread per core), where unset."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else 0


def onnx_options(**settings: Any):  # -> onnxruntime.SessionOptions
    """onnxruntime session options held to this worker's CPUs: by default every session starts a thread
    per core, and two actors on two cores then run slower than one."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    for name, value in settings.items():
        setattr(options, name, value)
    return options
