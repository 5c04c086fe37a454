"""ID-centric dataset pipeline: the engine (CLI, configs, runner on Ray, run directory, schemas)."""

__version__ = "0.1.0"
